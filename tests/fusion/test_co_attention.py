"""CoAttentionFusion: every stream reads the other present streams, never absent ones."""

import functools

import jax
import numpy as np
import pytest

from mmjax.fusion import CoAttentionFusion

B, D = 2, 8
LENGTHS = {"text": 3, "image": 4, "audio": 2}
FUSION = CoAttentionFusion(width=D, depth=1, num_heads=2, mlp_dim=16)


def _in_order(tokens):
    """The streams in LENGTHS order: jax.jit hands dict arguments back with their keys sorted."""
    return {m: tokens[m] for m in LENGTHS}


@jax.jit
def _apply_jit(variables, tokens, masks, present):
    return FUSION.apply(variables, _in_order(tokens), masks, present, deterministic=True)


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, 4)).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    return tokens, masks, present


@functools.cache
def _variables():
    @jax.jit
    def init(key, tokens, masks, present):
        return FUSION.init(key, _in_order(tokens), masks, present, deterministic=True)

    return init(jax.random.key(0), *_inputs())


def _apply(tokens, masks, present):
    return _apply_jit(_variables(), tokens, masks, present)[0]


def _streams(out):
    ends = np.cumsum(list(LENGTHS.values()))
    return dict(zip(LENGTHS, np.split(np.asarray(out["tokens"]), ends[:-1], axis=1), strict=True))


def test_streams_follow_present_modalities_only():
    tokens, masks, present = _inputs()
    present["image"][1] = False
    before = _streams(_apply(tokens, masks, present))
    after = _streams(_apply(dict(tokens, image=tokens["image"] + 1.0), masks, present))
    for m in ("text", "audio"):
        assert not np.allclose(before[m][0], after[m][0])  # image present in row 0
        np.testing.assert_allclose(before[m][1], after[m][1], rtol=1e-6)  # absent in row 1


def test_pooled_is_the_mean_of_present_first_tokens():
    tokens, masks, present = _inputs()
    present["audio"][1] = False
    out = _apply(tokens, masks, present)
    firsts = {m: s[:, 0] for m, s in _streams(out).items()}
    np.testing.assert_allclose(out["pooled"][0], np.mean([f[0] for f in firsts.values()], 0), rtol=1e-5)
    np.testing.assert_allclose(out["pooled"][1], (firsts["text"][1] + firsts["image"][1]) / 2, rtol=1e-5)


def test_needs_two_modalities():
    tokens, masks, present = _inputs()
    with pytest.raises(
        ValueError, match=r"CoAttentionFusion needs at least 2 streams, got streams \['text'\]"
    ):
        FUSION.init(jax.random.key(0), {"text": tokens["text"]}, masks, present, deterministic=True)
