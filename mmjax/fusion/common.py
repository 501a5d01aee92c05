"""Pieces the fusions share: the streams, per-stream projection, masked means.

Streams are the keys of the `tokens` dict a fusion gets, any names (text, text_2, image, image_2, audio, ...),
taken in the order given: the dict's insertion order, which is the data set's order. No fusion reorders or
drops them; that order lays out out["tokens"] and every per-stream axis. Build the dict inside the traced
function from the data set's stream list: jax.jit (any pytree flattening) hands a dict argument back with
its keys sorted.

Per-stream summaries (gated, film, tensor) are masked means over the valid tokens rather than the first
token: not every encoder puts a [CLS] first (Whisper's has none).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import INIT
from mmjax.nn.pooling import masked_mean


def stream_names(
    module: nn.Module,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
    at_least: int = 1,
) -> list[str]:
    """The streams of `tokens` in the order given. ValueError naming the fusion and the streams it got when
    there are fewer than `at_least`, or when `masks` or `present` lacks one of them."""
    names = list(tokens)
    fusion = type(module).__name__
    if len(names) < at_least:
        plural = "s" if at_least > 1 else ""
        raise ValueError(f"{fusion} needs at least {at_least} stream{plural}, got streams {names}")
    missing = [m for m in names if m not in masks or m not in present]
    if missing:
        raise ValueError(f"{fusion} got streams {names} but no mask or presence for {missing}")
    return names


def project(
    module: nn.Module,
    m: str,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
    embedding: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Stream `m`'s tokens through Dense(module.width) `{m}_proj` (+ a learned `{m}_embedding`), and
    their mask: padding & presence. Masked content is zeroed with `where` first, so even NaN is safe.

    Call it from `module`'s compact method: the layers become `module`'s.
    """
    valid = masks[m].astype(bool) & present[m].astype(bool)[:, None]
    x = nn.Dense(module.width, name=f"{m}_proj", parent=module)(jnp.where(valid[..., None], tokens[m], 0.0))
    if embedding:
        x = x + module.param(f"{m}_embedding", INIT, (module.width,))
    return x, valid


def tokens_and_summaries(
    module: nn.Module,
    tokens: dict[str, jax.Array],
    masks: dict[str, jax.Array],
    present: dict[str, jax.Array],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({"tokens", "mask"}: every stream through `project` (no embedding), concatenated in the order given,
    zeroed where masked; {stream: masked mean of its input tokens [B, D_m]}, in the same order).

    Call it from `module`'s compact method. At least one stream (ValueError otherwise).
    """
    all_tokens, all_masks, summaries = [], [], {}
    for m in stream_names(module, tokens, masks, present):
        x, valid = project(module, m, tokens, masks, present, embedding=False)
        summaries[m] = masked_mean(jnp.where(valid[..., None], tokens[m], 0.0), valid)
        all_tokens.append(jnp.where(valid[..., None], x, 0.0))
        all_masks.append(valid)
    return {"tokens": jnp.concatenate(all_tokens, 1), "mask": jnp.concatenate(all_masks, 1)}, summaries
