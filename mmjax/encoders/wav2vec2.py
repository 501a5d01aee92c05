"""Raw-waveform speech encoders: wav2vec 2.0, HuBERT and WavLM (HF Wav2Vec2Model, HubertModel, WavLMModel).

A strided Conv1d stack turns the waveform into frames (20 ms at 16 kHz with the default kernels), a
LayerNorm + Dense projects them to the model width, a grouped convolution over time adds relative positions,
and a transformer encodes the frames. `stable_layer_norm` picks HF's two layouts: False (base models) puts a
LayerNorm before post-LN layers, True (large models) uses pre-LN layers and a final LayerNorm. WavLM's layers
add a gated relative position bias to the attention logits (GatedRelativeAttention).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.nn.attention import compute_dtype
from mmjax.nn.transformer import ACTIVATIONS, MlpBlock, encoder_stack

VARIANTS = ("wav2vec2", "hubert", "wavlm")  # Wav2Vec2Encoder.variant


def conv_output_lengths(lengths: jax.Array, kernels: tuple[int, ...], strides: tuple[int, ...]) -> jax.Array:
    """Frames unpadded strided convolutions make of `lengths` inputs (HF _get_feat_extract_output_lengths)."""
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = (lengths - kernel) // stride + 1
    return lengths


def receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Samples one output frame of the conv stack sees: the shortest waveform that gives a frame."""
    field = 1
    for kernel, stride in zip(kernels[::-1], strides[::-1], strict=True):
        field = (field - 1) * stride + kernel
    return field


def length_mask(lengths: jax.Array, frames: int) -> jax.Array:
    """[B, frames] True at the first `lengths` frames of each example."""
    return jnp.arange(frames)[None, :] < lengths[:, None]


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class FeatureEncoder(nn.Module):
    """HF's feature extractor: unpadded strided Conv1d layers over the waveform [B, S] -> [B, frames, C].

    norm "group": GroupNorm with one group per channel (over time, padding included, as HF) after the first
    conv only; "layer": LayerNorm over channels after every conv. Both with torch's eps 1e-5.
    """

    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool = False
    norm: str = "group"  # group | layer
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS

    @nn.compact
    def __call__(self, waveform: jax.Array) -> jax.Array:
        if self.norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={self.norm!r} is not 'group' or 'layer'")
        activation = activation_fn(self.activation)
        x = waveform[..., None]
        layers = zip(self.conv_dim, self.conv_kernel, self.conv_stride, strict=True)
        for i, (dim, kernel, stride) in enumerate(layers):
            conv = nn.Conv(
                dim, (kernel,), (stride,), padding="VALID", use_bias=self.conv_bias, name=f"conv_{i}"
            )
            x = conv(x)
            if self.norm == "layer":
                x = nn.LayerNorm(1e-5, use_fast_variance=False, name=f"norm_{i}")(x)
            elif i == 0:
                x = nn.GroupNorm(num_groups=dim, epsilon=1e-5, use_fast_variance=False, name=f"norm_{i}")(x)
            x = activation(x)
        return x


