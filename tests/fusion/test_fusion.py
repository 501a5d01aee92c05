"""Fusion modules: shapes, padding invariance, absent modalities are ignored and never give NaN."""

import functools

import jax
import numpy as np
import pytest

from mmjax.fusion import FUSIONS, CrossAttentionFusion, LateFusion

B, D = 3, 16
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}  # encoders may have different widths

FUSION_CASES = {
    "late": LateFusion(width=D),
    "cross_attention": CrossAttentionFusion(width=D, depth=2, num_heads=2, mlp_dim=32),
    "bidirectional": CrossAttentionFusion(width=D, depth=2, num_heads=2, mlp_dim=32, bidirectional=True),
    "post_ln": CrossAttentionFusion(width=D, depth=1, num_heads=2, mlp_dim=32, pre_ln=False),
}


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    masks["text"][0, 3:] = False
    masks["audio"][1, 2:] = False
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    return tokens, masks, present


@functools.cache
def _variables(name):
    return FUSION_CASES[name].init(jax.random.key(0), *_inputs(), deterministic=True)


@functools.cache
def _apply(name):
    return jax.jit(functools.partial(FUSION_CASES[name].apply, deterministic=True))


def _run(name, tokens, masks, present):
    return _apply(name)(_variables(name), tokens, masks, present)


def _assert_same(a, b):
    for key in ("tokens", "mask", "pooled"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_registry():
    assert FUSIONS == {"late": LateFusion, "cross_attention": CrossAttentionFusion}


@pytest.mark.parametrize("name", FUSION_CASES)
def test_shapes_and_aux(name):
    out, aux = _run(name, *_inputs())
    n = sum(LENGTHS.values())
    assert out["tokens"].shape == (B, n, D) and out["mask"].shape == (B, n) and out["pooled"].shape == (B, D)
    assert set(aux) == {"fusion/tokens", "fusion/mask", "fusion/pooled"}
    assert out["mask"].sum() == B * n - 2 - 4
    assert np.all(np.isfinite(out["tokens"])) and np.all(np.isfinite(out["pooled"]))


@pytest.mark.parametrize("name", FUSION_CASES)
def test_padding_does_not_change_output(name):
    tokens, masks, present = _inputs()
    out, _ = _run(name, tokens, masks, present)
    changed = {m: np.where(masks[m][..., None], x, 77.0).astype(np.float32) for m, x in tokens.items()}
    out_changed, _ = _run(name, changed, masks, present)
    _assert_same(out, out_changed)


@pytest.mark.parametrize("name", FUSION_CASES)
@pytest.mark.parametrize("absent", ["image", "audio", "text"])
def test_absent_modality_content_is_ignored(name, absent):
    tokens, masks, present = _inputs()
    present[absent][1] = False
    out, _ = _run(name, tokens, masks, present)
    changed = dict(tokens)
    changed[absent] = tokens[absent].copy()
    changed[absent][1] = np.nan  # even NaN content of an absent modality must not leak
    out_changed, _ = _run(name, changed, masks, present)
    _assert_same(out, out_changed)
    assert not out_changed["mask"][1, _offset(name, absent) : _offset(name, absent) + LENGTHS[absent]].any()
    # Present, the same change does matter (so the check above can fail).
    present[absent][1] = True
    changed[absent][1] = 5.0
    out_present, _ = _run(name, tokens, masks, present)
    out_present_changed, _ = _run(name, changed, masks, present)
    assert not np.allclose(out_present["pooled"][1], out_present_changed["pooled"][1])


def _offset(name, modality):
    order = ("text", "image", "audio")  # both fusions put text first, then image, then audio
    return sum(LENGTHS[m] for m in order[: order.index(modality)])


@pytest.mark.parametrize("name", FUSION_CASES)
def test_all_context_missing_gives_no_nan(name):
    tokens, masks, present = _inputs()
    present["image"][:] = False
    present["audio"][:] = False
    out, _ = _run(name, tokens, masks, present)
    assert np.all(np.isfinite(out["tokens"])) and np.all(np.isfinite(out["pooled"]))
    assert out["mask"][:, LENGTHS["text"] :].sum() == 0

    def loss(v):
        return FUSION_CASES[name].apply(v, tokens, masks, present, deterministic=True)[0]["pooled"].sum()

    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(_variables(name))))


def test_bidirectional_updates_context_tokens():
    tokens, masks, present = _inputs()
    one_way, _ = _run("cross_attention", tokens, masks, present)
    both_ways, _ = _run("bidirectional", tokens, masks, present)
    n_text = LENGTHS["text"]
    assert not np.allclose(one_way["tokens"][:, n_text:], both_ways["tokens"][:, n_text:])


def test_cross_attention_needs_text_and_context():
    tokens, masks, present = _inputs()
    fusion = FUSION_CASES["cross_attention"]
    with pytest.raises(ValueError, match="text"):
        fusion.init(jax.random.key(0), {"image": tokens["image"]}, masks, present, deterministic=True)
    with pytest.raises(ValueError, match="at least one"):
        fusion.init(jax.random.key(0), {"text": tokens["text"]}, masks, present, deterministic=True)
