"""Hugging Face checkpoints -> (mmjax module, params) with exact numerical parity: `from_hf(path)`."""

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.port import ast, bert, clip, resnet, vit, whisper
from mmjax.port.common import merge, read_config, read_state_dict, strip_prefix
from mmjax.port.export import to_hf  # noqa: F401  (re-exported: mmjax.port.to_hf)

# HF model_type -> its port file, which names the towers a checkpoint holds (TOWERS, the first is the
# default) and, per tower, builds the module (encoder_from_config(hf_config, keys, tower)), its init inputs
# (dummy_inputs(hf_config, tower)) and maps HF keys to its params (key_map(key, module, tower)).
FAMILIES = {
    "bert": bert,
    "roberta": bert,
    "vit": vit,
    "audio-spectrogram-transformer": ast,
    "whisper": whisper,
    "clip": clip,
    "clip_text_model": clip.TEXT_MODEL,
    "clip_vision_model": clip.VISION_MODEL,
    "resnet": resnet,
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
    """Builds the mmjax module for the HF checkpoint folder `path` and loads its weights strictly.

    Returns (module, params) for `module.apply({"params": params}, input_ids, attention_mask, ...)`
    (text) or `module.apply({"params": params}, pixel_values)` (image, [B, C, H, W] of the checkpoint's size).
    A module with more collections than params (ResNet's BatchNorm `batch_stats`) gets all its variables
    instead, {"params": ..., "batch_stats": ...} for `module.apply(variables, pixel_values)`; its key map
    and `dont_load` paths then start with the collection ("params/embedder/conv/kernel").
    `tower` picks one tower of a multi-tower checkpoint (None or the family's only tower otherwise).
    `dont_load`: regexes over mmjax param paths (kept at their initial value) or HF keys (skipped);
    see mmjax.port.common.merge.
    """
    config = read_config(path)
    family, tower = family_and_tower(config, tower, Path(path) / "config.json")
    state_dict = read_state_dict(path)
    module = family.encoder_from_config(config, {strip_prefix(k) for k in state_dict}, tower)
    inputs = family.dummy_inputs(config, tower)
    dont_load = tuple(dont_load)
    if dont_load:
        template = module.init(jax.random.key(0), *inputs)
    else:
        template = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    if set(template) == {"params"}:
        template = template["params"]
    key_map = partial(family.key_map, module=module, tower=tower)
    params = merge(template, state_dict, key_map, dont_load, source=str(path))
    return module, jax.tree.map(jnp.asarray, params)
