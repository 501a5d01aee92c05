"""AST-style spectrogram encoder: 2-D (time, frequency) patches + [CLS] + learned positions -> transformer."""

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import ClsToken, PatchEmbedding, PositionEmbedding
from mmjax.nn.transformer import Encoder


def patch_mask(audio_mask: jax.Array, patch_time: int, num_freq_patches: int) -> jax.Array:
    """Frame mask [B, T] -> patch mask [B, T/patch_time * num_freq_patches] (time-major, like the patches).

    A patch is valid if any of its frames is valid.
    """
    valid = einops.reduce(audio_mask.astype(bool), "b (t p) -> b t", "max", p=patch_time)
    return einops.repeat(valid, "b t -> b (t f)", f=num_freq_patches)


class SpectrogramEncoder(nn.Module):
    """Encodes features [B, T, F] with a frame mask [B, T]; pooled = [CLS].

    Padded frames are zeroed and patches without a valid frame are masked in attention. T and F must be
    divisible by `patch_time` and `patch_freq`. Returns (tokens [B, 1 + N, width], aux)
    with aux keys `aud/tokens`, `aud/mask` (the valid tokens, [B, 1 + N]), `aud/pooled`.
    """

    patch_time: int
    patch_freq: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True

    @nn.compact
    def __call__(
        self, audio: jax.Array, audio_mask: jax.Array, *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        _, frames, mels = audio.shape
        if frames % self.patch_time:
            raise ValueError(f"audio frames T={frames} are not divisible by patch_time={self.patch_time}")
        if mels % self.patch_freq:
            raise ValueError(f"audio features F={mels} are not divisible by patch_freq={self.patch_freq}")
        audio = jnp.where(audio_mask[..., None], audio, 0.0)
        patches = PatchEmbedding((self.patch_time, self.patch_freq), self.width, name="patch_embedding")
        x = ClsToken(name="cls")(patches(audio[..., None]))
        x = PositionEmbedding(x.shape[1], name="position_embedding")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = patch_mask(audio_mask, self.patch_time, mels // self.patch_freq)
        mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
        x, _ = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.dropout_rate, self.pre_ln, name="encoder"
        )(x, mask, deterministic=deterministic)
        return x, {"aud/tokens": x, "aud/mask": mask, "aud/pooled": x[:, 0]}
