"""NaFlex ViT (SigLIP 2's vision tower): images of any size and aspect ratio as padded patch sequences."""

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import INIT, resize_to_shapes
from mmjax.nn.pooling import AttentionPool
from mmjax.nn.transformer import encoder_stack

POOLS = ("map", "mean")  # NaFlexEncoder.pool


class NaFlexEncoder(nn.Module):
    """Encodes patch sequences [B, N, p * p * C] (each image cut into p x p patches, row-major over its own
    (h, w) patch grid, each flattened in (p, p, C) order: HF's Siglip2ImageProcessor layout; padded to N)
    with their mask [B, N] and grids `spatial_shapes` [B, 2] = (h, w), h * w <= N; or images [B, H, W, C]
    (mmjax's image batches), cut into patches here, all valid.

    The learned position table covers a square grid of `num_patches` positions; every image gets it resized
    to its own grid (mmjax.nn.embeddings.resize_to_shapes). Padding tokens are masked as attention keys.
    Returns (tokens [B, N, width] after the final LayerNorm, aux); aux keys (after `aux_prefix`): `tokens`,
    `mask`, `pooled` (the attention-pooling head over the unmasked tokens, or their mean with pool="mean")
    and `hidden_states` (embedding output, then every layer's output).
    """

    patch_size: int
    num_patches: int  # positions in the learned table, a square number (HF num_patches)
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS
    layer_norm_eps: float = 1e-6
    pool: str = "map"  # map (attention-pooling head) | mean (mean of the unmasked tokens)
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder: nn.scan over layers (params `layers`)
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES)
    dtype: str = "float32"  # compute dtype of the transformer blocks: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)
    aux_prefix: str = "img/"

    @nn.compact
    def __call__(
        self,
        pixel_values: jax.Array,
        pixel_attention_mask: jax.Array | None = None,
        spatial_shapes: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[jax.Array, dict]:
        if pixel_values.ndim == 4:
            pixel_values, pixel_attention_mask, spatial_shapes = self.patchify(pixel_values)
        elif pixel_attention_mask is None or spatial_shapes is None:
            raise ValueError("patch sequences need their pixel_attention_mask and spatial_shapes")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} is not one of {POOLS}")
        grid = round(self.num_patches**0.5)
        if grid * grid != self.num_patches:
            raise ValueError(f"num_patches={self.num_patches} is not a square number")
        if pixel_values.shape[-1] % self.patch_size**2:
            raise ValueError(
                f"patches of {pixel_values.shape[-1]} values: not p * p * C with patch_size={self.patch_size}"
            )
        x = nn.Dense(self.width, name="patch_embedding")(pixel_values)
        table = self.param("position_embedding", INIT, (self.num_patches, self.width))
        x = x + resize_to_shapes(table.reshape(grid, grid, -1), spatial_shapes, x.shape[1]).astype(x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = pixel_attention_mask.astype(bool)
        encoder = encoder_stack(self, pre_ln=True, final_ln=True)
        x, hidden_states = encoder(x, mask, deterministic=deterministic)
        if self.pool == "map":
            head = AttentionPool(
                self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps, name="head"
            )
            pooled = head(x, mask)
        else:
            weights = mask[..., None].astype(x.dtype)
            pooled = (x * weights).sum(axis=1) / weights.sum(axis=1)
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        return x, {self.aux_prefix + k: v for k, v in aux.items()}

    def patchify(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Images [B, H, W, C] -> (patches [B, h * w, p * p * C], mask (all valid), spatial_shapes)."""
        p = self.patch_size
        batch, height, width, _ = images.shape
        if height % p or width % p:
            raise ValueError(f"image size {(height, width)} is not divisible by patch_size={p}")
        patches = einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
        shapes = jnp.broadcast_to(jnp.array([height // p, width // p], jnp.int32), (batch, 2))
        return patches, jnp.ones(patches.shape[:2], bool), shapes
