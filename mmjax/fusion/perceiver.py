"""Perceiver-style fusion (Jaegle et al. 2021): learned latents read every stream's tokens."""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import project, stream_names
from mmjax.nn.embeddings import INIT
from mmjax.nn.transformer import TransformerBlock, run_block


class PerceiverFusion(nn.Module):
    """`num_latents` learned latents pass `depth` blocks (self-attention, cross-attention to the concatenated
    tokens of all streams, streams in the order given, MLP). The context is each stream through Dense(width)
    + a learned stream embedding, keys masked by padding and presence; with nothing present the
    cross-attention adds zero. Works with one stream or more.

    out["tokens"] = the latents (after a final LayerNorm when pre_ln), mask all True; pooled = their mean.
    """

    width: int
    depth: int
    num_latents: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
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
        contexts, context_masks = [], []
        for m in stream_names(self, tokens, masks, present):
            x, valid = project(self, m, tokens, masks, present)
            contexts.append(x)
            context_masks.append(valid)
        context, context_mask = jnp.concatenate(contexts, axis=1), jnp.concatenate(context_masks, axis=1)
        latents = self.param("latents", INIT, (self.num_latents, self.width))
        x = jnp.broadcast_to(latents, (context.shape[0], *latents.shape))
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
        for i in range(self.depth):
            layer = block(name=f"layer_{i}")
            x = run_block(
                layer, x, None, context, context_mask, deterministic=deterministic, remat=self.remat
            )
        if self.pre_ln:
            x = nn.LayerNorm(name="final_ln")(x)
        out = {"tokens": x, "mask": jnp.ones(x.shape[:2], bool), "pooled": x.mean(axis=1)}
        return out, {f"fusion/{k}": v for k, v in out.items()}
