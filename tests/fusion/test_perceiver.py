"""PerceiverFusion: the latents are the output, read every present modality and ignore absent ones."""

import functools

import jax
import numpy as np

from mmjax.fusion import PerceiverFusion

B, D = 3, 16
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}


@functools.cache
def _fusion(num_latents=3):
    return PerceiverFusion(width=D, depth=2, num_latents=num_latents, num_heads=2, mlp_dim=32)


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    masks["text"][0, 3:] = False
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    return tokens, masks, present


@functools.cache
def _variables(fusion):
    return fusion.init(jax.random.key(0), *_inputs(), deterministic=True)


def _run(fusion, tokens, masks, present):
    return fusion.apply(_variables(fusion), tokens, masks, present, deterministic=True)[0]


def test_num_latents_sets_the_output_length():
    for num_latents in (3, 5):
        out = _run(_fusion(num_latents), *_inputs())
        assert out["tokens"].shape == (B, num_latents, D)
        assert out["mask"].shape == (B, num_latents) and out["mask"].all()
        np.testing.assert_allclose(out["pooled"], out["tokens"].mean(axis=1), rtol=1e-6)


def test_absent_modality_is_as_if_not_given():
    fusion = _fusion()
    tokens, masks, present = _inputs()
    present["audio"][:] = False
    out = _run(fusion, tokens, masks, present)
    without = _run(fusion, {m: tokens[m] for m in ("text", "image")}, masks, present)
    np.testing.assert_allclose(out["tokens"], without["tokens"], rtol=1e-5, atol=1e-6)


def test_latents_read_the_present_modalities():
    fusion = _fusion()
    tokens, masks, present = _inputs()
    out = _run(fusion, tokens, masks, present)
    for m in LENGTHS:
        changed = dict(tokens, **{m: tokens[m].copy()})
        changed[m][0] += 1.0
        out_changed = _run(fusion, changed, masks, present)
        assert not np.allclose(out["tokens"][0], out_changed["tokens"][0]), m
        np.testing.assert_allclose(out["tokens"][1:], out_changed["tokens"][1:], rtol=1e-5, atol=1e-6)
