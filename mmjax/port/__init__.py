"""Hugging Face checkpoints -> (mmjax module, params) with exact numerical parity: `from_hf(path)`."""

from collections.abc import Iterable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.port import bert, vit
from mmjax.port.common import merge, read_config, read_state_dict, strip_prefix

# HF model_type -> the port file that builds its module (encoder_from_config), its init inputs
# (dummy_inputs), maps its keys (key_map) and names its tower (TOWER).
FAMILIES = {
    "bert": bert,
    "roberta": bert,
    "vit": vit,
}


def from_hf(
    path: str | Path, tower: str | None = None, dont_load: Iterable[str] = ()
) -> tuple[nn.Module, dict]:
    """Builds the mmjax module for the HF checkpoint folder `path` and loads its weights strictly.

    Returns (module, params) for `module.apply({"params": params}, input_ids, attention_mask, ...)`
    (text) or `module.apply({"params": params}, pixel_values)` (image, [B, C, H, W] of the checkpoint's size).
    `tower` picks one tower of a multi-tower checkpoint (None or the family's only tower otherwise).
    `dont_load`: regexes over mmjax param paths (kept at their initial value) or HF keys (skipped);
    see mmjax.port.common.merge.
    """
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"{Path(path) / 'config.json'}: model_type={model_type!r} is not supported; "
            f"supported: {sorted(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    if tower not in (None, family.TOWER):
        raise ValueError(f"{model_type} checkpoints have only the {family.TOWER} tower, not tower={tower!r}")
    state_dict = read_state_dict(path)
    pooler = any(strip_prefix(k).startswith("pooler.") for k in state_dict)
    module = family.encoder_from_config(config, pooler=pooler)
    inputs = family.dummy_inputs(config)
    dont_load = tuple(dont_load)
    if dont_load:
        template = module.init(jax.random.key(0), *inputs)["params"]
    else:
        template = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    key_map = partial(family.key_map, num_heads=module.num_heads)
    params = merge(template, state_dict, key_map, dont_load, source=str(path))
    return module, jax.tree.map(jnp.asarray, params)
