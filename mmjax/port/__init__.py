"""Hugging Face checkpoints -> (mmjax module, params) with exact numerical parity: `from_hf(path)`."""

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.hf_cache import checkpoint_dir
from mmjax.port import (
    ast,
    bert,
    clip,
    deberta,
    dinov2,
    distilbert,
    electra,
    mpnet,
    resnet,
    siglip,
    vit,
    wav2vec2,
    whisper,
)
from mmjax.port.common import merge, read_config, read_state_dict, strip_prefix
from mmjax.port.export import to_hf  # noqa: F401  (re-exported: mmjax.port.to_hf)

# HF model_type -> its port file, which names the towers a checkpoint holds (TOWERS, the first is the
# default) and, per tower, builds the module (encoder_from_config(hf_config, keys, tower)), its init inputs
# (dummy_inputs(hf_config, tower)) and maps HF keys to its params (key_map(key, module, tower)).
FAMILIES = {
    "bert": bert,
    "roberta": bert,
    "distilbert": distilbert,
    "mpnet": mpnet,
    "electra": electra,
    "deberta": deberta,
    "deberta-v2": deberta,
    "vit": vit,
    "audio-spectrogram-transformer": ast,
    "whisper": whisper,
    "clip": clip,
    "clip_text_model": clip.TEXT_MODEL,
    "clip_vision_model": clip.VISION_MODEL,
    "siglip": siglip,
    "siglip_text_model": siglip.TEXT_MODEL,
    "siglip_vision_model": siglip.VISION_MODEL,
    "siglip2": siglip,
    "siglip2_text_model": siglip.TEXT_MODEL,
    "siglip2_vision_model": siglip.VISION_MODEL,
    "dinov2": dinov2,
    "dinov2_with_registers": dinov2,
    "resnet": resnet,
    "wav2vec2": wav2vec2,
    "hubert": wav2vec2,
    "wavlm": wav2vec2,
}


def family_and_tower(
    config: dict, tower: str | None, source: str | Path
) -> tuple[ModuleType | SimpleNamespace, str]:
    """The port of config["model_type"] (a port file, or clip's one-tower namespaces) and the tower to
    build (the only one when `tower` is None)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{source}: model_type={model_type!r} is not supported; known: {sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    tower = family.TOWERS[0] if tower is None and len(family.TOWERS) == 1 else tower
    if tower not in family.TOWERS:
        raise ValueError(
            f"{source}: {model_type} checkpoints hold the towers {family.TOWERS}; got tower={tower!r}"
        )
    return family, tower


def from_hf(
    path: str | Path, tower: str | None = None, dont_load: Iterable[str] = ()
) -> tuple[nn.Module, dict]:
    """Builds the mmjax module for the HF checkpoint folder `path` (or a model id `ORG/NAME[@REVISION]` in
    the local Hugging Face cache: mmjax.hf_cache) and loads its weights strictly, one tensor at a time.

    Returns (module, params) for `module.apply({"params": params}, input_ids, attention_mask, ...)`
    (text) or `module.apply({"params": params}, pixel_values)` (image, [B, C, H, W] of the checkpoint's size).
    A module with more collections than params (ResNet's BatchNorm `batch_stats`) gets all its variables
    instead, {"params": ..., "batch_stats": ...} for `module.apply(variables, pixel_values)`; its key map
    and `dont_load` paths then start with the collection ("params/embedder/conv/kernel").
    `tower` picks one tower of a multi-tower checkpoint (None or the family's only tower otherwise).
    `dont_load`: regexes over mmjax param paths (kept at their initial value) or HF keys (skipped);
    see mmjax.port.common.merge.
    """
    path = checkpoint_dir(path)
    config = read_config(path)
    family, tower = family_and_tower(config, tower, path / "config.json")
    state_dict = read_state_dict(path)
    module = family.encoder_from_config(config, {strip_prefix(k) for k in state_dict}, tower)
    inputs = family.dummy_inputs(config, tower)
    dont_load = tuple(dont_load)
    if dont_load:
        template = jax.jit(module.init)(jax.random.key(0), *inputs)
    else:
        template = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    if set(template) == {"params"}:
        template = template["params"]
    key_map = partial(family.key_map, module=module, tower=tower)
    return module, merge(template, state_dict, key_map, dont_load, source=str(path), as_array=jnp.asarray)
