"""Transformer blocks (pre-/post-LN, optional cross-attention), the encoder stack and the size table."""

from collections.abc import Callable
from functools import partial

import jax
from flax import linen as nn

from mmjax.nn.attention import MultiHeadAttention

# Model sizes: name -> width, depth, num_heads, mlp_dim.
SIZES = {
    "tiny": dict(width=32, depth=1, num_heads=2, mlp_dim=64),
    "small": dict(width=128, depth=2, num_heads=4, mlp_dim=256),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


# Activation name (Hugging Face `hidden_act` spelling) -> function.
ACTIVATIONS = {
    "gelu": partial(nn.gelu, approximate=False),
    "gelu_new": partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "quick_gelu": quick_gelu,
}


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation -> dropout -> Dense(width of the input)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    activation: str = "gelu"  # a key of ACTIVATIONS: gelu (exact erf), gelu_new, relu, quick_gelu, ...

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        h = ACTIVATIONS[self.activation](nn.Dense(self.mlp_dim, name="fc1")(x))
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
    activation: str = "gelu"  # a key of ACTIVATIONS
    layer_norm_eps: float = 1e-6
    causal: bool = False  # self-attention sees only earlier positions

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
            norm = nn.LayerNorm(self.layer_norm_eps, name=f"{name}_ln")
            drop = nn.Dropout(self.dropout_rate)
            if self.pre_ln:
                return x + drop(fn(norm(x)), deterministic=deterministic)
            return norm(x + drop(fn(x), deterministic=deterministic))

        attn = MultiHeadAttention(self.num_heads, self.dropout_rate, causal=self.causal, name="self_attn")
        x = sublayer(x, lambda h: attn(h, context_mask=mask, deterministic=deterministic), "self_attn")
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a `context`")
            cross = MultiHeadAttention(self.num_heads, self.dropout_rate, name="cross_attn")
            x = sublayer(
                x, lambda h: cross(h, context, context_mask, deterministic=deterministic), "cross_attn"
            )
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.activation, name="mlp")
        return sublayer(x, lambda h: mlp(h, deterministic=deterministic), "mlp")


class Encoder(nn.Module):
    """A stack of `depth` self-attention blocks over tokens with a key padding mask.

    Returns (output, hidden_states): hidden_states is the input followed by every block's output
    (Hugging Face's `output_hidden_states` order; with pre_ln the last one precedes the final LayerNorm,
    which `final_ln=False` leaves out, as in CLIP's vision tower).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    activation: str = "gelu"  # a key of ACTIVATIONS
    layer_norm_eps: float = 1e-6
    causal: bool = False
    final_ln: bool = True  # pre_ln only: LayerNorm after the last block

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None, *, deterministic: bool
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        hidden_states = [x]
        for i in range(self.depth):
            block = TransformerBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.pre_ln,
                activation=self.activation,
                layer_norm_eps=self.layer_norm_eps,
                causal=self.causal,
                name=f"layer_{i}",
            )
            x = block(x, mask, deterministic=deterministic)
            hidden_states.append(x)
        if self.pre_ln and self.final_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="final_ln")(x)
        return x, tuple(hidden_states)
