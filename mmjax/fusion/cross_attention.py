"""Cross-attention fusion: one stream's tokens (text by default) attend to the others' (or both ways)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.fusion.common import project, stream_names
from mmjax.nn.transformer import TransformerBlock, run_block


class CrossAttentionFusion(nn.Module):
    """Per-stream Dense to `width` + learned stream embedding, then `depth` blocks where the `query`
    stream's tokens attend to the context: every other stream's tokens, concatenated in the order given
    (keys masked by padding and presence). bidirectional: the context also attends to the query tokens in
    each layer. pooled = the query stream's first token ([CLS]) after fusion. out["tokens"] holds every
    stream's tokens, streams in the order given (the query's at its own place).

    `query` must be one of the streams, and there must be at least one other (ValueError otherwise).
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
    query: str = "text"  # the stream whose tokens are the queries: any stream name (text, image_2, ...)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        names = stream_names(self, tokens, masks, present)
        if self.query not in names:
            raise ValueError(
                f"CrossAttentionFusion needs {self.query!r} tokens (model.fusion.query, the queries), "
                f"got streams {names}"
            )
        context_names = [m for m in names if m != self.query]
        if not context_names:
            raise ValueError(
                f"CrossAttentionFusion needs a stream other than {self.query!r} as context, "
                f"got streams {names}"
            )

        x, x_mask = project(self, self.query, tokens, masks, present)
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
            new_x = run(block(name=f"{self.query}_layer_{i}"), x, x_mask, ctx, ctx_mask)
            if self.bidirectional:
                ctx = run(block(name=f"context_layer_{i}"), ctx, ctx_mask, x, x_mask)
            x = new_x
        if self.pre_ln:
            x = nn.LayerNorm(name=f"{self.query}_final_ln")(x)
            if self.bidirectional:
                ctx = nn.LayerNorm(name="context_final_ln")(ctx)
        # Back in the order given, the layout of the other fusions: split the context per stream.
        splits = np.cumsum([e[0].shape[1] for e in embedded])[:-1]
        pieces = zip(jnp.split(ctx, splits, 1), jnp.split(ctx_mask, splits, 1), strict=True)
        parts = dict(zip(context_names, pieces, strict=True))
        parts[self.query] = (x, x_mask)
        out_mask = jnp.concatenate([parts[m][1] for m in names], axis=1)
        out_tokens = jnp.concatenate([parts[m][0] for m in names], axis=1)
        out = {"tokens": jnp.where(out_mask[..., None], out_tokens, 0.0), "mask": out_mask, "pooled": x[:, 0]}
        return out, {f"fusion/{k}": v for k, v in out.items()}
