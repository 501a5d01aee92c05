"""Gated multimodal unit (Arevalo et al. 2017) over M modalities; token helpers shared by the vector fusions.

Per-modality summaries (here, in film and in tensor) are masked means over the valid tokens rather than the
first token: not every encoder puts a [CLS] first (Whisper's has none).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.late import MODALITIES


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [B, L, D] over the positions where mask [B, L] is True; zeros where none is."""
    total = jnp.where(mask[..., None], x, 0.0).sum(axis=1)
    return total / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)


def tokens_and_summaries(
    tokens: dict[str, jax.Array], masks: dict[str, jax.Array], present: dict[str, jax.Array], width: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({"tokens", "mask"} of every modality's tokens through Dense(width), concatenated in MODALITIES
    order and zeroed where masked, {modality: masked mean of its input tokens [B, D_m]}).

    Padding and absent modalities are masked out (their content zeroed with `where`, so even NaN is safe).
    Call it from a compact method: the Dense layers `{modality}_proj` become the caller's.
    """
    all_tokens, all_masks, summaries = [], [], {}
    for m in [m for m in MODALITIES if m in tokens]:
        valid = masks[m].astype(bool) & present[m].astype(bool)[:, None]
        x = jnp.where(valid[..., None], tokens[m], 0.0)
        summaries[m] = masked_mean(x, valid)
        all_tokens.append(jnp.where(valid[..., None], nn.Dense(width, name=f"{m}_proj")(x), 0.0))
        all_masks.append(valid)
    return {"tokens": jnp.concatenate(all_tokens, 1), "mask": jnp.concatenate(all_masks, 1)}, summaries


class GatedFusion(nn.Module):
    """pooled = sum_m z_m tanh(W_m x_m) over the modality summaries x_m, with gates z = softmax over the
    present modalities of W_z [x_1; ...; x_M] (absent ones get z_m = 0; M = 2 with a sigmoid is the GMU).

    out["tokens"] concatenates the modalities' projected tokens (as in LateFusion); aux["fusion/gates"]
    holds z [B, M] in MODALITIES order.
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
        out, summaries = tokens_and_summaries(tokens, masks, present, self.width)
        names = list(summaries)
        here = jnp.stack([present[m].astype(bool) for m in names], axis=1)  # [B, M]
        logits = nn.Dense(len(names), name="gate")(jnp.concatenate(list(summaries.values()), -1))
        logits = jnp.where(here, logits, jnp.finfo(logits.dtype).min)  # finite: no NaN when none is present
        gates = jnp.where(here, jax.nn.softmax(logits, axis=-1), 0.0)
        hidden = jnp.stack([nn.Dense(self.width, name=f"{m}_hidden")(summaries[m]) for m in names], axis=1)
        hidden = nn.Dropout(self.dropout_rate)(jnp.tanh(hidden), deterministic=deterministic)
        out["pooled"] = jnp.einsum("bm,bmd->bd", gates, hidden)
        return out, {f"fusion/{k}": v for k, v in out.items()} | {"fusion/gates": gates}
