"""mmjax encoder -> Hugging Face checkpoint folder (config.json + model.safetensors): `to_hf`.

The import side is the spec; nothing is written twice. A family's port file exports with
- `hf_config(module, params, tower)`: the HF config, the inverse of its `encoder_from_config` (ValueError
  when the params cannot fit the family);
- `hf_shapes(hf_config, module, tower)`: every HF key the checkpoint holds and its shape (or, for a key
  no param fills, a constant array written as is: BatchNorm's int64 step counters).
`to_hf` takes the first family of the module's class whose config builds the module back (a field the
checkpoint cannot hold, such as BERT with pre_ln=True, is reported by name for every family tried instead of
being silently dropped), and inverts the
family's `key_map` by running its forward transform, a pure permutation/reshape, on the index array
arange(n).reshape(shape): the result says which HF element each param element came from.
Keys HF has but mmjax drops on purpose (the attention key bias, which softmax cancels) are written as zeros.
"""

import dataclasses
import json
import math
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
from flax import linen as nn
from flax import traverse_util
from safetensors.numpy import save_file

from mmjax.encoders.audio import SpectrogramEncoder, WhisperEncoder
from mmjax.encoders.deberta import DebertaEncoder
from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.naflex import NaFlexEncoder
from mmjax.encoders.resnet import ResNetEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.encoders.wav2vec2 import Wav2Vec2Encoder
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
from mmjax.port.common import KeyMap, Transform

# Module class -> (port file, tower) pairs tried in order: the first whose hf_config takes the module.
# Post-LN TextEncoders: BERT (RoBERTa with position_offset) holds every one with token types and no
# embedding_dim, with or without pooler (an ELECTRA whose embedding_size equals hidden_size is one: it is
# written as a BertModel without pooler, the same function); ELECTRA is the only one with embedding_dim;
# DistilBERT is the only one without token types (type_vocab_size=0; no pooler, layer_norm_eps=1e-12).
FAMILIES: dict[type, tuple[tuple[ModuleType, str], ...]] = {
    TextEncoder: (
        (bert, "text"),
        (electra, "text"),
        (distilbert, "text"),
        (mpnet, "text"),
        (clip, "text"),
        (siglip, "text"),
    ),
    ViTEncoder: ((vit, "image"), (clip, "vision"), (siglip, "vision"), (dinov2, "image")),
    NaFlexEncoder: ((siglip, "vision"),),
    DebertaEncoder: ((deberta, "text"),),
    ResNetEncoder: ((resnet, "image"),),
    SpectrogramEncoder: ((ast, "audio"),),
    WhisperEncoder: ((whisper, "audio"),),
    Wav2Vec2Encoder: ((wav2vec2, "audio"),),
}
# Fields that change neither the weights nor the function of an exported model.
UNWRITTEN = ("parent", "name", "dropout_rate", "aux_prefix", "channels_first")


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


def split(
    params: dict, shapes: dict[str, tuple[int, ...] | np.ndarray], key_map: KeyMap
) -> dict[str, np.ndarray]:
    """The inverse of mmjax.port.common.merge: the HF state dict (float32) of `params`, strictly.

    Every missing, unused or mis-shaped param is collected into one ValueError.
    """
    flat = {"/".join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    state_dict, used, problems = {}, set(), []
    for key, shape in shapes.items():
        if isinstance(shape, np.ndarray):  # a constant (BatchNorm's int64 step counter), written as is
            state_dict[key] = shape
            continue
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


def family_of(module: nn.Module, params: dict) -> tuple[ModuleType, str, dict, dict[str, tuple[int, ...]]]:
    """(port file, tower, HF config, HF key shapes) of the first family in FAMILIES that holds `module`;
    ValueError with every family's reason when none does."""
    candidates = FAMILIES.get(type(module))
    if candidates is None:
        supported = sorted(cls.__name__ for cls in FAMILIES)
        raise TypeError(f"{type(module).__name__} has no Hugging Face export; supported: {supported}")
    reasons = []
    for family, tower in candidates:
        try:
            config = family.hf_config(module, params, tower)
            shapes = family.hf_shapes(config, module, tower)
            check_fields(module, family.encoder_from_config(config, set(shapes), tower), config["model_type"])
        except ValueError as e:
            reasons.append(str(e))
            continue
        return family, tower, config, shapes
    raise ValueError("\n".join(reasons))


def to_hf(module: nn.Module, params: dict, path: str | Path) -> None:
    """Writes `module` with `params` (as from_hf returns them) as an HF checkpoint folder at `path`.

    The family is the first of FAMILIES[type(module)] that can hold the module (TextEncoder: BertModel, or
    RobertaModel with position_offset, ElectraModel with embedding_dim, DistilBertModel with
    type_vocab_size=0, ...; ViTEncoder: ViTModel on [B, C, H, W] whatever `channels_first`,
    ...); weights are written as float32, dropout keeps HF's defaults. A module without a pooler gets none,
    so transformers initialises its pooler randomly. A CLIP tower is written as CLIPTextModel/CLIPVisionModel
    (*WithProjection with a projection), ResNetEncoder (its variables, batch_stats included) as ResNetModel,
    SpectrogramEncoder as ASTModel, WhisperEncoder as HF's lone WhisperEncoder.
    """
    family, tower, config, shapes = family_of(module, params)
    state_dict = split(params, shapes, partial(family.key_map, module=module, tower=tower))
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state_dict, folder / "model.safetensors", metadata={"format": "pt"})
