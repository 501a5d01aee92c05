"""A frozen pretrained text tower run once per distinct text (config.model.text.cache).

When the text tower is frozen and a data set asks few distinct questions (AV-Digits has tens of phrasings over
thousands of examples), running the tower on every example of every step is wasted work. With
`model.text.cache=True`, preprocessing adds `<stream>_features` (the tower's token outputs [L, D] for the
example's token ids) to every text stream, computed on the first sight of those ids and remembered; the
model's text encoder is then mmjax.encoders.text.CachedTextEncoder, which reads those features and has no
tower params. The tower is `model.text.init_from` (any text family mmjax ports), in float32, deterministic;
`model.text.cache_layer` picks which of its token outputs are kept: -1 (the default) its output, k its
hidden state k (0: the embeddings, k: the output of layer k).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from mmjax.data.spec import DataSet
from mmjax.port.pretrained import load_pretrained

FEATURES = "_features"  # suffix of a text stream's cached features in the batch


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether config.model.text.cache is on; it needs a pretrained tower to cache and a main-process
    pipeline (the tower runs where preprocessing runs)."""
    text = config.get("model", {}).get("text", {})
    if not text.get("cache", False):
        return False
    if config.model.get("kind", "multimodal") != "multimodal":
        raise ValueError(
            "model.text.cache=True is for multimodal models; text-task models fine-tune the tower"
        )
    if not text.get("init_from", ""):
        raise ValueError(
            "model.text.cache=True needs model.text.init_from: the frozen tower whose outputs it keeps"
        )
    if config.data.get("workers", 0):
        raise ValueError(
            f"model.text.cache=True needs data.workers=0 (got {config.data.workers}): the frozen text tower "
            "runs where preprocessing runs"
        )
    return True


class TextCache:
    """The token outputs [L, D] of a frozen text tower (its output, or its hidden state `layer`) per
    distinct (ids, mask), computed on first use."""

    def __init__(self, spec: str, tower: str | None = None, layer: int = -1):
        module, params = load_pretrained(spec, tower)
        depth = getattr(module, "depth", None)
        if layer != -1 and not (depth is not None and 0 <= layer <= depth):
            raise ValueError(
                f"model.text.cache_layer={layer}: expected -1 (the tower's output) or a hidden state "
                f"0..{depth} of {spec}"
            )
        self._params = jax.device_put(params, jax.local_devices(backend="cpu")[0])
        self._apply = functools.partial(_tokens, module, layer)
        self._encode = jax.jit(self._apply)
        self._seen: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def width(self) -> int:
        """The width D of the features (the tower's token outputs' last axis)."""
        ids = jax.ShapeDtypeStruct((1, 4), np.int32)
        mask = jax.ShapeDtypeStruct((1, 4), bool)
        return int(jax.eval_shape(self._apply, self._params, ids, mask).shape[-1])

    def features(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The tower's outputs [L, D] float32 for one example's ids [L] (padding rows zero)."""
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
        key = ids.tobytes() + mask.tobytes()
        if key not in self._seen:
            tokens = self._encode(self._params, ids[None], mask[None])[0]
            self._seen[key] = np.where(mask[:, None], np.asarray(tokens, np.float32), 0.0)
        return self._seen[key]


def _tokens(module, layer: int, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    out, aux = module.apply({"params": params}, ids, mask, deterministic=True)
    if layer == -1:
        return out
    return next(v for k, v in aux.items() if k.endswith("hidden_states"))[layer]


@functools.cache
def shared(spec: str, tower: str | None = None, layer: int = -1) -> TextCache:
    """The process's one cache of a tower: the data sets, evaluations and models of a run share its
    weights, its compiled forward pass and the features it has computed."""
    return TextCache(spec, tower, layer)


def config_cache(text: ml_collections.ConfigDict) -> TextCache:
    """The shared cache that the text config `text` (model.text) names."""
    return shared(text.init_from, text.get("tower", "") or None, text.get("cache_layer", -1))


def add_features(example: dict, *, cache: TextCache, streams: tuple[str, ...]) -> dict:
    """`example` with `<stream>_features` for each text stream."""
    return example | {f"{s}{FEATURES}": cache.features(example[s], example[f"{s}_mask"]) for s in streams}


def cached(fn: Callable[..., dict], cache: TextCache, streams: tuple[str, ...]) -> Callable[..., dict]:
    """A preprocess function with the features added."""
    return lambda example: add_features(fn(example), cache=cache, streams=streams)


def with_text_cache(data: DataSet, config: ml_collections.ConfigDict) -> DataSet:
    """`data` whose preprocessing (clean, under every robustness condition and for other phrasings) adds
    the cached features of its text streams."""
    streams = tuple(s for s, kind in data.streams.items() if kind == "text")
    if not streams:
        raise ValueError(f"model.text.cache=True, but the {data.name} data set has no text stream")
    cache = config_cache(config.model.text)
    condition = data.condition
    if condition is not None:
        condition = functools.partial(_cached_condition, condition, cache=cache, streams=streams)
    return dataclasses.replace(data, preprocess=cached(data.preprocess, cache, streams), condition=condition)


def _cached_condition(condition: Callable, *args, cache: TextCache, streams: tuple[str, ...], **kwargs):
    return cached(condition(*args, **kwargs), cache, streams)
