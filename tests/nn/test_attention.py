"""MultiHeadAttention against a numpy reference, key masking and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import MultiHeadAttention

B, LQ, LK, D, H = 2, 5, 7, 8, 2


def _reference(params, x, context, mask, key_bias=0.0):
    """Plain numpy multi-head attention with the module's weights (and optionally a key bias)."""
    p = jax.tree.map(np.asarray, params)

    def proj(name, inputs):
        return np.einsum("bld,dhk->blhk", inputs, p[name]["kernel"]) + p[name].get("bias", key_bias)

    q, k, v = proj("query", x), proj("key", context), proj("value", context)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D // H)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return np.einsum("bqhd,hde->bqe", out, p["out"]["kernel"]) + p["out"]["bias"]


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, LQ, D)).astype(np.float32)
    context = rng.normal(size=(B, LK, D)).astype(np.float32)
    mask = np.ones((B, LK), bool)
    mask[0, 4:] = False
    mask[1, :2] = False
    return x, context, mask


def _init(module, *args, **kwargs):
    return module.init(jax.random.key(0), *args, deterministic=True, **kwargs)


def test_cross_attention_matches_numpy_reference():
    x, context, mask = _inputs()
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x, context, mask)
    out = attn.apply(variables, x, context, mask, deterministic=True)
    np.testing.assert_allclose(out, _reference(variables["params"], x, context, mask), rtol=1e-5, atol=1e-5)


def test_a_key_bias_would_not_change_the_output():
    """Why the key projection has no bias: softmax cancels it (HF checkpoints' key biases can be dropped)."""
    x, context, mask = _inputs()
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x, context, mask)
    assert "bias" not in variables["params"]["key"] and "bias" in variables["params"]["query"]
    key_bias = np.random.default_rng(3).normal(size=(H, D // H)).astype(np.float32)
    out = attn.apply(variables, x, context, mask, deterministic=True)
    with_bias = _reference(variables["params"], x, context, mask, key_bias=key_bias)
    np.testing.assert_allclose(out, with_bias, rtol=1e-5, atol=1e-5)


def test_self_attention_matches_numpy_reference():
    x, _, _ = _inputs()
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x)
    out = attn.apply(variables, x, deterministic=True)
    full = np.ones((B, LQ), bool)
    np.testing.assert_allclose(out, _reference(variables["params"], x, x, full), rtol=1e-5, atol=1e-5)


def test_masked_keys_do_not_change_output():
    x, context, mask = _inputs()
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x, context, mask)
    changed = np.where(mask[..., None], context, 1e3 * np.random.default_rng(1).normal(size=context.shape))
    out = attn.apply(variables, x, context, mask, deterministic=True)
    out_changed = attn.apply(variables, x, changed.astype(np.float32), mask, deterministic=True)
    np.testing.assert_array_equal(out, out_changed)
    unmasked_change = context.copy()
    unmasked_change[0, 0] += 1.0
    assert not np.allclose(out, attn.apply(variables, x, unmasked_change, mask, deterministic=True))


def test_fully_masked_query_rows_are_zero_with_finite_grads():
    x, context, mask = _inputs()
    mask[1] = False
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x, context, mask)
    out = attn.apply(variables, x, context, mask, deterministic=True)
    np.testing.assert_array_equal(out[1], np.zeros((LQ, D)))
    assert np.all(np.isfinite(out)) and np.abs(out[0]).sum() > 0
    grads = jax.grad(lambda v: attn.apply(v, x, context, mask, deterministic=True).sum())(variables)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_sows_attention_weights():
    x, context, mask = _inputs()
    attn = MultiHeadAttention(num_heads=H)
    variables = _init(attn, x, context, mask)
    _, state = attn.apply(variables, x, context, mask, deterministic=True, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention"]
    assert weights.shape == (B, H, LQ, LK)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(weights[0, :, :, 4:], 0.0)


def test_dropout_only_in_training():
    x, context, mask = _inputs()
    attn = MultiHeadAttention(num_heads=H, dropout_rate=0.5)
    variables = _init(attn, x, context, mask)

    def run(seed, deterministic):
        rngs = {"dropout": jax.random.key(seed)}
        return attn.apply(variables, x, context, mask, deterministic=deterministic, rngs=rngs)

    assert not np.allclose(run(1, False), run(2, False))
    np.testing.assert_array_equal(run(1, False), run(1, False))
    np.testing.assert_array_equal(run(1, True), run(2, True))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="num_heads=3"):
        _init(MultiHeadAttention(num_heads=3), jnp.zeros((1, 2, D)))
