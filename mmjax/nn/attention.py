"""Multi-head dot-product attention for self- and cross-attention with key padding masks."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention; queries from `x`, keys/values from `context` (defaults to `x`).

    Masked keys get a large finite negative logit; a query whose keys are all masked outputs exactly zero.
    The attention weights [B, H, Lq, Lk] are sown under ("intermediates", "attention").
    With `causal`, query i also never sees keys after position i (self-attention, CLIP's text tower).
    The key projection has no bias: it adds the same q.b_k to every logit of a query, so softmax cancels it;
    as a parameter it would only collect rounding noise, which Adam amplifies into lr-sized steps.
    """

    num_heads: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    causal: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> jax.Array:
        context = x if context is None else context
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {width}")
        head_dim = width // self.num_heads

        def project(name: str, inputs: jax.Array, use_bias: bool) -> jax.Array:
            dense = nn.DenseGeneral((self.num_heads, head_dim), use_bias=use_bias, name=name)
            return dense(inputs)

        q = project("query", x, self.use_bias)
        k = project("key", context, False)
        v = project("value", context, self.use_bias)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        key_mask = None if context_mask is None else context_mask[:, None, None, :]
        if self.causal:
            causal = jnp.tril(jnp.ones((x.shape[1], context.shape[1]), bool))[None, None]
            key_mask = causal if key_mask is None else key_mask & causal
        if key_mask is not None:
            logits = jnp.where(key_mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        if key_mask is not None:
            weights = jnp.where(key_mask, weights, 0.0)  # all-masked rows: uniform -> exactly zero
        self.sow("intermediates", "attention", weights)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, name="out")(out)
        if context_mask is not None:
            out = jnp.where(context_mask.any(axis=-1)[:, None, None], out, 0.0)
        return out
