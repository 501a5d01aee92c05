"""Late fusion: an MLP over the concatenated per-stream [CLS] vectors; absent streams give zeros."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import stream_names


class LateFusion(nn.Module):
    """pooled = MLP(concat of each stream's first token, zeroed where absent), streams in the order given.

    The hidden layer lets the question gate the other streams (a linear map of the concatenation cannot).

    out["tokens"] concatenates every stream's tokens (projected to `width`, zeroed where absent), streams in
    the order given, with masks that are False for padding and absent streams. Works with one stream or more.
    """

    width: int
    mlp_dim: int | None = None  # hidden width of the MLP; None -> 2 * width
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
        all_tokens, all_masks, firsts = [], [], []
        for m in names:
            here = present[m].astype(bool)
            x = jnp.where(here[:, None, None], tokens[m], 0.0)
            firsts.append(x[:, 0])
            all_tokens.append(nn.Dense(self.width, name=f"{m}_proj")(x))
            all_masks.append(masks[m].astype(bool) & here[:, None])
        hidden = nn.gelu(nn.Dense(self.mlp_dim or 2 * self.width, name="hidden")(jnp.concatenate(firsts, -1)))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        pooled = nn.Dense(self.width, name="pooled_proj")(hidden)
        out_tokens = jnp.concatenate(all_tokens, axis=1)
        out_mask = jnp.concatenate(all_masks, axis=1)
        out_tokens = jnp.where(out_mask[..., None], out_tokens, 0.0)
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": pooled}
        return out, {f"fusion/{k}": v for k, v in out.items()}
