"""Transformer blocks (pre-/post-LN, optional cross-attention), the encoder stack and the size table.

Speed levers (defaults keep the plain float32, unrolled, einsum-attention model): `remat` recomputes each
block's activations in the backward pass, `scan` runs the encoder's layers as one nn.scan (params stacked
under `layers`: see stack_layers), `dtype` is the compute dtype of Dense layers and attention, and
`attention` picks the attention implementation (mmjax.nn.attention.IMPLEMENTATIONS).
"""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.nn.attention import MultiHeadAttention, compute_dtype

# Model sizes: name -> width, depth, num_heads, mlp_dim.
SIZES = {
    "tiny": dict(width=32, depth=1, num_heads=2, mlp_dim=64),
    "small": dict(width=128, depth=2, num_heads=4, mlp_dim=256),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}

# remat name -> jax.checkpoint policy (what the backward pass may keep): "" no remat; "full" keeps nothing.
REMAT_POLICIES = {
    "": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2, as Hugging Face and torch compute it.

    Same values as nn.gelu(approximate=False) to float32 rounding, but XLA:CPU lowers erf to a short
    polynomial and erfc (what nn.gelu uses) to exponentials and selects: 8% of the bench train step.
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))))


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def clipped_gelu(x: jax.Array) -> jax.Array:
    """Exact GELU clipped to [-10, 10] (HF gelu_10, for quantisation)."""
    return jnp.clip(gelu(x), -10.0, 10.0)


def laplace(x: jax.Array) -> jax.Array:
    """MEGA's Laplace activation: the normal CDF at (x - 0.707107) / 0.282095."""
    return 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / np.float32(0.282095 * np.sqrt(2.0))))


