"""ResNet (HF ResNetModel, ResNetForImageClassification) <-> mmjax ResNetEncoder.

The module holds two collections, so the key map fills the variables {"params": ..., "batch_stats": ...}
(paths start with the collection) and from_hf returns them in place of params; to_hf takes them back and
writes BatchNorm's step counters (which nothing reads: HF's momentum is fixed) as zeros.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.encoders.resnet import LAYER_TYPES, ResNetEncoder
from mmjax.nn.transformer import ACTIVATIONS
from mmjax.port.common import Transform, identity

TOWERS = ("image",)
PREFIX = "resnet."  # ResNetForImageClassification's backbone
# The classifier head and BatchNorm's step counters are dropped on purpose.
IGNORED = (r"classifier\..*", r".*\.normalization\.num_batches_tracked")

DEFAULTS = dict(  # ResNetConfig's, for fields an older config.json leaves out
    num_channels=3,
    embedding_size=64,
    hidden_sizes=[256, 512, 1024, 2048],
    depths=[3, 4, 6, 3],
    layer_type="bottleneck",
    hidden_act="relu",
    downsample_in_first_stage=False,
    downsample_in_bottleneck=False,
)

# embedder.embedder | encoder.stages.{s}.layers.{l}.shortcut | encoder.stages.{s}.layers.{l}.layer.{k}
KEY = re.compile(
    r"(?:embedder\.embedder|encoder\.stages\.(\d+)\.layers\.(\d+)\.(shortcut|layer\.(\d+)))\.(\w+\.\w+)"
)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [O, I, H, W] -> flax Conv kernel [H, W, I, O]."""
    return w.transpose(2, 3, 1, 0)


LEAVES = {  # HF leaf of a ResNetConvLayer / ResNetShortCut -> (collection, ConvNorm leaf, transform)
    "convolution.weight": ("params", "conv/kernel", conv_kernel),
    "normalization.weight": ("params", "norm/scale", identity),
    "normalization.bias": ("params", "norm/bias", identity),
    "normalization.running_mean": ("batch_stats", "norm/mean", identity),
    "normalization.running_var": ("batch_stats", "norm/var", identity),
}


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> ResNetEncoder:
    """A ResNetEncoder on [B, C, H, W] `pixel_values` computing the HF ResNetModel `hf_config` describes."""
    config = DEFAULTS | hf_config
    if config["layer_type"] not in LAYER_TYPES:
        raise ValueError(f"config.json: layer_type={config['layer_type']!r} is not one of {LAYER_TYPES}")
    if config["hidden_act"] not in ACTIVATIONS:
        raise ValueError(
            f"config.json: hidden_act={config['hidden_act']!r} is not supported; known: {sorted(ACTIVATIONS)}"
        )
    return ResNetEncoder(
        embedding_size=config["embedding_size"],
        hidden_sizes=tuple(config["hidden_sizes"]),
        depths=tuple(config["depths"]),
        layer_type=config["layer_type"],
        activation=config["hidden_act"],
        downsample_in_first_stage=config["downsample_in_first_stage"],
        downsample_in_bottleneck=config["downsample_in_bottleneck"],
        channels_first=True,
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one 32x32 image (any size works later: the weights do not depend on it)."""
    return (jnp.zeros((1, hf_config.get("num_channels", 3), 32, 32), jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF ResNetModel key (`resnet.` prefix allowed) -> (variables path, transform); None for IGNORED keys."""
    key = key.removeprefix(PREFIX)
    if any(re.fullmatch(p, key) for p in IGNORED):
        return None
    match = KEY.fullmatch(key)
    if match is None or match[5] not in LEAVES:
        raise KeyError(key)
    stage, layer, part, conv, leaf = match.groups()
    collection, path, transform = LEAVES[leaf]
    if stage is None:
        module_path = "embedder"
    else:
        module_path = f"stage_{stage}_layer_{layer}/" + ("shortcut" if part == "shortcut" else f"conv_{conv}")
    return f"{collection}/{module_path}/{path}", transform


def hf_config(module: ResNetEncoder, variables: dict, tower: str) -> dict:
    """The HF ResNetModel config of `module` (num_channels from the stem's kernel); the inverse of
    encoder_from_config."""
    return {
        "architectures": ["ResNetModel"],
        "model_type": "resnet",
        "num_channels": variables["params"]["embedder"]["conv"]["kernel"].shape[2],
        "embedding_size": module.embedding_size,
        "hidden_sizes": list(module.hidden_sizes),
        "depths": list(module.depths),
        "layer_type": module.layer_type,
        "hidden_act": module.activation,
        "downsample_in_first_stage": module.downsample_in_first_stage,
        "downsample_in_bottleneck": module.downsample_in_bottleneck,
    }


def conv_norm_shapes(
    prefix: str, out: int, inputs: int, kernel: int
) -> dict[str, tuple[int, ...] | np.ndarray]:
    """HF keys of one bias-free Conv2d + BatchNorm2d; the step counter is a constant int64 zero."""
    norm = {
        f"{prefix}.normalization.{leaf}": (out,) for leaf in ("weight", "bias", "running_mean", "running_var")
    }
    counter = {f"{prefix}.normalization.num_batches_tracked": np.zeros((), np.int64)}
    return {f"{prefix}.convolution.weight": (out, inputs, kernel, kernel)} | norm | counter


def hf_shapes(hf_config: dict, module: ResNetEncoder, tower: str) -> dict[str, tuple[int, ...] | np.ndarray]:
    """Shapes of every HF ResNetModel key (its BatchNorm step counters as constants)."""
    shapes = conv_norm_shapes("embedder.embedder", hf_config["embedding_size"], hf_config["num_channels"], 7)
    inputs = hf_config["embedding_size"]
    for s, (out, depth) in enumerate(zip(hf_config["hidden_sizes"], hf_config["depths"], strict=True)):
        for i in range(depth):
            prefix = f"encoder.stages.{s}.layers.{i}"
            stride = 2 if i == 0 and (s > 0 or hf_config["downsample_in_first_stage"]) else 1
            if inputs != out or stride != 1:
                shapes |= conv_norm_shapes(f"{prefix}.shortcut", out, inputs, 1)
            if hf_config["layer_type"] == "basic":
                convs = [(out, inputs, 3), (out, out, 3)]
            else:
                reduced = out // 4  # HF's fixed reduction
                convs = [(reduced, inputs, 1), (reduced, reduced, 3), (out, reduced, 1)]
            for k, conv in enumerate(convs):
                shapes |= conv_norm_shapes(f"{prefix}.layer.{k}", *conv)
            inputs = out
    return shapes
