"""FiLMFusion: the text modulates the image/audio streams; without text the modulation is the identity."""

import jax
import numpy as np
import pytest

from mmjax.fusion import FiLMFusion

B, D = 3, 16
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}
FUSION = FiLMFusion(width=D, depth=2)
N_TEXT = LENGTHS["text"]


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    present["text"][1] = False
    return tokens, masks, present


VARIABLES = FUSION.init(jax.random.key(0), *_inputs(), deterministic=True)


def _run(tokens, masks, present, variables=VARIABLES):
    return FUSION.apply(variables, tokens, masks, present, deterministic=True)


def test_text_changes_the_modulated_streams():
    tokens, masks, present = _inputs()
    out, _ = _run(tokens, masks, present)
    changed = dict(tokens, text=tokens["text"].copy())
    changed["text"][0] += 1.0
    out_changed, _ = _run(changed, masks, present)
    streams, streams_changed = out["tokens"][:, N_TEXT:], out_changed["tokens"][:, N_TEXT:]
    assert not np.allclose(streams[0], streams_changed[0])
    np.testing.assert_allclose(streams[2], streams_changed[2], rtol=1e-6)  # per example


def test_text_absent_means_identity_modulation():
    tokens, masks, present = _inputs()
    out, aux = _run(tokens, masks, present)
    for m in ("image", "audio"):
        assert aux[f"fusion/{m}_gamma"].shape == (B, 2, D)
        np.testing.assert_array_equal(aux[f"fusion/{m}_gamma"][1], 1.0)
        np.testing.assert_array_equal(aux[f"fusion/{m}_beta"][1], 0.0)
        assert not np.allclose(aux[f"fusion/{m}_gamma"][0], 1.0)
    # Zeroing the FiLM generators makes every example's modulation the identity: example 1 (no text) keeps
    # its streams, example 0 (with text) loses its conditioning.
    identity = jax.tree_util.tree_map_with_path(
        lambda path, x: 0 * x if "_film_" in jax.tree_util.keystr(path) else x, VARIABLES
    )
    out_identity, _ = _run(tokens, masks, present, identity)
    np.testing.assert_allclose(out["tokens"][1, N_TEXT:], out_identity["tokens"][1, N_TEXT:], rtol=1e-6)
    assert not np.allclose(out["tokens"][0, N_TEXT:], out_identity["tokens"][0, N_TEXT:])


def test_needs_text_and_a_stream():
    tokens, masks, present = _inputs()
    with pytest.raises(ValueError, match="text"):
        FUSION.init(jax.random.key(0), {"image": tokens["image"]}, masks, present, deterministic=True)
    with pytest.raises(ValueError, match="at least one"):
        FUSION.init(jax.random.key(0), {"text": tokens["text"]}, masks, present, deterministic=True)
