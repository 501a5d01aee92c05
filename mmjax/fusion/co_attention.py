"""Co-attention fusion (ViLBERT's two streams, generalised to any number of streams)."""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import project, stream_names
from mmjax.nn.transformer import TransformerBlock, run_block


class CoAttentionFusion(nn.Module):
    """Per stream (two or more, streams in the order given): Dense to `width` + learned stream embedding, then
    `depth` layers where every stream runs a TransformerBlock (self-attention, cross-attention to the
    concatenated tokens of the other streams in the order given, MLP). All streams of a layer read the
    previous layer's states; keys are masked by padding and presence, so absent streams are never attended
    to. Fewer than two streams: ValueError.

    pooled = mean over the present streams of each stream's first token (zero if none is present): every
    stream counts alike, whichever are missing. out["tokens"] concatenates the streams in the order given.
    """

    width: int
    depth: int
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
        names = stream_names(self, tokens, masks, present, at_least=2)
        here = {m: present[m].astype(bool) for m in names}
        x, mask = {}, {}
        for m in names:
            x[m], mask[m] = project(self, m, tokens, masks, present)
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
            new_x = {}
            for m in names:
                others = [o for o in names if o != m]
                ctx = jnp.concatenate([x[o] for o in others], axis=1)
                ctx_mask = jnp.concatenate([mask[o] for o in others], axis=1)
                layer = block(name=f"{m}_layer_{i}")
                new_x[m] = run_block(
                    layer, x[m], mask[m], ctx, ctx_mask, deterministic=deterministic, remat=self.remat
                )
            x = new_x
        if self.pre_ln:
            x = {m: nn.LayerNorm(name=f"{m}_final_ln")(x[m]) for m in names}
        out_mask = jnp.concatenate([mask[m] for m in names], axis=1)
        out_tokens = jnp.where(out_mask[..., None], jnp.concatenate([x[m] for m in names], axis=1), 0.0)
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": mean_of_present_firsts(x, here)}
        return out, {f"fusion/{k}": v for k, v in out.items()}


def mean_of_present_firsts(x: dict[str, jax.Array], here: dict[str, jax.Array]) -> jax.Array:
    """Mean over the present streams of each x[m][:, 0]; rows with nothing present give zeros."""
    firsts = jnp.stack([jnp.where(here[m][:, None], x[m][:, 0], 0.0) for m in x], axis=1)
    count = jnp.stack([here[m] for m in x], axis=1).sum(axis=1)
    return firsts.sum(axis=1) / jnp.maximum(count, 1)[:, None]
