"""Tensor fusion (Zadeh et al. 2017) and its low-rank factorisation LMF (Liu et al. 2018).

Both see each stream as z_m = [1; h_m], h_m = Dense(factor_dim) of its masked-mean summary, and pool a
multilinear map of the z_m: <W, z_1 (x) ... (x) z_M>, the M streams in the order given (one or more). An
absent stream has h_m = 0, z_m = [1; 0], which keeps exactly the terms of the other streams. The constant 1
entries already give a bias.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import tokens_and_summaries

# Factors of LowRankTensorFusion: [rank, factor_dim + 1, width], Glorot over the last two axes (as LMF).
FACTOR_INIT = nn.initializers.xavier_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))


def outer_product(zs: list[jax.Array]) -> jax.Array:
    """The flattened outer product [B, F_1 * ... * F_M] of vectors [B, F_m] (first one's index slowest)."""
    product = zs[0]
    for z in zs[1:]:
        product = (product[:, :, None] * z[:, None, :]).reshape(product.shape[0], -1)
    return product


def _tokens_and_factors(
    module: nn.Module,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
    factor_dim: int,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(out tokens and mask as in LateFusion, {stream: z_m = [1; h_m] [B, factor_dim + 1]}), streams in the
    order given."""
    out, summaries = tokens_and_summaries(module, tokens, masks, present)
    zs = {}
    for m, summary in summaries.items():
        h = nn.Dense(factor_dim, name=f"{m}_factor", parent=module)(summary)
        h = jnp.where(present[m].astype(bool)[:, None], h, 0.0)
        zs[m] = jnp.concatenate([jnp.ones_like(h[:, :1]), h], axis=-1)
    return out, zs


class TensorFusion(nn.Module):
    """pooled = Dense(width, no bias) of the flattened outer product of the z_m ((factor_dim + 1)^M values),
    streams in the order given (the first one's index slowest). Works with one stream or more.

    out["tokens"] concatenates the streams' projected tokens (as in LateFusion), streams in the order given;
    aux["fusion/{m}_z"] holds each z_m.
    """

    width: int
    factor_dim: int = 8  # size of each h_m; the product has (factor_dim + 1)^M entries
    dropout_rate: float = 0.0  # on the flattened product

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        out, zs = _tokens_and_factors(self, tokens, masks, present, self.factor_dim)
        product = nn.Dropout(self.dropout_rate)(outer_product(list(zs.values())), deterministic=deterministic)
        out["pooled"] = nn.Dense(self.width, use_bias=False, name="pooled_proj")(product)
        aux = {f"fusion/{m}_z": z for m, z in zs.items()}
        return out, {f"fusion/{k}": v for k, v in out.items()} | aux


class LowRankTensorFusion(nn.Module):
    """LMF: pooled = sum_r prod_m (W_m^r z_m), i.e. TensorFusion with W = sum_r W_1^r (x) ... (x) W_M^r,
    never building the product: O(rank * M * factor_dim * width) instead of (factor_dim + 1)^M * width.

    The factors are parameters `{m}_rank_factors` [rank, factor_dim + 1, width]; LMF's per-rank weights and
    bias are left out, as the factors and the constant 1 entries already express them. Same out and aux as
    TensorFusion: streams in the order given, one or more.
    """

    width: int
    rank: int
    factor_dim: int = 8  # size of each h_m
    dropout_rate: float = 0.0  # on the per-rank products

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        out, zs = _tokens_and_factors(self, tokens, masks, present, self.factor_dim)
        product = 1.0
        for m, z in zs.items():
            factors = self.param(f"{m}_rank_factors", FACTOR_INIT, (self.rank, z.shape[-1], self.width))
            product = product * jnp.einsum("bf,rfd->brd", z, factors)
        product = nn.Dropout(self.dropout_rate)(product, deterministic=deterministic)
        out["pooled"] = product.sum(axis=1)
        aux = {f"fusion/{m}_z": z for m, z in zs.items()}
        return out, {f"fusion/{k}": v for k, v in out.items()} | aux