class PositionalConv(nn.Module):
    """HF's convolutional position embedding: activation(grouped Conv1d over time) of the frames [B, T, D].

    The kernel has `kernel_size` taps with "same" padding (an even kernel makes one frame too many, which
    HF drops at the end). With `weight_norm` the kernel is `scale * kernel / |kernel|`, the norm taken per
    tap over both channel axes (torch weight_norm with dim=2); `scale` starts at the kernel's norm. With
    `batch_norm` (HuBERT's conv_pos_batch_norm) a BatchNorm precedes a plain conv: running statistics in
    `batch_stats`, batch statistics when not `deterministic`.
    """

    kernel_size: int
    groups: int
    activation: str = "gelu"
    weight_norm: bool = True
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        width = x.shape[-1]
        if width % self.groups:
            raise ValueError(f"num_conv_pos_embedding_groups={self.groups} must divide the width {width}")
        if self.batch_norm:
            norm = nn.BatchNorm(
                use_running_average=deterministic, momentum=0.9, epsilon=1e-5, name="batch_norm"
            )
            x = norm(x)  # torch's BatchNorm1d: momentum 0.1 (flax counts 1 - 0.1), eps 1e-5
        shape = (self.kernel_size, width // self.groups, width)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        if self.weight_norm:

            def tap_norm(w: jax.Array) -> jax.Array:
                return jnp.sqrt(jnp.sum(w * w, axis=(1, 2)))

            scale = self.param("scale", lambda _: tap_norm(kernel))
            kernel = kernel * (scale / tap_norm(kernel))[:, None, None]
        bias = self.param("bias", nn.initializers.zeros, (width,))
        pad = self.kernel_size // 2
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (1,),
            [(pad, pad)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )
        y = (y + bias)[:, : x.shape[1]]
        return activation_fn(self.activation)(y)


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """WavLM's bucket of every (query, key) offset [length, length]: half the buckets per direction, exact
    for offsets below a quarter of them, then logarithmic up to `max_distance` (float32, as torch)."""
    half = num_buckets // 2
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    distance = np.abs(offset)
    exact = half // 2
    ratio = np.maximum(distance, 1).astype(np.float32) / exact
    scaled = np.log(ratio) / math.log(max_distance / exact) * (half - exact)
    large = np.minimum((exact + scaled).astype(np.int64), half - 1)
    return (offset > 0) * half + np.where(distance < exact, distance, large)


class GatedRelativeAttention(nn.Module):
    """WavLM's self-attention: logits get a relative position bias scaled per query and head by a gate.

    The bias [H, T, T] comes from a bucket embedding (`rel_attn_embed`) in the first layer, which receives
    `position_bias=None`, and is passed on to the others. Each query's gate is computed from its input
    vector split into heads: a Dense(head_dim -> 8), summed in two groups of four, gives sigmoids a and b;
    gate = a * (b * gru_rel_pos_const - 1) + 2. The key projection has no bias (softmax cancels it).
    Returns (output, the ungated bias for the next layer).
    """

    num_heads: int
    num_buckets: int = 320
    max_distance: int = 800
    dropout_rate: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, position_bias: jax.Array | None, *, deterministic: bool
    ) -> tuple[jax.Array, jax.Array]:
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the width {width}")
        head_dim = width // self.num_heads
        dtype = compute_dtype(self.dtype)
        if position_bias is None:
            table = nn.Embed(self.num_buckets, self.num_heads, name="rel_attn_embed")
            buckets = relative_buckets(length, self.num_buckets, self.max_distance)
            position_bias = jnp.moveaxis(table(jnp.asarray(buckets)), -1, 0)
        heads = x.reshape(batch, length, self.num_heads, head_dim)
        gates = nn.Dense(8, name="gru_rel_pos_linear")(heads).reshape(batch, length, self.num_heads, 2, 4)
        gate_a, gate_b = jnp.moveaxis(jax.nn.sigmoid(gates.sum(-1)), -1, 0)  # [B, T, H] each
        const = self.param("gru_rel_pos_const", nn.initializers.ones, (self.num_heads,))
        gate = gate_a * (gate_b * const - 1.0) + 2.0
        bias = jnp.swapaxes(gate, 1, 2)[..., None] * position_bias  # [B, H, Tq, Tk]

        def project(name: str, use_bias: bool) -> jax.Array:
            dense = nn.DenseGeneral((self.num_heads, head_dim), use_bias=use_bias, dtype=dtype, name=name)
            return dense(x)

        q = project("query", True) * (1 / math.sqrt(head_dim))
        k, v = project("key", False), project("value", True)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) + bias
        key_mask = mask[:, None, None, :]
        logits = jnp.where(key_mask, logits, jnp.finfo(logits.dtype).min)
        weights = jnp.where(key_mask, jax.nn.softmax(logits, axis=-1), 0.0)
        self.sow("intermediates", "attention", weights)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        out = nn.DenseGeneral(width, axis=(-2, -1), dtype=dtype, name="out")(out)
        return out, position_bias


class WavLMLayer(nn.Module):
    """A WavLM encoder layer: GatedRelativeAttention and an MLP, pre-LN or post-LN (as TransformerBlock)."""

    num_heads: int
    mlp_dim: int
    num_buckets: int
    max_distance: int
    pre_ln: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, position_bias: jax.Array | None, *, deterministic: bool
    ) -> tuple[jax.Array, jax.Array]:
        attn = GatedRelativeAttention(
            self.num_heads,
            self.num_buckets,
            self.max_distance,
            self.dropout_rate,
            self.dtype,
            name="self_attn",
        )
        mlp = MlpBlock(self.mlp_dim, self.dropout_rate, self.activation, self.dtype, name="mlp")
        attn_ln = nn.LayerNorm(self.layer_norm_eps, name="self_attn_ln")
        mlp_ln = nn.LayerNorm(self.layer_norm_eps, name="mlp_ln")
        drop = nn.Dropout(self.dropout_rate)
        if self.pre_ln:
            h, position_bias = attn(attn_ln(x), mask, position_bias, deterministic=deterministic)
            x = x + drop(h, deterministic=deterministic)
            return x + drop(
                mlp(mlp_ln(x), deterministic=deterministic), deterministic=deterministic
            ), position_bias
        h, position_bias = attn(x, mask, position_bias, deterministic=deterministic)
        x = attn_ln(x + drop(h, deterministic=deterministic))
        return mlp_ln(
            x + drop(mlp(x, deterministic=deterministic), deterministic=deterministic)
        ), position_bias


