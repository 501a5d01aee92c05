"""Attention bottleneck fusion (MBT, Nagrani et al. 2021): streams meet only through shared tokens."""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.co_attention import mean_of_present_firsts
from mmjax.fusion.common import project, stream_names
from mmjax.nn.embeddings import INIT
from mmjax.nn.transformer import TransformerBlock, run_block


class BottleneckFusion(nn.Module):
    """One Transformer stack of `depth` layers per stream over its tokens (Dense to `width`), streams in the
    order given (one or more; with one, the bottleneck tokens are just extra learned tokens of that stream).

    Layers before `fusion_layer` are unimodal. From layer `fusion_layer` on, every stream appends the
    `num_bottlenecks` bottleneck tokens (learned at the start) to its sequence; after the layer the
    bottleneck becomes the mean of the present streams' updated copies (absent ones excluded; zero if
    none is present). As in MBT, the bottleneck written by layer l reaches the streams in layer l + 1: a
    stream's state after layer l carries other streams only when l > fusion_layer (the bottleneck already
    does after layer fusion_layer). fusion_layer=0 is MBT's early fusion: the exchange starts at the first
    layer, there are no unimodal layers. fusion_layer=depth is late fusion (no exchange at all); so is
    fusion_layer=depth - 1 for out["tokens"] and out["pooled"], whose last exchange reaches only the aux.

    pooled = mean over the present streams of each stream's first token (MBT averages per-modality [CLS]
    outputs); out["tokens"] concatenates the streams in the order given; aux["fusion/bottleneck"] is the
    last bottleneck [B, num_bottlenecks, width]. Every layer's stream states are sown to
    ("intermediates", "<stream>_hidden") and the bottleneck after each fusion layer to
    ("intermediates", "bottleneck_hidden").
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    num_bottlenecks: int = 4  # shared tokens per fusion layer (MBT uses 4)
    fusion_layer: int = 0  # first layer with cross-modal exchange; 0..depth
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
        if not 0 <= self.fusion_layer <= self.depth:
            raise ValueError(f"fusion_layer={self.fusion_layer} must be in 0..depth={self.depth}")
        if self.num_bottlenecks < 1:
            raise ValueError(f"num_bottlenecks={self.num_bottlenecks} must be at least 1")
        names = stream_names(self, tokens, masks, present)
        here = {m: present[m].astype(bool) for m in names}
        x, mask = {}, {}
        for m in names:
            x[m], mask[m] = project(self, m, tokens, masks, present, embedding=False)
        batch = x[names[0]].shape[0]
        bottleneck = self.param("bottleneck", INIT, (self.num_bottlenecks, self.width))
        bottleneck = jnp.broadcast_to(bottleneck, (batch, *bottleneck.shape))
        bottleneck_mask = jnp.ones((batch, self.num_bottlenecks), bool)
        for i in range(self.depth):
            copies = {}
            for m in names:
                layer = TransformerBlock(
                    self.num_heads,
                    self.mlp_dim,
                    self.dropout_rate,
                    self.pre_ln,
                    dtype=self.dtype,
                    attention=self.attention,
                    name=f"{m}_layer_{i}",
                )
                run = functools.partial(run_block, layer, deterministic=deterministic, remat=self.remat)
                if i < self.fusion_layer:
                    x[m] = run(x[m], mask[m])
                else:
                    joint = jnp.concatenate([x[m], bottleneck], axis=1)
                    joint_mask = jnp.concatenate([mask[m], bottleneck_mask], axis=1)
                    joint = run(joint, joint_mask)
                    x[m], copies[m] = joint[:, : x[m].shape[1]], joint[:, x[m].shape[1] :]
                self.sow("intermediates", f"{m}_hidden", x[m])
            if copies:
                bottleneck = mean_of_present(copies, here)
                self.sow("intermediates", "bottleneck_hidden", bottleneck)
        if self.pre_ln:
            x = {m: nn.LayerNorm(name=f"{m}_final_ln")(x[m]) for m in names}
        out_mask = jnp.concatenate([mask[m] for m in names], axis=1)
        out_tokens = jnp.where(out_mask[..., None], jnp.concatenate([x[m] for m in names], axis=1), 0.0)
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": mean_of_present_firsts(x, here)}
        return out, {f"fusion/{k}": v for k, v in out.items()} | {"fusion/bottleneck": bottleneck}


def mean_of_present(copies: dict[str, jax.Array], here: dict[str, jax.Array]) -> jax.Array:
    """Mean of copies[m] [B, K, D] over the streams present in each row; zeros where none is present."""
    total = sum(jnp.where(here[m][:, None, None], c, 0.0) for m, c in copies.items())
    count = sum(here[m].astype(jnp.int32) for m in copies)
    return total / jnp.maximum(count, 1)[:, None, None]
