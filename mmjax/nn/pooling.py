"""Pooling tokens: masked means, and multi-head attention pooling (MAP: a learned probe attends over the
tokens, SigLIP's vision head)."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.transformer import MlpBlock

# fan-in init of the fused [D, 3, heads, head_dim] q/k/v kernel (axis 1 picks q, k or v)
IN_PROJ_INIT = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(2, 3), batch_axis=(1,)
)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [B, L, D] over the positions where mask [B, L] is True; zeros where none is."""
    total = jnp.where(mask[..., None], x, 0.0).sum(axis=1)
    return total / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)


def mean_token(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tokens [B, L, D] and mask [B, L] -> one token [B, 1, D], their masked mean (the sentence embedding of
    sentence-transformers such as all-MiniLM-L6-v2), and its mask [B, 1] (False where no token is real)."""
    mask = mask.astype(bool)
    return masked_mean(tokens, mask)[:, None], jnp.any(mask, axis=1, keepdims=True)


class AttentionPool(nn.Module):
    """Pools tokens [B, L, D] (with an optional key mask [B, L]) into [B, D]: one learned probe query
    attends over the tokens, then a pre-LN residual MLP (out + MLP(LN(out))), as big_vision's MAP head.

    The q/k/v projections are one fused `in_proj` (kernel [D, 3, heads, head_dim], bias [3, heads,
    head_dim]), torch nn.MultiheadAttention's in_proj layout, key bias included so that a checkpoint's
    fused bias maps onto it as a plain reshape (softmax cancels the key bias).
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS
    layer_norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {width}")
        head_dim = width // self.num_heads
        probe = self.param("probe", nn.initializers.normal(0.02), (width,))
        shape = (width, 3, self.num_heads, head_dim)
        kernel = self.param("in_proj_kernel", IN_PROJ_INIT, shape).astype(x.dtype)
        bias = self.param("in_proj_bias", nn.initializers.zeros, shape[1:]).astype(x.dtype)
        q = jnp.einsum("d,dhk->hk", probe.astype(x.dtype), kernel[:, 0]) + bias[0]
        k = jnp.einsum("bld,dhk->blhk", x, kernel[:, 1]) + bias[1]
        v = jnp.einsum("bld,dhk->blhk", x, kernel[:, 2]) + bias[2]
        logits = jnp.einsum("hk,blhk->bhl", q, k) / math.sqrt(head_dim)
        if mask is not None:
            logits = jnp.where(mask[:, None, :].astype(bool), logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhl,blhk->bhk", weights, v)
        out = nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)
        mlp = MlpBlock(self.mlp_dim, activation=self.activation, name="mlp")
        return out + mlp(nn.LayerNorm(self.layer_norm_eps, name="ln")(out), deterministic=True)
