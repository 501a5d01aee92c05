"""ViT image encoder: patches + [CLS] + learned positions -> transformer."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import ClsToken, PatchEmbedding, PositionEmbedding
from mmjax.nn.transformer import Encoder


class ViTEncoder(nn.Module):
    """Encodes images [B, H, W, C]; H and W must be divisible by `patch_size`; pooled = [CLS].

    The position table is sized by the image at init. Returns ((tokens [B, 1 + N, width], mask all True),
    aux) with aux keys `img/tokens`, `img/pooled`.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True

    @nn.compact
    def __call__(
        self, image: jax.Array, *, deterministic: bool
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        _, height, width, _ = image.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {(height, width)} is not divisible by patch_size={self.patch_size}")
        p = self.patch_size
        x = PatchEmbedding((p, p), self.width, name="patch_embedding")(image)
        x = ClsToken(name="cls")(x)
        x = PositionEmbedding(x.shape[1], name="position_embedding")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = jnp.ones(x.shape[:2], dtype=bool)
        x, _ = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.dropout_rate, self.pre_ln, name="encoder"
        )(x, mask, deterministic=deterministic)
        return (x, mask), {"img/tokens": x, "img/pooled": x[:, 0]}
