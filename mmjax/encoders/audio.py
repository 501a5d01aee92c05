"""Audio encoders: AST spectrogram patches + [CLS] + learned positions; Whisper's conv-stem encoder."""

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.nn.embeddings import ClsToken, PatchEmbedding, PositionEmbedding, windows
from mmjax.nn.transformer import encoder_stack, gelu


def patch_mask(
    frame_mask: jax.Array,
    patch_time: int,
    num_freq_patches: int,
    time_stride: int | None = None,
    freq_major: bool = False,
) -> jax.Array:
    """Frame mask [B, T] -> patch mask [B, num_time_patches * num_freq_patches], in the patches' order.

    A patch is valid if any of its frames is valid; time patches start every `time_stride` frames
    (default: `patch_time`) and a remainder too short for a patch is dropped.
    """
    valid = windows(frame_mask.astype(bool), 1, patch_time, time_stride or patch_time).any(axis=-1)
    pattern = "b t -> b (f t)" if freq_major else "b t -> b (t f)"
    return einops.repeat(valid, pattern, f=num_freq_patches)


def covered(length: int, patch: int, stride: int) -> int:
    """How much of `length` strided patches cover: the rest is dropped, as by a strided convolution."""
    return (length - patch) // stride * stride + patch


class SpectrogramEncoder(nn.Module):
    """Encodes spectrograms `input_values` [B, T, F] with an optional frame mask `attention_mask` [B, T].

    Padded frames are zeroed and patches without a valid frame are masked in attention. Without strides,
    T and F must be divisible by `patch_time` and `patch_freq`; with strides, patches may overlap and a
    remainder is dropped (HF AST). The position table is sized for `max_frames` x `mels` (default: the
    input at init; other feature counts fail); with time-major patches (freq_major=False), shorter inputs
    use its first positions, so batches trimmed to a shorter length bucket (mmjax.data.pipeline.trim_audio)
    give the same result as padded ones.
    Returns (tokens [B, prefix + N, width], aux); prefix is [CLS] (and the distillation
    token); aux keys (after `aux_prefix`): `tokens`, `mask` (the valid tokens), `pooled` and `hidden_states`
    (embedding output, then every layer's output before the final LayerNorm).
    """

    patch_time: int
    patch_freq: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    time_stride: int | None = None  # None: patch_time (non-overlapping); smaller: overlapping (AST: 10)
    freq_stride: int | None = None  # None: patch_freq
    freq_major: bool = False  # patch order: False time-major; True frequency-major (HF AST)
    distillation_token: bool = False  # True: a learned token after [CLS] (HF AST)
    pooling: str = "cls"  # "cls": [CLS]; "cls_distillation": mean of [CLS] and distillation token (AST)
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True  # False: attention without query/value biases (HF AST qkv_bias=False)
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder: nn.scan over layers (params `layers`)
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES)
    dtype: str = "float32"  # compute dtype of the transformer blocks: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)
    max_frames: int | None = None  # frames the position table covers (None: the init input's)
    mels: int | None = None  # features per frame the position table covers (None: the init input's)
    aux_prefix: str = "aud/"

    def num_tokens(self, frames: int, mels: int) -> int:
        """Positions in the table: the tokens of `max_frames` (else of `frames`) frames, with the prefix."""
        if self.max_frames is not None and frames != self.max_frames and self.freq_major:
            raise ValueError(f"frequency-major patches need all {self.max_frames} frames, got {frames}")
        if self.max_frames is not None and frames > self.max_frames:
            raise ValueError(f"audio has {frames} frames, more than max_frames={self.max_frames}")
        if self.mels is not None and mels != self.mels:
            raise ValueError(f"audio has {mels} features per frame, not mels={self.mels}")
        frames = self.max_frames or frames
        time_patches = (frames - self.patch_time) // (self.time_stride or self.patch_time) + 1
        freq_patches = (mels - self.patch_freq) // (self.freq_stride or self.patch_freq) + 1
        return 1 + self.distillation_token + time_patches * freq_patches

    @nn.compact
    def __call__(
        self, input_values: jax.Array, attention_mask: jax.Array | None = None, *, deterministic: bool = True
    ) -> tuple[jax.Array, dict]:
        batch, frames, mels = input_values.shape
        if self.pooling not in ("cls", "cls_distillation"):
            raise ValueError(f"pooling={self.pooling!r} is not 'cls' or 'cls_distillation'")
        if self.pooling == "cls_distillation" and not self.distillation_token:
            raise ValueError("pooling='cls_distillation' needs distillation_token=True")
        time_stride = self.time_stride or self.patch_time
        freq_stride = self.freq_stride or self.patch_freq
        if self.time_stride is None and frames % self.patch_time:
            raise ValueError(f"audio frames T={frames} are not divisible by patch_time={self.patch_time}")
        if self.freq_stride is None and mels % self.patch_freq:
            raise ValueError(f"audio features F={mels} are not divisible by patch_freq={self.patch_freq}")
        if frames < self.patch_time or mels < self.patch_freq:
            raise ValueError(
                f"audio (T, F)={(frames, mels)} is smaller than (patch_time, patch_freq)="
                f"{(self.patch_time, self.patch_freq)}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((batch, frames), bool)
        audio = jnp.where(attention_mask[..., None], input_values, 0.0)
        kept = covered(frames, self.patch_time, time_stride), covered(mels, self.patch_freq, freq_stride)
        audio = audio[:, : kept[0], : kept[1]]
        patch, stride = (self.patch_time, self.patch_freq), (time_stride, freq_stride)
        if self.freq_major:
            audio, patch, stride = jnp.swapaxes(audio, 1, 2), patch[::-1], stride[::-1]
        x = PatchEmbedding(patch, self.width, stride, name="patch_embedding")(audio[..., None])
        if self.distillation_token:
            x = ClsToken(name="distillation")(x)
        x = ClsToken(name="cls")(x)
        x = PositionEmbedding(self.num_tokens(frames, mels), name="position_embedding")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        num_freq_patches = (mels - self.patch_freq) // freq_stride + 1
        mask = patch_mask(attention_mask, self.patch_time, num_freq_patches, time_stride, self.freq_major)
        num_prefix = 1 + self.distillation_token
        mask = jnp.concatenate([jnp.ones((batch, num_prefix), bool), mask], axis=1)
        encoder = encoder_stack(self, pre_ln=self.pre_ln, qkv_bias=self.qkv_bias)
        x, hidden_states = encoder(x, mask, deterministic=deterministic)
        pooled = x[:, 0] if self.pooling == "cls" else (x[:, 0] + x[:, 1]) / 2
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        return x, {self.aux_prefix + k: v for k, v in aux.items()}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table [length, channels]: sines, then cosines, of geometric timescales 1..max."""
    if channels % 2:
        raise ValueError(f"sinusoid positions need an even width, got {channels}")
    rates = np.exp(-np.log(max_timescale) / (channels // 2 - 1) * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * rates[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sinusoid_init(key: jax.Array, shape: tuple[int, int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """A flax initialiser (the key is unused) for a [length, channels] table of Whisper's sinusoids."""
    return jnp.asarray(sinusoids(*shape), dtype)


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder on log-mel `input_features` [B, n_mels, T] (HF's layout; [B, T, n_mels] with
    channels_first=False), T <= 2 max_positions, with an optional frame mask `attention_mask` [B, T].

    Conv1d(k=3) -> GELU -> Conv1d(k=3, stride 2) -> GELU halves the frames; positions (a param initialised
    to Whisper's sinusoids; HF keeps it frozen) are added, then a pre-LN transformer with a final LayerNorm.
    Token t is centred on frame 2t and is valid where that frame is. Without a mask this is exactly HF's
    encoder. With one, padded frames are zeroed, padded tokens are masked in attention and left out of the
    pooled mean, so valid tokens do not depend on the padding; HF's encoder ignores its attention_mask.
    Returns (tokens [B, ceil(T / 2), width], aux); aux keys (after `aux_prefix`): `tokens`, `mask` (the valid
    tokens), `pooled` (the mean valid token) and `hidden_states` (HF's order: embeddings, every layer's
    output, the last one after the final LayerNorm).
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_positions: int = 1500  # HF max_source_positions: 30 s of 10 ms frames, halved by the stem
    dropout_rate: float = 0.0
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS
    layer_norm_eps: float = 1e-5
    channels_first: bool = True  # True: [B, n_mels, T] (HF input_features); False: [B, T, n_mels] (batches)
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder: nn.scan over layers (params `layers`)
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES)
    dtype: str = "float32"  # compute dtype of the transformer blocks: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)
    aux_prefix: str = "aud/"

    @nn.compact
    def __call__(
        self,
        input_features: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[jax.Array, dict]:
        x = jnp.swapaxes(input_features, 1, 2) if self.channels_first else input_features
        frames = x.shape[1]
        if frames > 2 * self.max_positions:
            raise ValueError(
                f"input_features has {frames} frames, more than 2 * max_positions={2 * self.max_positions}"
            )
        if attention_mask is not None:
            x = jnp.where(attention_mask[..., None].astype(bool), x, 0.0)
        x = gelu(nn.Conv(self.width, (3,), padding=((1, 1),), name="conv1")(x))
        x = gelu(nn.Conv(self.width, (3,), strides=(2,), padding=((1, 1),), name="conv2")(x))
        table = self.param("position_embedding", sinusoid_init, (self.max_positions, self.width))
        x = x + table[None, : x.shape[1]].astype(x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        if attention_mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        else:
            mask = attention_mask[:, ::2].astype(bool)  # token t is centred on frame 2t
        encoder = encoder_stack(self, pre_ln=True)
        x, hidden_states = encoder(x, mask, deterministic=deterministic)
        hidden_states = (*hidden_states[:-1], x)
        count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
        pooled = jnp.where(mask[..., None], x, 0.0).sum(axis=1) / count
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        return x, {self.aux_prefix + k: v for k, v in aux.items()}
