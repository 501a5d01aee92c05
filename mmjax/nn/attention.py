"""Multi-head dot-product attention for self- and cross-attention with key padding masks."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

IMPLEMENTATIONS = ("xla", "fused")  # MultiHeadAttention.implementation
DTYPES = ("float32", "bfloat16")  # compute dtypes; params are always float32


def compute_dtype(name: str) -> jnp.dtype | None:
    """flax `dtype=` for a compute dtype name: None for float32 (infer from inputs and params, so float64
    inputs under jax_enable_x64 stay float64, as without the lever), else the dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {DTYPES}")
    return None if name == "float32" else jnp.dtype(name)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; queries from `x`, keys/values from `context` (defaults to `x`).

    Masked keys get a large finite negative logit; a query whose keys are all masked outputs exactly zero.
    `bias` [B or 1, H, Lq, Lk] is added to the logits before masking (MPNet's relative position bias).
    With `causal`, query i also never sees keys after position i (self-attention, CLIP's text tower).
    The key projection has no bias: it adds the same q.b_k to every logit of a query, so softmax cancels it;
    as a parameter it would only collect rounding noise, which Adam amplifies into lr-sized steps.

    implementation "xla": einsum + softmax; the attention weights [B, H, Lq, Lk] are sown under
    ("intermediates", "attention") and dropout applies to them. "fused": jax.nn.dot_product_attention
    (cuDNN flash attention on GPUs); no weights are sown and attention dropout is not supported.
    Projections compute in `dtype` (params stay float32); logits and softmax in at least float32.
    """

    num_heads: int
    dropout_rate: float = 0.0
    use_bias: bool = True  # False: no bias anywhere
    qkv_bias: bool = True  # False: no query/value bias, the output projection keeps its bias (HF qkv_bias)
    causal: bool = False
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    implementation: str = "xla"  # one of IMPLEMENTATIONS

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> jax.Array:
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation={self.implementation!r} is not one of {IMPLEMENTATIONS}"
            )
        context = x if context is None else context
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {width}")
        head_dim = width // self.num_heads
        dtype = compute_dtype(self.dtype)

        def project(name: str, inputs: jax.Array, use_bias: bool) -> jax.Array:
            dense = nn.DenseGeneral((self.num_heads, head_dim), use_bias=use_bias, dtype=dtype, name=name)
            return dense(inputs)

        qkv_bias = self.use_bias and self.qkv_bias
        q = project("query", x, qkv_bias)
        k = project("key", context, False)
        v = project("value", context, qkv_bias)
        key_mask = attention_mask(context_mask, x.shape[1], context.shape[1], self.causal)
        if self.implementation == "fused":
            if self.dropout_rate > 0 and not deterministic:
                raise ValueError(
                    f"attention='fused' does not support attention dropout (dropout_rate={self.dropout_rate} "
                    "in training): use attention='xla' or dropout 0"
                )
            logit_bias = None if bias is None else bias.astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, bias=logit_bias, mask=key_mask)
            if key_mask is not None:  # all-masked rows: uniform over all keys -> exactly zero, as in xla
                out = jnp.where(jnp.moveaxis(key_mask.any(-1), 1, -1)[..., None], out, 0.0)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
            logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
            if bias is not None:
                logits = logits + bias
            if key_mask is not None:
                logits = jnp.where(key_mask, logits, jnp.finfo(logits.dtype).min)
            weights = jax.nn.softmax(logits, axis=-1)
            if key_mask is not None:
                weights = jnp.where(key_mask, weights, 0.0)  # all-masked rows: uniform -> exactly zero
            self.sow("intermediates", "attention", weights)
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        out = nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, dtype=dtype, name="out")(out)
        if context_mask is not None:
            out = jnp.where(context_mask.any(axis=-1)[:, None, None], out, 0.0)
        return out


def attention_mask(
    context_mask: jax.Array | None, num_queries: int, num_keys: int, causal: bool
) -> jax.Array | None:
    """Boolean mask [B or 1, 1, Lq, Lk] of the keys each query may see (padding and causal); None: all."""
    key_mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
    if causal:
        lower = jnp.tril(jnp.ones((num_queries, num_keys), bool))[None, None]
        key_mask = lower if key_mask is None else key_mask & lower
    return key_mask
