"""Task heads: output shapes, parameter names, and how they plug into the losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.heads import ClassificationHead, EmbeddingHead, LogitScale, SpanHead, TokenClassificationHead
from mmjax.losses import MASK_VALUE, span_loss

RNG = jax.random.PRNGKey(0)
TOKENS = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))  # [B, L, D]
MASK = jnp.array([[True] * 5, [True, True, True, False, False]])


def shapes(params):
    return jax.tree.map(jnp.shape, params)


def test_classification_head_shapes():
    head = ClassificationHead(3, hidden_dim=6)
    params = head.init(RNG, TOKENS[:, 0], deterministic=True)["params"]
    assert shapes(params) == {
        "hidden": {"kernel": (4, 6), "bias": (6,)},
        "logits": {"kernel": (6, 3), "bias": (3,)},
    }
    assert head.apply({"params": params}, TOKENS[:, 0], deterministic=True).shape == (2, 3)


def test_token_classification_head():
    head = TokenClassificationHead(7, dropout_rate=0.5)
    params = head.init(RNG, TOKENS)["params"]
    assert shapes(params) == {"logits": {"kernel": (4, 7), "bias": (7,)}}
    logits = head.apply({"params": params}, TOKENS)
    assert logits.shape == (2, 5, 7)
    np.testing.assert_allclose(
        logits, TOKENS @ params["logits"]["kernel"] + params["logits"]["bias"], rtol=1e-5
    )
    dropped = head.apply({"params": params}, TOKENS, deterministic=False, rngs={"dropout": RNG})
    assert dropped.shape == (2, 5, 7) and not np.allclose(dropped, logits)


def test_span_head_masks_consistently_with_the_loss():
    head = SpanHead()
    params = head.init(RNG, TOKENS, MASK)["params"]
    assert shapes(params) == {"span": {"kernel": (4, 2), "bias": (2,)}}
    start, end = head.apply({"params": params}, TOKENS)
    assert start.shape == end.shape == (2, 5)
    expected = TOKENS @ params["span"]["kernel"] + params["span"]["bias"]
    np.testing.assert_allclose(start, expected[..., 0], rtol=1e-5)
    np.testing.assert_allclose(end, expected[..., 1], rtol=1e-5)
    masked_start, masked_end = head.apply({"params": params}, TOKENS, MASK)
    np.testing.assert_array_equal(masked_start[1, 3:], MASK_VALUE)
    np.testing.assert_array_equal(masked_end[1, :3], end[1, :3])
    starts, ends = jnp.array([1, 0]), jnp.array([4, 2])
    np.testing.assert_allclose(
        span_loss(masked_start, masked_end, starts, ends, MASK),
        span_loss(start, end, starts, ends, MASK),
        rtol=1e-6,
    )


def test_embedding_head():
    head = EmbeddingHead(8)
    params = head.init(RNG, TOKENS[:, 0])["params"]
    assert shapes(params) == {"proj": {"kernel": (4, 8), "bias": (8,)}}
    assert head.apply({"params": params}, TOKENS[:, 0]).shape == (2, 8)


def test_logit_scale_init_clip_and_bias():
    module = LogitScale()
    params = module.init(RNG)["params"]
    assert set(params) == {"logit_scale"}
    scale, bias = module.apply({"params": params})
    np.testing.assert_allclose(scale, math.log(1 / 0.07), rtol=1e-6)
    assert bias is None
    too_big, _ = module.apply({"params": {"logit_scale": jnp.float32(10.0)}})
    np.testing.assert_allclose(too_big, math.log(100), rtol=1e-6)
    negative, _ = module.apply({"params": {"logit_scale": jnp.float32(-3.0)}})
    assert negative == 0.0
    grad = jax.grad(lambda p: module.apply({"params": p})[0])({"logit_scale": jnp.float32(1.0)})
    assert grad["logit_scale"] == 1.0

    siglip = LogitScale(math.log(10), with_bias=True)
    params = siglip.init(RNG)["params"]
    assert set(params) == {"logit_scale", "logit_bias"}
    scale, bias = siglip.apply({"params": params})
    np.testing.assert_allclose(scale, math.log(10), rtol=1e-6)
    assert bias == -10.0