def mish(x: jax.Array) -> jax.Array:
    """x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


def relu_squared(x: jax.Array) -> jax.Array:
    return jnp.square(nn.relu(x))


def sqrt_softplus(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jax.nn.softplus(x))


def linear(x: jax.Array) -> jax.Array:
    return x


gelu_tanh = partial(nn.gelu, approximate=True)  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))

# Activation name (Hugging Face `hidden_act` spelling, transformers' ACT2FN) -> function. HF's prelu and
# xielu are left out: they hold learned weights.
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_python": gelu,
    "gelu_10": clipped_gelu,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_python_tanh": gelu_tanh,
    "hardswish": jax.nn.hard_swish,
    "laplace": laplace,
    "leaky_relu": partial(jax.nn.leaky_relu, negative_slope=0.01),  # torch's default slope
    "linear": linear,
    "mish": mish,
    "relu": nn.relu,
    "relu2": relu_squared,
    "relu6": jax.nn.relu6,
    "quick_gelu": quick_gelu,
    "sigmoid": jax.nn.sigmoid,
    "silu": nn.silu,
    "swish": nn.silu,
    "sqrtsoftplus": sqrt_softplus,
    "tanh": jnp.tanh,
}


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation -> dropout -> Dense(width of the input).

    gated: fc1 gives 2 * mlp_dim features [a, b] and the hidden layer is activation(a) * b (SwiGLU with silu).
    """

    mlp_dim: int
    dropout_rate: float = 0.0
    activation: str = "gelu"  # a key of ACTIVATIONS: gelu (exact erf), gelu_new, relu, quick_gelu, ...
    dtype: str = "float32"  # compute dtype, one of DTYPES
    gated: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        dtype = compute_dtype(self.dtype)
        activation = ACTIVATIONS[self.activation]
        h = nn.Dense(self.mlp_dim * (2 if self.gated else 1), dtype=dtype, name="fc1")(x)
        if self.gated:
            a, b = jnp.split(h, 2, axis=-1)
            h = activation(a) * b
        else:
            h = activation(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.Dense(x.shape[-1], dtype=dtype, name="fc2")(h)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention to `context`, then MLP; each a residual sub-layer.

    pre_ln: True -> x + f(LN(x)) (ViT/GPT-2/CLIP); False -> LN(x + f(x)) (BERT).
    layer_scale: f's output is scaled per channel by a learned vector `<sublayer>_layer_scale` (DINOv2).
    `dtype` applies inside f; LayerNorms (float32 params) and the residual stream stay float32.
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    cross_attention: bool = False
    activation: str = "gelu"  # a key of ACTIVATIONS
    layer_norm_eps: float = 1e-6
    causal: bool = False  # self-attention sees only earlier positions
    dtype: str = "float32"  # compute dtype of Dense layers and attention, one of DTYPES
    attention: str = "xla"  # attention implementation: xla | fused (mmjax.nn.attention)
    qkv_bias: bool = True  # query/value biases (mmjax.nn.attention.MultiHeadAttention.qkv_bias)
    layer_scale: float | None = None  # None: none; else the initial value of the per-channel scales
    gated_mlp: bool = False  # MlpBlock.gated (SwiGLU with activation="silu")

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> jax.Array:
        compute_dtype(self.dtype)  # checks the name

        def sublayer(x: jax.Array, fn: Callable[[jax.Array], jax.Array], name: str) -> jax.Array:
            norm = nn.LayerNorm(self.layer_norm_eps, name=f"{name}_ln")
            drop = nn.Dropout(self.dropout_rate)
            if self.layer_scale is not None:
                init = nn.initializers.constant(self.layer_scale)
                gamma = self.param(f"{name}_layer_scale", init, (x.shape[-1],))
                fn = (lambda f: lambda h: f(h) * gamma)(fn)
            if self.pre_ln:
                return x + drop(fn(norm(x)), deterministic=deterministic)
            return norm(x + drop(fn(x), deterministic=deterministic))

        attention = partial(
            MultiHeadAttention,
            self.num_heads,
            self.dropout_rate,
            dtype=self.dtype,
            implementation=self.attention,
            qkv_bias=self.qkv_bias,
        )
        attn = attention(causal=self.causal, name="self_attn")
        x = sublayer(
            x, lambda h: attn(h, context_mask=mask, bias=bias, deterministic=deterministic), "self_attn"
        )
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a `context`")
            cross = attention(name="cross_attn")
            x = sublayer(
                x, lambda h: cross(h, context, context_mask, deterministic=deterministic), "cross_attn"
            )
        mlp = MlpBlock(
            self.mlp_dim, self.dropout_rate, self.activation, self.dtype, gated=self.gated_mlp, name="mlp"
        )
        return sublayer(x, lambda h: mlp(h, deterministic=deterministic), "mlp")


def run_block(
    block: TransformerBlock,
    x: jax.Array,
    mask: jax.Array | None = None,
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    deterministic: bool,
    remat: str = "",
    prevent_cse: bool = True,
) -> jax.Array:
    """`block(x, mask, context, context_mask, bias)`, under nn.remat with policy REMAT_POLICIES[remat]
    unless "".

    The lifted function closes over `deterministic`, which stays a Python bool (nn.remat would trace it).
    Params keep the block's path. prevent_cse=False is the right choice inside nn.scan.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is not one of {sorted(REMAT_POLICIES)}")
    if not remat:
        return block(x, mask, context, context_mask, bias, deterministic=deterministic)

    def call(module: TransformerBlock, *args: jax.Array | None) -> jax.Array:
        return module(*args, deterministic=deterministic)

    checkpointed = nn.remat(call, policy=REMAT_POLICIES[remat], prevent_cse=prevent_cse)
    return checkpointed(block, x, mask, context, context_mask, bias)


class Encoder(nn.Module):
    """A stack of `depth` self-attention blocks over tokens with a key padding mask, and optionally one
    attention-logit `bias` [B or 1, H, L, L] that every block adds (MPNet's relative positions).

    Returns (output, hidden_states): hidden_states is the input followed by every block's output
    (Hugging Face's `output_hidden_states` order; with pre_ln the last one precedes the final LayerNorm,
    which `final_ln=False` leaves out, as in CLIP's vision tower).
    With `scan`, the blocks run as one nn.scan (compiled once) with params stacked on a leading layer axis
    under `layers` instead of `layer_{i}`; stack_layers / unstack_layers convert between the two.
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
    scan: bool = False  # nn.scan over the layers (params under `layers`)
    remat: str = ""  # a key of REMAT_POLICIES: "" | full | dots | dots_saveable
    dtype: str = "float32"  # compute dtype, one of DTYPES
    attention: str = "xla"  # attention implementation: xla | fused
    qkv_bias: bool = True  # TransformerBlock's block options
    layer_scale: float | None = None
    gated_mlp: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None, bias: jax.Array | None = None, *, deterministic: bool
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        block = partial(
            TransformerBlock,
            self.num_heads,
            self.mlp_dim,
            self.dropout_rate,
            self.pre_ln,
            activation=self.activation,
            layer_norm_eps=self.layer_norm_eps,
            causal=self.causal,
            dtype=self.dtype,
            attention=self.attention,
            qkv_bias=self.qkv_bias,
            layer_scale=self.layer_scale,
            gated_mlp=self.gated_mlp,
        )
        run = partial(run_block, deterministic=deterministic, remat=self.remat, prevent_cse=not self.scan)
        hidden_states = [x]
        if self.scan:

            def body(module: TransformerBlock, carry: jax.Array, mask: jax.Array | None, bias) -> tuple:
                out = run(module, carry, mask, bias=bias)
                return out, out

            scanned = nn.scan(
                body,
                variable_axes={True: 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.depth,
            )
            x, stacked = scanned(block(name="layers"), x, mask, bias)
            hidden_states += [stacked[i] for i in range(self.depth)]
        else:
            for i in range(self.depth):
                x = run(block(name=f"layer_{i}"), x, mask, bias=bias)
                hidden_states.append(x)
        if self.pre_ln and self.final_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="final_ln")(x)
        return x, tuple(hidden_states)


def stack_layers(encoder_params: dict, depth: int) -> dict:
    """Encoder params with `layer_0` .. `layer_{depth-1}` -> the scanned layout: one `layers` subtree whose
    leaves have a leading layer axis. Other entries (final_ln) are kept; numpy in, numpy out."""
    names = [f"layer_{i}" for i in range(depth)]
    missing = [n for n in names if n not in encoder_params]
    extra = [k for k in encoder_params if k.startswith("layer") and k not in names]
    if missing or extra:
        raise ValueError(
            f"stack_layers(depth={depth}): missing {missing}, unexpected {extra} in encoder params"
        )
    rest = {k: v for k, v in encoder_params.items() if k not in names}
    return rest | {"layers": jax.tree.map(_stack, *[encoder_params[n] for n in names])}


def unstack_layers(encoder_params: dict, depth: int) -> dict:
    """The inverse of stack_layers: `layers` (leading axis `depth`) -> `layer_0` .. `layer_{depth-1}`."""
    if "layers" not in encoder_params:
        raise ValueError(f"unstack_layers: no `layers` in encoder params (keys {sorted(encoder_params)})")
    layers = encoder_params["layers"]
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(layers)}
    if sizes != {depth}:
        raise ValueError(f"unstack_layers(depth={depth}): stacked params have leading axes {sorted(sizes)}")
    rest = {k: v for k, v in encoder_params.items() if k != "layers"}
    return rest | {f"layer_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], layers) for i in range(depth)}


def _stack(*leaves: jax.Array) -> jax.Array:
    return np.stack(leaves) if all(isinstance(x, np.ndarray) for x in leaves) else jnp.stack(leaves)


# Encoder fields that the modality encoders (mmjax.encoders) declare under the same names.
SHARED_ENCODER_FIELDS = (
    "depth",
    "num_heads",
    "mlp_dim",
    "dropout_rate",
    "activation",
    "layer_norm_eps",
    "scan",
    "remat",
    "dtype",
    "attention",
)


def encoder_stack(module: nn.Module, **fields) -> Encoder:
    """The Encoder named `encoder` of a modality encoder: SHARED_ENCODER_FIELDS read from `module`, `fields`
    (pre_ln, final_ln, causal) given explicitly."""
    return Encoder(**{f: getattr(module, f) for f in SHARED_ENCODER_FIELDS}, **fields, name="encoder")
