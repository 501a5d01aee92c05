"""Token-level embeddings: learned positions (resizable over a patch grid), a [CLS] token and 2-D patch
embeddings."""

import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
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


def relative_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's (T5's bidirectional) bucket [L, L] of key j's offset from query i: half the buckets for keys
    before the query; per half, offsets below a quarter of num_buckets get a bucket each and farther ones
    log-spaced buckets, the last shared from `max_distance` on. In float32, as transformers computes it."""
    n = np.arange(length)[:, None] - np.arange(length)[None, :]
    half = num_buckets // 2
    exact = half // 2
    before = (n < 0) * half
    n = np.abs(n)
    ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact))
    scale = np.float32(math.log(max_distance / exact))
    far = exact + (ratio / scale * np.float32(half - exact)).astype(np.int64)
    return before + np.where(n < exact, n, np.minimum(far, half - 1))


class RelativePositionBias(nn.Module):
    """An attention-logit bias [1, H, L, L] looked up per relative-position bucket (relative_buckets)."""

    num_buckets: int
    num_heads: int

    @nn.compact
    def __call__(self, length: int) -> jax.Array:
        table = self.param("embedding", INIT, (self.num_buckets, self.num_heads))
        return einops.rearrange(table[relative_buckets(length, self.num_buckets)], "q k h -> 1 h q k")


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


# Position-table resizing along one axis (torch F.interpolate with sizes, align_corners=False).
POSITION_RESIZES = ("bicubic", "bicubic_antialias")


def cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient `a` (torch bicubic: -0.75; antialiased/PIL: -0.5)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """The [out_size, in_size] matrix of torch's bicubic resize along one axis, computed in float64 and
    returned as float32 (torch computes the weights in float32, which moves them by up to ~1e-6).

    Plain: source point scale * (i + 0.5) - 0.5 (scale = in/out), four taps with a=-0.75, indices clamped at
    the edges. antialias: taps within 2 * max(scale, 1) of the centre scale * (i + 0.5), the a=-0.5 kernel
    stretched by max(scale, 1), cut at the edges and renormalised (torch's _upsample_bicubic2d_aa).
    """
    scale = in_size / out_size
    out = np.arange(out_size)[:, None]
    if antialias:
        stretch = max(scale, 1.0)
        centre = scale * (out + 0.5)
        first = np.maximum(np.trunc(centre - 2 * stretch + 0.5), 0)
        stop = np.minimum(np.trunc(centre + 2 * stretch + 0.5), in_size)
        source = np.arange(in_size)[None, :]
        inside = (source >= first) & (source < stop)
        weights = np.where(inside, cubic((source - centre + 0.5) / stretch, -0.5), 0.0)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    point = scale * (out + 0.5) - 0.5
    start = np.floor(point)
    taps = np.arange(-1, 3)[None, :]
    index = np.clip(start.astype(int) + taps, 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.broadcast_to(out, index.shape), index), cubic(point - start - taps, -0.75))
    return matrix.astype(np.float32)


def resize_grid(grid: jax.Array, shape: tuple[int, int], method: str) -> jax.Array:
    """A [h, w, D] grid of embeddings resized to `shape` as torch F.interpolate(mode="bicubic",
    align_corners=False, antialias=method == "bicubic_antialias") does, exactly: two einsums with the
    matrices of bicubic_matrix (jax.image.resize uses other cubic coefficients)."""
    if method not in POSITION_RESIZES:
        raise ValueError(f"position resize {method!r} is not one of {POSITION_RESIZES}")
    antialias = method == "bicubic_antialias"
    rows = jnp.asarray(bicubic_matrix(grid.shape[0], shape[0], antialias))
    cols = jnp.asarray(bicubic_matrix(grid.shape[1], shape[1], antialias))
    exact = jax.lax.Precision.HIGHEST
    grid = jnp.einsum("yi,ijd->yjd", rows, grid.astype(jnp.float32), precision=exact)
    return jnp.einsum("xj,yjd->yxd", cols, grid, precision=exact)


class GridPositionEmbedding(nn.Module):
    """Learned positions for `extra` leading tokens ([CLS]) and a `grid` x `grid` table for the patches, added
    to x [B, extra + h * w, D] of a (h, w) patch grid; another grid than the table's gets the table resized
    (resize_grid with `method`), as HF's interpolate_pos_encoding does for DINOv2 and SigLIP."""

    grid: int
    extra: int = 0
    method: str = "bicubic"  # one of POSITION_RESIZES

    @nn.compact
    def __call__(self, x: jax.Array, shape: tuple[int, int]) -> jax.Array:
        dim = x.shape[-1]
        table = self.param("embedding", INIT, (self.extra + self.grid**2, dim))
        patches = table[self.extra :]
        if tuple(shape) != (self.grid, self.grid):
            patches = resize_grid(patches.reshape(self.grid, self.grid, dim), shape, self.method)
            patches = patches.reshape(-1, dim)
        return x + jnp.concatenate([table[: self.extra], patches]).astype(x.dtype)[None]


def resize_to_shapes(table: jax.Array, shapes: jax.Array, length: int) -> jax.Array:
    """SigLIP 2's per-image positions: the square [g, g, D] `table` resized to each image's patch grid
    shapes[b] = (h, w) by a triangle filter widened when shrinking and renormalised (antialiased bilinear),
    laid out row-major over `length` tokens; tokens past h * w get position (0, 0). Returns [B, length, D]."""
    grid = table.shape[0]
    sizes = shapes.astype(jnp.float32)[:, None, :]  # [B, 1, 2]
    position = jnp.arange(length, dtype=jnp.float32)[None, :, None]  # [1, L, 1]
    row = jnp.floor(position / sizes[..., 1:])
    index = jnp.concatenate([row, position - row * sizes[..., 1:]], axis=-1)  # [B, L, 2]: (row, column)
    index = index * (position < sizes.prod(-1, keepdims=True))
    scale = grid / sizes
    centre = (index + 0.5) * scale - 0.5
    source = jnp.arange(grid, dtype=jnp.float32)
    weights = jnp.maximum(1 - jnp.abs(source - centre[..., None]) / jnp.maximum(scale, 1)[..., None], 0)
    weights = weights / weights.sum(-1, keepdims=True)  # [B, L, 2, g]
    exact = jax.lax.Precision.HIGHEST
    return jnp.einsum("bli,blj,ijd->bld", weights[..., 0, :], weights[..., 1, :], table, precision=exact)
