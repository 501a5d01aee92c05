"""Cross-attention fusion: text tokens attend to the image + audio tokens (optionally both ways)."""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import project
from mmjax.nn.transformer import TransformerBlock, run_block

CONTEXT_MODALITIES = ("image", "audio")  # concatenated in this order as keys/values


class CrossAttentionFusion(nn.Module):
    """Per-modality Dense to `width` + learned modality embedding, then `depth` blocks where text queries
    attend to the context (keys masked by padding and presence). bidirectional: the context also
    attends to the text in each layer. pooled = the text [CLS] token after fusion.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    bidirectional: bool = False
    remat: str = ""  # speed levers of the blocks (mmjax.nn.transformer): "" | full | dots | dots_saveable
    dtype: str = "float32"  # compute dtype of the blocks: float32 | bfloat16 (params stay float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        if "text" not in tokens:
            raise ValueError("CrossAttentionFusion needs 'text' tokens (the queries)")
        context_names = [m for m in CONTEXT_MODALITIES if m in tokens]
        if not context_names:
            raise ValueError(f"CrossAttentionFusion needs at least one of {CONTEXT_MODALITIES}")

        x, x_mask = project(self, "text", tokens, masks, present)
        embedded = [project(self, m, tokens, masks, present) for m in context_names]
        ctx = jnp.concatenate([e[0] for e in embedded], axis=1)
        ctx_mask = jnp.concatenate([e[1] for e in embedded], axis=1)
        block = functools.partial(
            TransformerBlock,
            self.num_heads,
            self.mlp_dim,
            self.dropout_rate,
            self.pre_ln,
            cross_attention=True,
            dtype=self.dtype,
            attention=self.attention,
        )
        run = functools.partial(run_block, deterministic=deterministic, remat=self.remat)
        for i in range(self.depth):
            new_x = run(block(name=f"text_layer_{i}"), x, x_mask, ctx, ctx_mask)
            if self.bidirectional:
                ctx = run(block(name=f"context_layer_{i}"), ctx, ctx_mask, x, x_mask)
            x = new_x
        if self.pre_ln:
            x = nn.LayerNorm(name="text_final_ln")(x)
            if self.bidirectional:
                ctx = nn.LayerNorm(name="context_final_ln")(ctx)
        out_mask = jnp.concatenate([x_mask, ctx_mask], axis=1)
        out_tokens = jnp.where(out_mask[..., None], jnp.concatenate([x, ctx], axis=1), 0.0)
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": x[:, 0]}
        return out, {f"fusion/{k}": v for k, v in out.items()}
