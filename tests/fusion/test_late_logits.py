"""LateLogitsFusion: per-modality vectors and averaging weights follow presence."""

import jax
import numpy as np

from mmjax.fusion import LateLogitsFusion

B, D = 3, 8
WIDTH_IN = {"text": 6, "image": 5, "audio": 4}


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, 3, w)).astype(np.float32) for m, w in WIDTH_IN.items()}
    masks = {m: np.ones((B, 3), bool) for m in WIDTH_IN}
    present = {m: np.ones((B,), bool) for m in WIDTH_IN}
    present["image"][1] = False  # row 1: text + audio
    for m in WIDTH_IN:
        present[m][2] = False  # row 2: nothing
    return tokens, masks, present


def test_weights_per_modality_and_pooled_follow_presence():
    fusion = LateLogitsFusion(width=D, mlp_dim=16)
    tokens, masks, present = _inputs()
    variables = fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)
    out, aux = fusion.apply(variables, tokens, masks, present, deterministic=True)
    np.testing.assert_allclose(out["weights"], [[1 / 3, 1 / 3, 1 / 3], [0.5, 0, 0.5], [0, 0, 0]], rtol=1e-6)
    per = np.asarray(out["per_modality"])
    assert per.shape == (B, 3, D) and {"fusion/per_modality", "fusion/weights"} <= set(aux)
    assert not per[1, 1].any() and not per[2].any() and np.abs(per[1, [0, 2]]).min() > 0
    np.testing.assert_allclose(out["pooled"], np.einsum("bm,bmd->bd", out["weights"], per), rtol=1e-5)
    np.testing.assert_allclose(out["pooled"][1], per[1, [0, 2]].mean(0), rtol=1e-5)

    # Each vector depends on its own modality only: changing the image moves column 1 alone.
    changed = dict(tokens, image=tokens["image"] + 1.0)
    out_changed, _ = fusion.apply(variables, changed, masks, present, deterministic=True)
    per_changed = np.asarray(out_changed["per_modality"])
    np.testing.assert_allclose(per_changed[:, [0, 2]], per[:, [0, 2]], rtol=1e-6)
    assert not np.allclose(per_changed[0, 1], per[0, 1])
