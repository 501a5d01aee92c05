"""Gated multimodal unit (Arevalo et al. 2017) over M streams."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import tokens_and_summaries


class GatedFusion(nn.Module):
    """pooled = sum_m z_m tanh(W_m x_m) over the stream summaries x_m, with gates z = softmax over the
    present streams of W_z [x_1; ...; x_M] (absent ones get z_m = 0; M = 2 with a sigmoid is the GMU).
    Works with one stream or more (M = 1: z = 1 where present).

    out["tokens"] concatenates the streams' projected tokens (as in LateFusion), streams in the order given;
    aux["fusion/gates"] holds z [B, M], streams in the order given.
    """

    width: int
    dropout_rate: float = 0.0  # on each tanh(W_m x_m)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        out, summaries = tokens_and_summaries(self, tokens, masks, present)
        names = list(summaries)
        here = jnp.stack([present[m].astype(bool) for m in names], axis=1)  # [B, M]
        logits = nn.Dense(len(names), name="gate")(jnp.concatenate(list(summaries.values()), -1))
        logits = jnp.where(here, logits, jnp.finfo(logits.dtype).min)  # finite: no NaN when none is present
        gates = jnp.where(here, jax.nn.softmax(logits, axis=-1), 0.0)
        hidden = jnp.stack([nn.Dense(self.width, name=f"{m}_hidden")(summaries[m]) for m in names], axis=1)
        hidden = nn.Dropout(self.dropout_rate)(jnp.tanh(hidden), deterministic=deterministic)
        out["pooled"] = jnp.einsum("bm,bmd->bd", gates, hidden)
        return out, {f"fusion/{k}": v for k, v in out.items()} | {"fusion/gates": gates}
