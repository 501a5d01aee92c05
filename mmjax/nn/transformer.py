"""Transformer blocks (pre-/post-LN, optional cross-attention), the encoder stack and the size table."""

from collections.abc import Callable

import jax
from flax import linen as nn

from mmjax.nn.attention import MultiHeadAttention

# Model sizes: name -> width, depth, num_heads, mlp_dim.
SIZES = {
    "tiny": dict(width=32, depth=1, num_heads=2, mlp_dim=64),
    "small": dict(width=128, depth=2, num_heads=4, mlp_dim=256),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> dropout -> Dense(width of the input)."""

    mlp_dim: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        h = nn.gelu(nn.Dense(self.mlp_dim, name="fc1")(x), approximate=False)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.Dense(x.shape[-1], name="fc2")(h)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention to `context`, then MLP; each a residual sub-layer.

    pre_ln: True -> x + f(LN(x)) (ViT/GPT-2/CLIP); False -> LN(x + f(x)) (BERT).
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> jax.Array:
        def sublayer(x: jax.Array, fn: Callable[[jax.Array], jax.Array], name: str) -> jax.Array:
            norm = nn.LayerNorm(name=f"{name}_ln")
            drop = nn.Dropout(self.dropout_rate)
            if self.pre_ln:
                return x + drop(fn(norm(x)), deterministic=deterministic)
            return norm(x + drop(fn(x), deterministic=deterministic))

        attn = MultiHeadAttention(self.num_heads, self.dropout_rate, name="self_attn")
        x = sublayer(x, lambda h: attn(h, context_mask=mask, deterministic=deterministic), "self_attn")
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a `context`")
            cross = MultiHeadAttention(self.num_heads, self.dropout_rate, name="cross_attn")
            x = sublayer(
                x, lambda h: cross(h, context, context_mask, deterministic=deterministic), "cross_attn"
            )
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, name="mlp")
        return sublayer(x, lambda h: mlp(h, deterministic=deterministic), "mlp")


class Encoder(nn.Module):
    """A stack of `depth` self-attention blocks over tokens with a key padding mask."""

    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, *, deterministic: bool) -> jax.Array:
        for i in range(self.depth):
            block = TransformerBlock(
                self.num_heads, self.mlp_dim, self.dropout_rate, self.pre_ln, name=f"layer_{i}"
            )
            x = block(x, mask, deterministic=deterministic)
        if self.pre_ln:
            x = nn.LayerNorm(name="final_ln")(x)
        return x
