"""TensorFusion and LowRankTensorFusion: absent modalities reduce to the others' terms; LMF is a tensor
fusion whose weight is a sum of rank-1 tensors."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fusion import LowRankTensorFusion, TensorFusion
from mmjax.fusion.tensor import outer_product

B, D, F = 3, 16, 4
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    masks["audio"][0, 2:] = False
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    present["image"][1] = False
    present["text"][2] = False
    return tokens, masks, present


def test_outer_product_order():
    a, b = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0, 5.0]])
    np.testing.assert_allclose(outer_product([a, b]), [[3.0, 4.0, 5.0, 6.0, 8.0, 10.0]])


def test_absent_modality_keeps_only_the_other_terms():
    fusion = TensorFusion(width=D, factor_dim=F)
    inputs = _inputs()
    variables = fusion.init(jax.random.key(0), *inputs, deterministic=True)
    out, aux = fusion.apply(variables, *inputs, deterministic=True)
    z = {m: aux[f"fusion/{m}_z"] for m in ("text", "image", "audio")}
    np.testing.assert_array_equal(z["image"][1], np.eye(F + 1)[0])  # [1; 0]: h_image set to zero
    kernel = variables["params"]["pooled_proj"]["kernel"].reshape(F + 1, F + 1, F + 1, D)
    # z_image = e_0 picks the image index 0 slice: a bilinear fusion of text and audio alone.
    expected = jnp.einsum("i,k,ikd->d", z["text"][1], z["audio"][1], kernel[:, 0])
    np.testing.assert_allclose(out["pooled"][1], expected, rtol=1e-5, atol=1e-6)
    assert kernel.size == (F + 1) ** 3 * D


def test_low_rank_equals_tensor_fusion_with_a_sum_of_rank_one_weights():
    rank = 3
    low_rank = LowRankTensorFusion(width=D, rank=rank, factor_dim=F)
    inputs = _inputs()
    variables = low_rank.init(jax.random.key(1), *inputs, deterministic=True)
    out, _ = low_rank.apply(variables, *inputs, deterministic=True)
    params = dict(variables["params"])
    factors = [params.pop(f"{m}_rank_factors") for m in ("text", "image", "audio")]
    assert factors[0].shape == (rank, F + 1, D)
    weight = jnp.einsum("rid,rjd,rkd->ijkd", *factors)  # sum over r of W_text^r (x) W_image^r (x) W_audio^r
    params["pooled_proj"] = {"kernel": weight.reshape(-1, D)}  # same projections and h_m layers
    tensor_out, _ = TensorFusion(width=D, factor_dim=F).apply({"params": params}, *inputs, deterministic=True)
    np.testing.assert_allclose(out["pooled"], tensor_out["pooled"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["tokens"], tensor_out["tokens"])
