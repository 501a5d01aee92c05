"""mmjax encoder -> Hugging Face checkpoint folder (config.json + model.safetensors): `to_hf`.

The import side is the spec; nothing is written twice:
- a family's `hf_config(module, params)` inverts its `encoder_from_config`, and `to_hf` checks the inversion
  by building the module back from that config: a field the checkpoint cannot hold (BERT with
  pre_ln=True, ...) is reported by name instead of being silently dropped;
- each HF key's shape comes from the config (the family's `hf_shapes` for embeddings and pooler,
  `layer_shapes` for the shared `encoder.layer.{i}` layout), and the family's `key_map` is inverted by
  running its forward transform, a pure permutation/reshape, on the index array arange(n).reshape(shape):
  the result says which HF element each param element came from.
Keys HF has but mmjax drops on purpose (the attention key bias, which softmax cancels) are written as zeros.
"""

import dataclasses
import json
import math
from functools import partial
from pathlib import Path

import numpy as np
from flax import linen as nn
from flax import traverse_util
from safetensors.numpy import save_file

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.port import bert, vit
from mmjax.port.common import KeyMap, Transform

FAMILIES = {TextEncoder: bert, ViTEncoder: vit}  # module class -> its port file
# Fields that change neither the weights nor the function of an exported model.
UNWRITTEN = ("parent", "name", "dropout_rate", "aux_prefix", "channels_first")


def layer_shapes(layer: dict[str, str], hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the `encoder.layer.{i}.<HF module>.{weight,bias}` keys; `layer` maps HF to mmjax modules."""
    width, mlp_dim = hf_config["hidden_size"], hf_config["intermediate_size"]
    out_in = {"mlp/fc1": (mlp_dim, width), "mlp/fc2": (width, mlp_dim)}  # attention: (width, width)
    shapes = {}
    for i in range(hf_config["num_hidden_layers"]):
        for hf, ours in layer.items():
            weight = (width,) if ours.endswith("_ln") else out_in.get(ours, (width, width))
            shapes[f"encoder.layer.{i}.{hf}.weight"] = weight
            shapes[f"encoder.layer.{i}.{hf}.bias"] = weight[:1]
    return shapes


def invert(transform: Transform, shape: tuple[int, ...], value: np.ndarray) -> np.ndarray | str:
    """The HF array of `shape` that `transform` maps to `value`, or a message saying why there is none."""
    index = np.asarray(transform(np.arange(math.prod(shape)).reshape(shape)))
    if index.shape != value.shape:
        return f"needs {index.shape}, has {value.shape}"
    if not np.array_equal(np.sort(index.ravel()), np.arange(index.size)):
        return "its transform is not a permutation"
    array = np.empty(index.size, value.dtype)
    array[index.ravel()] = value.ravel()
    return array.reshape(shape)


def split(params: dict, shapes: dict[str, tuple[int, ...]], key_map: KeyMap) -> dict[str, np.ndarray]:
    """The inverse of mmjax.port.common.merge: the HF state dict (float32) of `params`, strictly.

    Every missing, unused or mis-shaped param is collected into one ValueError.
    """
    flat = {"/".join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    state_dict, used, problems = {}, set(), []
    for key, shape in shapes.items():
        target = key_map(key)
        if target is None:  # dropped on import on purpose
            state_dict[key] = np.zeros(shape, np.float32)
            continue
        path, transform = target
        if path not in flat:
            problems.append(f"missing: {path} (for {key})")
            continue
        used.add(path)
        array = invert(transform, shape, flat[path])
        if isinstance(array, str):
            problems.append(f"mis-shaped: {path} -> {key} {shape}: {array}")
            continue
        state_dict[key] = array
    problems += [f"unused: {path}" for path in sorted(set(flat) - used)]
    if problems:
        raise ValueError(f"params do not fit the module ({len(problems)} problems):\n" + "\n".join(problems))
    return state_dict


def check_fields(module: nn.Module, rebuilt: nn.Module, model_type: str) -> None:
    """Raises naming every field of `module` that the HF `model_type` checkpoint cannot hold."""
    differ = [
        f"{f.name}={getattr(module, f.name)!r} (a {model_type} checkpoint gives {getattr(rebuilt, f.name)!r})"
        for f in dataclasses.fields(module)
        if f.name not in UNWRITTEN and getattr(module, f.name) != getattr(rebuilt, f.name)
    ]
    if differ:
        raise ValueError(
            f"{type(module).__name__} cannot be written as a Hugging Face {model_type} checkpoint: "
            + "; ".join(differ)
        )


def to_hf(module: nn.Module, params: dict, path: str | Path) -> None:
    """Writes `module` with `params` (as from_hf returns them) as an HF checkpoint folder at `path`.

    TextEncoder -> BertModel (RobertaModel with position_offset), ViTEncoder -> ViTModel (on [B, C, H, W]
    whatever `channels_first`); weights are written as float32, dropout keeps HF's defaults. A module
    without a pooler gets none, so transformers initialises its pooler randomly.
    """
    family = FAMILIES.get(type(module))
    if family is None:
        supported = sorted(cls.__name__ for cls in FAMILIES)
        raise TypeError(f"{type(module).__name__} has no Hugging Face export; supported: {supported}")
    config = family.hf_config(module, params)
    shapes = family.hf_shapes(config, module.pooler) | layer_shapes(family.LAYER, config)
    tower = family.TOWERS[0]
    check_fields(module, family.encoder_from_config(config, set(shapes), tower), config["model_type"])
    state_dict = split(params, shapes, partial(family.key_map, module=module, tower=tower))
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state_dict, folder / "model.safetensors", metadata={"format": "pt"})
