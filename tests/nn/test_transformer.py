"""TransformerBlock (pre/post-LN, cross-attention) and the Encoder stack."""

import math

import jax
import numpy as np
import pytest

from mmjax.nn.transformer import SIZES, Encoder, MlpBlock, TransformerBlock

B, L, D = 2, 6, 16


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[0, 3:] = False
    return x, mask


def test_size_table():
    assert SIZES["tiny"] == dict(width=32, depth=1, num_heads=2, mlp_dim=64)
    assert SIZES["small"] == dict(width=128, depth=2, num_heads=4, mlp_dim=256)
    assert SIZES["base"] == dict(width=768, depth=12, num_heads=12, mlp_dim=3072)


def test_mlp_block_keeps_width():
    x, _ = _inputs()
    mlp = MlpBlock(mlp_dim=32)
    variables = mlp.init(jax.random.key(0), x, deterministic=True)
    assert variables["params"]["fc1"]["kernel"].shape == (D, 32)
    assert mlp.apply(variables, x, deterministic=True).shape == (B, L, D)


def test_pre_ln_and_post_ln_differ_with_same_weights():
    x, mask = _inputs()
    pre, post = TransformerBlock(2, 32, pre_ln=True), TransformerBlock(2, 32, pre_ln=False)
    variables = pre.init(jax.random.key(0), x, mask, deterministic=True)
    out_pre = pre.apply(variables, x, mask, deterministic=True)
    out_post = post.apply(variables, x, mask, deterministic=True)
    assert out_pre.shape == out_post.shape == (B, L, D)
    assert np.all(np.isfinite(out_pre)) and np.all(np.isfinite(out_post))
    assert not np.allclose(out_pre, out_post, atol=1e-3)
    # Post-LN ends in a LayerNorm (zero mean per token with default scale/bias); pre-LN does not.
    np.testing.assert_allclose(out_post.mean(-1), 0.0, atol=1e-5)
    assert np.abs(out_pre.mean(-1)).max() > 1e-3


def test_cross_attention_block_ignores_masked_context():
    x, mask = _inputs()
    context = np.random.default_rng(1).normal(size=(B, 4, D)).astype(np.float32)
    context_mask = np.array([[True, True, False, False], [True, True, True, True]])
    block = TransformerBlock(2, 32, cross_attention=True)
    variables = block.init(jax.random.key(0), x, mask, context, context_mask, deterministic=True)
    assert "cross_attn" in variables["params"]
    out = block.apply(variables, x, mask, context, context_mask, deterministic=True)
    changed = context.copy()
    changed[0, 2:] = 100.0
    np.testing.assert_array_equal(
        out, block.apply(variables, x, mask, changed, context_mask, deterministic=True)
    )
    changed[0, 0] = 100.0
    assert not np.allclose(
        out[0], block.apply(variables, x, mask, changed, context_mask, deterministic=True)[0]
    )


def test_cross_attention_block_needs_context():
    x, mask = _inputs()
    with pytest.raises(ValueError, match="context"):
        TransformerBlock(2, 32, cross_attention=True).init(jax.random.key(0), x, mask, deterministic=True)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_encoder_padding_does_not_change_valid_tokens(pre_ln):
    x, mask = _inputs()
    encoder = Encoder(depth=2, num_heads=2, mlp_dim=32, pre_ln=pre_ln)
    variables = encoder.init(jax.random.key(0), x, mask, deterministic=True)
    assert ("final_ln" in variables["params"]) == pre_ln
    assert {"layer_0", "layer_1"} <= set(variables["params"])
    out, hidden_states = encoder.apply(variables, x, mask, deterministic=True)
    assert len(hidden_states) == 3
    np.testing.assert_array_equal(hidden_states[0], x)
    changed = np.where(mask[..., None], x, 50.0).astype(np.float32)
    out_changed, _ = encoder.apply(variables, changed, mask, deterministic=True)
    np.testing.assert_allclose(out[mask], out_changed[mask], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[~mask], out_changed[~mask])


def test_encoder_dropout_train_vs_eval():
    x, mask = _inputs()
    encoder = Encoder(depth=1, num_heads=2, mlp_dim=32, dropout_rate=0.3)
    variables = encoder.init(jax.random.key(0), x, mask, deterministic=True)

    def run(seed, deterministic):
        return encoder.apply(
            variables, x, mask, deterministic=deterministic, rngs={"dropout": jax.random.key(seed)}
        )[0]

    assert not np.allclose(run(1, False), run(2, False))
    np.testing.assert_array_equal(run(1, True), run(2, True))


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu", "quick_gelu"])
def test_mlp_block_activation_matches_hand_computation(activation):
    x, _ = _inputs()
    mlp = MlpBlock(mlp_dim=32, activation=activation)
    variables = mlp.init(jax.random.key(0), x, deterministic=True)
    p = variables["params"]
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    act = {
        "gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))),
        "gelu_new": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "relu": lambda v: np.maximum(v, 0),
        "quick_gelu": lambda v: v / (1 + np.exp(-1.702 * v)),
    }[activation](np.asarray(h, np.float64))
    expected = act @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(mlp.apply(variables, x, deterministic=True), expected, rtol=1e-5, atol=1e-5)


def test_mlp_block_rejects_unknown_activation():
    x, _ = _inputs()
    with pytest.raises(ValueError, match="'prelu'"):  # an activation with weights of its own
        MlpBlock(mlp_dim=32, activation="prelu").init(jax.random.key(0), x, deterministic=True)
