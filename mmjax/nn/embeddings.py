"""Token-level embeddings: learned positions, a [CLS] token and 2-D patch embeddings."""

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

INIT = nn.initializers.normal(stddev=0.02)


class PositionEmbedding(nn.Module):
    """Adds learned position embeddings for up to `max_len` positions to x [B, L, D].

    Positions are 0..L-1 unless `positions` [B, L] (int ids, e.g. RoBERTa's padding-aware ones) is given.
    """

    max_len: int

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        table = self.param("embedding", INIT, (self.max_len, x.shape[-1])).astype(x.dtype)
        if positions is None:
            return x + table[None, :length]
        return x + jnp.take(table, positions, axis=0)


class ClsToken(nn.Module):
    """Prepends a learned [CLS] token: [B, N, D] -> [B, N + 1, D]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cls = self.param("cls", nn.initializers.zeros, (x.shape[-1],)).astype(x.dtype)
        return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)


def windows(x: jax.Array, axis: int, size: int, stride: int) -> jax.Array:
    """Cuts `axis` (length n) into (n - size) // stride + 1 windows: [.., n, ..] -> [.., count, size, ..]."""
    count = (x.shape[axis] - size) // stride + 1
    index = jnp.arange(count)[:, None] * stride + jnp.arange(size)[None, :]
    return jnp.take(x, index, axis=axis)


class PatchEmbedding(nn.Module):
    """Cuts x [B, H, W, C] into (ph, pw) patches and embeds each: -> [B, num_patches, width].

    Patches are ordered row-major over the (H, W) grid and flattened in (ph, pw, C) order. With a
    `stride` smaller than the patch they overlap (AST), and a remainder too small for a patch is dropped,
    as by a strided convolution; without one, H and W must be divisible by the patch size.
    """

    patch_size: tuple[int, int]
    width: int
    stride: tuple[int, int] | None = None  # None: the patch size (non-overlapping)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.patch_size
        if self.stride is None or tuple(self.stride) == (ph, pw):
            if x.shape[1] % ph or x.shape[2] % pw:
                raise ValueError(f"input {x.shape[1:3]} is not divisible by patch_size {self.patch_size}")
            patches = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=ph, q=pw)
        else:
            if x.shape[1] < ph or x.shape[2] < pw:
                raise ValueError(f"input {x.shape[1:3]} is smaller than patch_size {self.patch_size}")
            grid = windows(windows(x, 1, ph, self.stride[0]), 3, pw, self.stride[1])  # [B, h, p, w, q, C]
            patches = einops.rearrange(grid, "b h p w q c -> b (h w) (p q c)")
        return nn.Dense(self.width, use_bias=self.use_bias, name="proj")(patches)
