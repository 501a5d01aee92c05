"""Pieces the fusions share: the modality order, per-modality projection, masked means.

Per-modality summaries (gated, film, tensor) are masked means over the valid tokens rather than the first
token: not every encoder puts a [CLS] first (Whisper's has none).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import INIT

MODALITIES = ("text", "image", "audio")  # fixed order of concatenations and of per-modality axes


def project(
    module: nn.Module,
    m: str,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
    embedding: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Modality `m`'s tokens through Dense(module.width) `{m}_proj` (+ a learned `{m}_embedding`), and
    their mask: padding & presence. Masked content is zeroed with `where` first, so even NaN is safe.

    Call it from `module`'s compact method: the layers become `module`'s.
    """
    valid = masks[m].astype(bool) & present[m].astype(bool)[:, None]
    x = nn.Dense(module.width, name=f"{m}_proj", parent=module)(jnp.where(valid[..., None], tokens[m], 0.0))
    if embedding:
        x = x + module.param(f"{m}_embedding", INIT, (module.width,))
    return x, valid


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [B, L, D] over the positions where mask [B, L] is True; zeros where none is."""
    total = jnp.where(mask[..., None], x, 0.0).sum(axis=1)
    return total / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)


def tokens_and_summaries(
    module: nn.Module,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({"tokens", "mask"}: every modality through `project` (no embedding), concatenated in MODALITIES
    order, zeroed where masked; {modality: masked mean of its input tokens [B, D_m]}).

    Call it from `module`'s compact method.
    """
    all_tokens, all_masks, summaries = [], [], {}
    for m in [m for m in MODALITIES if m in tokens]:
        x, valid = project(module, m, tokens, masks, present, embedding=False)
        summaries[m] = masked_mean(jnp.where(valid[..., None], tokens[m], 0.0), valid)
        all_tokens.append(jnp.where(valid[..., None], x, 0.0))
        all_masks.append(valid)
    return {"tokens": jnp.concatenate(all_tokens, 1), "mask": jnp.concatenate(all_masks, 1)}, summaries