class WavLMStack(nn.Module):
    """`depth` WavLMLayers sharing the first layer's position bias; returns (output, hidden_states) as
    mmjax.nn.transformer.Encoder does (with pre_ln, a final LayerNorm that the hidden states precede)."""

    depth: int
    num_heads: int
    mlp_dim: int
    num_buckets: int
    max_distance: int
    pre_ln: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, deterministic: bool
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        hidden_states, position_bias = [x], None
        for i in range(self.depth):
            layer = WavLMLayer(
                self.num_heads,
                self.mlp_dim,
                self.num_buckets,
                self.max_distance,
                self.pre_ln,
                self.activation,
                self.layer_norm_eps,
                self.dropout_rate,
                self.dtype,
                name=f"layer_{i}",
            )
            x, position_bias = layer(x, mask, position_bias, deterministic=deterministic)
            hidden_states.append(x)
        if self.pre_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="final_ln")(x)
        return x, tuple(hidden_states)


class Adapter(nn.Module):
    """HF's adapter (add_adapter, for speech-to-text decoders): an optional Dense + LayerNorm (eps 1e-5) to
    `width`, then `num_layers` Conv1d(kernel, stride, padding 1) layers each halving 2 * width channels by a
    GLU. Padded frames are not masked in between, as in HF."""

    width: int
    num_layers: int
    kernel_size: int = 3
    stride: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.width:
            x = nn.LayerNorm(1e-5, name="proj_ln")(nn.Dense(self.width, name="proj")(x))
        for i in range(self.num_layers):
            conv = nn.Conv(
                2 * self.width, (self.kernel_size,), (self.stride,), padding=((1, 1),), name=f"conv_{i}"
            )
            x = nn.glu(conv(x), axis=-1)
        return x


