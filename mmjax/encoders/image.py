"""ViT image encoder: patches (+ [CLS]) + learned positions (+ registers) (-> LayerNorm) -> transformer.

Defaults are HF's ViT; patch_bias=False, embedding_ln, final_ln=False and pooled_ln make CLIP's vision tower;
class_token=False and pool="map" SigLIP's; layer_scale, gated_mlp, num_registers and mask_token DINOv2's.
`image_size` fixes the position table to that image size, and other sizes get it resized as HF does.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import ClsToken, GridPositionEmbedding, PatchEmbedding, PositionEmbedding
from mmjax.nn.pooling import AttentionPool
from mmjax.nn.transformer import encoder_stack

POOLS = ("cls", "map", "mean")  # ViTEncoder.pool


class ViTEncoder(nn.Module):
    """Encodes images [B, H, W, C] ([B, C, H, W] with `channels_first`).

    Without `image_size` the position table is sized by the image at init, so later images must have that
    size (divisible by `patch_size`). With `image_size`, the table covers that square size and images of
    any other size get it resized (`position_resize`: HF's interpolate_pos_encoding), their pixels past the
    last whole patch dropped, as HF's strided patch convolution drops them.
    Returns (tokens [B, 1 + R + N, width] ([CLS], registers, patches), aux); aux keys (after `aux_prefix`):
    `tokens`, `mask` (all True), `pooled` (by `pool`: the [CLS] token, the attention-pooling head or the
    token mean, through LayerNorm when `pooled_ln`, then Dense + tanh when `pooler`), `hidden_states`
    (embedding output, then every layer's output) and, with `projection_dim`, `embeds` (pooled through a
    bias-free Dense). `bool_masked_pos` [B, N] (with `mask_token`) replaces those patches by the mask token.
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
    class_token: bool = True  # a learned [CLS] token first (SigLIP has none)
    num_registers: int = 0  # learned register tokens after [CLS], added after the positions (DINOv2)
    mask_token: bool = False  # a learned token for the patches `bool_masked_pos` masks (DINOv2)
    image_size: int | None = None  # the square image size the position table covers; None: the init image's
    position_resize: str = "bicubic"  # with image_size: bicubic | bicubic_antialias (torch interpolate)
    layer_scale: float | None = None  # per-channel scales on each sub-layer's output (DINOv2's layerscale)
    gated_mlp: bool = False  # SwiGLU MLP (DINOv2 use_swiglu_ffn, with activation="silu")
    embedding_ln: bool = False  # LayerNorm on the embeddings (CLIP's pre_layrnorm)
    final_ln: bool = True  # pre_ln only: LayerNorm on the output tokens; CLIP normalises only the pooled
    pool: str = "cls"  # cls ([CLS] token) | map (attention-pooling head: SigLIP) | mean (token mean)
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
    def __call__(
        self, pixel_values: jax.Array, bool_masked_pos: jax.Array | None = None, *, deterministic: bool = True
    ) -> tuple[jax.Array, dict]:
        if self.pool not in POOLS or (self.pool == "cls" and not self.class_token):
            raise ValueError(f"pool={self.pool!r} is not one of {POOLS} ('cls' needs class_token=True)")
        image = jnp.moveaxis(pixel_values, 1, -1) if self.channels_first else pixel_values
        p = self.patch_size
        grid = (image.shape[1] // p, image.shape[2] // p)
        if self.image_size is not None:
            image = image[:, : grid[0] * p, : grid[1] * p]
        elif image.shape[1] % p or image.shape[2] % p:
            raise ValueError(f"image size {image.shape[1:3]} is not divisible by patch_size={p}")
        x = PatchEmbedding((p, p), self.width, use_bias=self.patch_bias, name="patch_embedding")(image)
        if bool_masked_pos is not None and not self.mask_token:
            raise ValueError("bool_masked_pos given but mask_token=False (no mask token)")
        if self.mask_token:
            token = self.param("mask_token", nn.initializers.zeros, (self.width,))
            if bool_masked_pos is not None:
                x = jnp.where(bool_masked_pos[..., None].astype(bool), token.astype(x.dtype), x)
        if self.class_token:
            x = ClsToken(name="cls")(x)
        if self.image_size is None:
            x = PositionEmbedding(x.shape[1], name="position_embedding")(x)
        else:
            positions = GridPositionEmbedding(
                self.image_size // p, int(self.class_token), self.position_resize, name="position_embedding"
            )
            x = positions(x, grid)
        if self.num_registers:
            registers = self.param("registers", nn.initializers.zeros, (self.num_registers, self.width))
            registers = jnp.broadcast_to(registers.astype(x.dtype), (x.shape[0], *registers.shape))
            first = int(self.class_token)
            x = jnp.concatenate([x[:, :first], registers, x[:, first:]], axis=1)
        if self.embedding_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="embedding_ln")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = jnp.ones(x.shape[:2], dtype=bool)
        encoder = encoder_stack(
            self,
            pre_ln=self.pre_ln,
            final_ln=self.final_ln,
            qkv_bias=self.qkv_bias,
            layer_scale=self.layer_scale,
            gated_mlp=self.gated_mlp,
        )
        x, hidden_states = encoder(x, mask, deterministic=deterministic)
        if self.pool == "map":
            head = AttentionPool(
                self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps, name="head"
            )
            pooled = head(x)
        else:
            pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        if self.pooled_ln:
            pooled = nn.LayerNorm(self.layer_norm_eps, name="pooled_ln")(pooled)
        if self.pooler:
            pooled = jnp.tanh(nn.Dense(self.width, name="pooler")(pooled))
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        if self.projection_dim is not None:
            aux["embeds"] = nn.Dense(self.projection_dim, use_bias=False, name="projection")(pooled)
        return x, {self.aux_prefix + k: v for k, v in aux.items()}
