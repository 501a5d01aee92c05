"""Late fusion of logits: one head per stream, logits averaged over the present streams.

Contract with the model (the task heads live there): when the fusion output has "per_modality", the model
applies one head per (task, stream) to out["per_modality"][:, i] and averages the logits with
out["weights"]: logits[b] = sum_i weights[b, i] * head_{task, i}(per_modality[b, i]). Stream i is the i-th
of the streams passed in, in the order given (the tokens dict's insertion order), whatever their names.
Rows with nothing present get all-zero weights (zero logits). out["pooled"] is the same weighted mean taken
over the vectors, for consumers that want one.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import stream_names


class LateLogitsFusion(nn.Module):
    """Per stream: Dense to `width` over the tokens, and an MLP over the first input token.

    out["per_modality"] [B, M, width] (zero where absent), out["weights"] [B, M] = present / number present,
    both with the M streams in the order given; out["pooled"] = weighted mean of per_modality;
    out["tokens"] concatenates the projected tokens, streams in the order given (zeroed and masked where
    padding or absent), as in LateFusion. Works with one stream or more.
    """

    width: int
    mlp_dim: int | None = None  # hidden width of each stream's MLP; None -> 2 * width
    dropout_rate: float = 0.0

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
        all_tokens, all_masks, vectors, here = [], [], [], []
        for m in names:
            present_m = present[m].astype(bool)
            x = jnp.where(present_m[:, None, None], tokens[m], 0.0)
            all_tokens.append(nn.Dense(self.width, name=f"{m}_proj")(x))
            all_masks.append(masks[m].astype(bool) & present_m[:, None])
            hidden = nn.gelu(nn.Dense(self.mlp_dim or 2 * self.width, name=f"{m}_hidden")(x[:, 0]))
            hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
            vectors.append(nn.Dense(self.width, name=f"{m}_out")(hidden))
            here.append(present_m)
        here = jnp.stack(here, axis=1)  # [B, M]
        per_modality = jnp.where(here[..., None], jnp.stack(vectors, axis=1), 0.0)
        weights = here / jnp.maximum(here.sum(axis=1, keepdims=True), 1)
        out_mask = jnp.concatenate(all_masks, axis=1)
        out = {
            "tokens": jnp.where(out_mask[..., None], jnp.concatenate(all_tokens, axis=1), 0.0),
            "mask": out_mask,
            "pooled": jnp.einsum("bm,bmd->bd", weights, per_modality),
            "per_modality": per_modality,
            "weights": weights,
        }
        return out, {f"fusion/{k}": v for k, v in out.items()}
