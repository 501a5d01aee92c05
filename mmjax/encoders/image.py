"""ViT image encoder: patches + [CLS] + learned positions (-> LayerNorm) -> transformer.

Defaults are HF's ViT; patch_bias=False, embedding_ln, final_ln=False and pooled_ln make CLIP's vision tower.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import ClsToken, PatchEmbedding, PositionEmbedding
from mmjax.nn.transformer import encoder_stack


class ViTEncoder(nn.Module):
    """Encodes images [B, H, W, C] ([B, C, H, W] with `channels_first`); H, W divisible by `patch_size`.

    The position table is sized by the image at init, so later images must have that size. Returns
    (tokens [B, 1 + N, width], aux); aux keys (after `aux_prefix`): `tokens`, `mask` (all True), `pooled`
    (the [CLS] token, through LayerNorm when `pooled_ln`, then Dense + tanh when `pooler`),
    `hidden_states` (embedding output, then every layer's output) and, with `projection_dim`, `embeds`
    (pooled through a bias-free Dense).
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS
    layer_norm_eps: float = 1e-6
    patch_bias: bool = True  # CLIP's patch convolution has no bias
    qkv_bias: bool = True  # False: attention without query/value biases (HF ViT qkv_bias=False)
    embedding_ln: bool = False  # LayerNorm on the embeddings (CLIP's pre_layrnorm)
    final_ln: bool = True  # pre_ln only: LayerNorm on the output tokens; CLIP normalises only the pooled
    pooled_ln: bool = False  # LayerNorm on the pooled [CLS] (CLIP's post_layernorm)
    pooler: bool = False  # HF's ViTPooler: pooled = tanh(Dense([CLS]))
    projection_dim: int | None = None  # CLIP's visual_projection: embeds = Dense(pooled), no bias
    channels_first: bool = False  # True: images are [B, C, H, W] (HF `pixel_values`)
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder: nn.scan over layers (params `layers`)
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES)
    dtype: str = "float32"  # compute dtype of the transformer blocks: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)
    aux_prefix: str = "img/"

    @nn.compact
    def __call__(self, pixel_values: jax.Array, *, deterministic: bool = True) -> tuple[jax.Array, dict]:
        image = jnp.moveaxis(pixel_values, 1, -1) if self.channels_first else pixel_values
        _, height, width, _ = image.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {(height, width)} is not divisible by patch_size={self.patch_size}")
        p = self.patch_size
        x = PatchEmbedding((p, p), self.width, use_bias=self.patch_bias, name="patch_embedding")(image)
        x = ClsToken(name="cls")(x)
        x = PositionEmbedding(x.shape[1], name="position_embedding")(x)
        if self.embedding_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="embedding_ln")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = jnp.ones(x.shape[:2], dtype=bool)
        encoder = encoder_stack(self, pre_ln=self.pre_ln, final_ln=self.final_ln, qkv_bias=self.qkv_bias)
        x, hidden_states = encoder(x, mask, deterministic=deterministic)
        pooled = x[:, 0]
        if self.pooled_ln:
            pooled = nn.LayerNorm(self.layer_norm_eps, name="pooled_ln")(pooled)
        if self.pooler:
            pooled = jnp.tanh(nn.Dense(self.width, name="pooler")(pooled))
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        if self.projection_dim is not None:
            aux["embeds"] = nn.Dense(self.projection_dim, use_bias=False, name="projection")(pooled)
        return x, {self.aux_prefix + k: v for k, v in aux.items()}