class Wav2Vec2Encoder(nn.Module):
    """Encodes waveforms `input_values` [B, S] (HF's input: 16 kHz, normalised as its feature extractor does)
    with an optional sample mask `attention_mask` [B, S] (1 = real audio; only its count per example matters).

    The mask is reduced to frames as HF does (valid frames: those the unpadded conv stack makes of the
    example's sample count); padded frames are zeroed before the position conv and masked as attention keys.
    The waveform is used as given (HF's GroupNorm statistics include padded samples). An example too short
    for one frame has no valid frame and a zero `pooled` (HF's mask would wrap around: all frames valid).
    Returns (tokens [B, frames, width], aux); aux keys (after `aux_prefix`): `tokens` (after the adapter,
    if any), `mask` (their valid frames), `pooled` (the mean of the valid tokens), `hidden_states` (HF's
    output_hidden_states: the input of every layer, then the last layer's output, before the final LayerNorm
    of `stable_layer_norm`) and `extract_features` (the conv features after the projection's LayerNorm).
    `variant` "wavlm" adds WavLM's gated relative position bias; "hubert" and "wav2vec2" compute the same and
    differ only in the options their checkpoints hold (HuBERT: no projection LayerNorm, BatchNorm before the
    position conv; wav2vec2: the adapter).
    """

    conv_dim: tuple[int, ...] = (512,) * 7  # conv stack: channels, kernels and strides per layer
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # group (first conv only) | layer (every conv)
    feat_extract_activation: str = "gelu"  # conv stack and position conv, a key of ACTIVATIONS
    feat_proj_layer_norm: bool = True  # LayerNorm before the projection (HuBERT may have none)
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"  # transformer MLP, a key of ACTIVATIONS
    layer_norm_eps: float = 1e-5
    stable_layer_norm: bool = False  # HF do_stable_layer_norm: pre-LN layers and a final LayerNorm
    num_conv_pos_embeddings: int = 128  # position conv kernel size
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False  # HuBERT: BatchNorm before a plain position conv (else weight norm)
    masked_spec_embed: bool = False  # HF's SpecAugment mask vector: kept as a param, unused at inference
    variant: str = "wav2vec2"  # one of VARIANTS; wavlm: gated relative position bias
    num_buckets: int = 320  # wavlm: relative position buckets and the largest distance they resolve
    max_bucket_distance: int = 800
    add_adapter: bool = False  # the Adapter after the encoder (HF add_adapter)
    output_hidden_size: int | None = None  # adapter width (None: width)
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    dropout_rate: float = 0.0
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder (not with variant wavlm)
    remat: str = ""
    dtype: str = "float32"  # compute dtype of the transformer layers: float32 | bfloat16
    attention: str = "xla"  # xla | fused (not with variant wavlm)
    aux_prefix: str = "aud/"

    def frame_lengths(self, lengths: jax.Array, adapter: bool = False) -> jax.Array:
        """Valid frames of examples with `lengths` samples as HF computes them: those of the conv stack, or
        with `adapter` those of the adapter, which HF counts as if its convs had kernel 1 and no padding."""
        lengths = conv_output_lengths(lengths, self.conv_kernel, self.conv_stride)
        if adapter:
            layers = self.num_adapter_layers
            lengths = conv_output_lengths(lengths, (1,) * layers, (self.adapter_stride,) * layers)
        return lengths

    def transformer(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> tuple:
        """The layer stack named `encoder`: mmjax's Encoder, or WavLMStack for variant wavlm."""
        if self.variant != "wavlm":
            return encoder_stack(self, pre_ln=self.stable_layer_norm)(x, mask, deterministic=deterministic)
        if self.scan or self.remat or self.attention != "xla":
            raise ValueError(
                f"variant='wavlm' supports neither scan, remat nor attention={self.attention!r}: "
                "use scan=False, remat='' and attention='xla'"
            )
        stack = WavLMStack(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.num_buckets,
            self.max_bucket_distance,
            self.stable_layer_norm,
            self.activation,
            self.layer_norm_eps,
            self.dropout_rate,
            self.dtype,
            name="encoder",
        )
        return stack(x, mask, deterministic=deterministic)

    @nn.compact
    def __call__(
        self, input_values: jax.Array, attention_mask: jax.Array | None = None, *, deterministic: bool = True
    ) -> tuple[jax.Array, dict]:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not one of {VARIANTS}")
        batch, samples = input_values.shape
        if samples < receptive_field(self.conv_kernel, self.conv_stride):
            raise ValueError(
                f"input_values has {samples} samples, fewer than the "
                f"{receptive_field(self.conv_kernel, self.conv_stride)} one frame needs"
            )
        features = FeatureEncoder(
            self.conv_dim,
            self.conv_kernel,
            self.conv_stride,
            self.conv_bias,
            self.feat_extract_norm,
            self.feat_extract_activation,
            name="feature_encoder",
        )(input_values)
        frames = features.shape[1]
        lengths = jnp.full((batch,), samples) if attention_mask is None else attention_mask.sum(-1)
        mask = length_mask(self.frame_lengths(lengths), frames)
        if self.feat_proj_layer_norm:
            features = nn.LayerNorm(self.layer_norm_eps, name="feature_ln")(features)
        drop = nn.Dropout(self.dropout_rate)
        x = drop(nn.Dense(self.width, name="feature_proj")(features), deterministic=deterministic)
        if self.masked_spec_embed:
            self.param("masked_spec_embed", nn.initializers.uniform(1.0), (self.width,))
        x = jnp.where(mask[..., None], x, 0.0)
        position = PositionalConv(
            self.num_conv_pos_embeddings,
            self.num_conv_pos_embedding_groups,
            self.feat_extract_activation,
            weight_norm=not self.conv_pos_batch_norm,
            batch_norm=self.conv_pos_batch_norm,
            name="pos_conv",
        )
        x = x + position(x, deterministic=deterministic)
        if not self.stable_layer_norm:
            x = nn.LayerNorm(self.layer_norm_eps, name="embedding_ln")(x)
        x, hidden_states = self.transformer(drop(x, deterministic=deterministic), mask, deterministic)
        if self.add_adapter:
            adapter = Adapter(
                self.output_hidden_size or self.width,
                self.num_adapter_layers,
                self.adapter_kernel_size,
                self.adapter_stride,
                name="adapter",
            )
            x = adapter(x)
            mask = length_mask(self.frame_lengths(lengths, adapter=True), x.shape[1])
        count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
        pooled = jnp.where(mask[..., None], x, 0.0).sum(axis=1) / count
        aux = {
            "tokens": x,
            "mask": mask,
            "pooled": pooled,
            "hidden_states": hidden_states,
            "extract_features": features,
        }
        return x, {self.aux_prefix + k: v for k, v in aux.items()}
