"""EarlyFusion: one joint sequence, modalities told apart only by their learned embeddings."""

import jax
import numpy as np

from mmjax.fusion import EarlyFusion

B, D, L = 2, 8, 3


def _inputs():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(B, L, 4)).astype(np.float32)
    tokens = {"text": rng.normal(size=(B, L, 6)).astype(np.float32), "image": image, "audio": image.copy()}
    masks = {m: np.ones((B, L), bool) for m in tokens}
    present = {m: np.ones((B,), bool) for m in tokens}
    return tokens, masks, present


FUSION = EarlyFusion(width=D, depth=2, num_heads=2, mlp_dim=16)


def _apply(variables, tokens, masks, present):
    return FUSION.apply(variables, tokens, masks, present, deterministic=True)[0]


def test_modality_embeddings_tell_modalities_apart():
    tokens, masks, present = _inputs()  # image and audio: same content
    params = FUSION.init(jax.random.key(0), tokens, masks, present, deterministic=True)["params"]
    params = dict(params, audio_proj=params["image_proj"])  # ... and the same projection
    out = _apply({"params": params}, tokens, masks, present)
    image_out, audio_out = out["tokens"][:, L : 2 * L], out["tokens"][:, 2 * L :]
    assert not np.allclose(image_out, audio_out, atol=1e-4)
    params["audio_embedding"] = params["image_embedding"]  # no positions: now indistinguishable
    out = _apply({"params": params}, tokens, masks, present)
    np.testing.assert_allclose(out["tokens"][:, L : 2 * L], out["tokens"][:, 2 * L :], rtol=1e-5, atol=1e-6)


def test_text_attends_to_image_and_cls_is_not_a_token():
    tokens, masks, present = _inputs()
    variables = FUSION.init(jax.random.key(0), tokens, masks, present, deterministic=True)
    out = _apply(variables, tokens, masks, present)
    assert out["tokens"].shape == (B, 3 * L, D)  # the fusion [CLS] only gives `pooled`
    changed = dict(tokens, image=tokens["image"] + 1.0)
    out_changed = _apply(variables, changed, masks, present)
    assert not np.allclose(out["tokens"][:, :L], out_changed["tokens"][:, :L])  # text tokens
    assert not np.allclose(out["pooled"], out_changed["pooled"])
