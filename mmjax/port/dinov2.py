"""DINOv2 and DINOv2 with registers (HF Dinov2Model, Dinov2WithRegistersModel) <-> mmjax ViTEncoder.

Layer scale, SwiGLU MLPs, register tokens and the mask token (`bool_masked_pos`) are kept; images of any
size get the position table resized as HF's interpolate_pos_encoding does (torch bicubic, antialiased with
registers), their pixels past the last whole patch dropped. Dinov2ForImageClassification and Dinov2Backbone
checkpoints load their encoder (`dinov2.` / `dinov2_with_registers.` prefixes stripped; pass
dont_load=[r"classifier\\..*"]).
"""

import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.image import ViTEncoder
from mmjax.port.common import Transform, conv_patch_kernel, identity, layer_shapes, map_key

TOWERS = ("image",)
REGISTERS = "dinov2_with_registers"
# The key bias is dropped on purpose: it adds q.b_k to every logit of a query, which softmax cancels.
IGNORED = (r"encoder\.layer\.\d+\.attention\.attention\.key\.bias",)
LAYER_SCALE = re.compile(r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1")

EMBEDDINGS = {  # HF key -> (ViTEncoder param path, transform)
    "embeddings.cls_token": ("cls/cls", lambda w: w.reshape(-1)),  # [1, 1, D]
    "embeddings.mask_token": ("mask_token", lambda w: w.reshape(-1)),  # [1, D]
    "embeddings.register_tokens": ("registers", lambda w: w[0]),  # [1, R, D]
    "embeddings.position_embeddings": ("position_embedding/embedding", lambda w: w[0]),  # [1, 1 + N, D]
    "embeddings.patch_embeddings.projection.weight": ("patch_embedding/proj/kernel", conv_patch_kernel),
    "embeddings.patch_embeddings.projection.bias": ("patch_embedding/proj/bias", identity),
    "layernorm.weight": ("encoder/final_ln/scale", identity),
    "layernorm.bias": ("encoder/final_ln/bias", identity),
}
LAYER = {  # HF module inside encoder.layer.{i} -> mmjax module inside encoder/layer_{i}
    "norm1": "self_attn_ln",
    "attention.attention.query": "self_attn/query",
    "attention.attention.key": "self_attn/key",
    "attention.attention.value": "self_attn/value",
    "attention.output.dense": "self_attn/out",
    "norm2": "mlp_ln",
}
MLP = {"mlp.fc1": "mlp/fc1", "mlp.fc2": "mlp/fc2"}
SWIGLU = {"mlp.weights_in": "mlp/fc1", "mlp.weights_out": "mlp/fc2"}  # weights_in: [gate; up] stacked


def square(value: int | list[int], field: str) -> int:
    """An int or an [n, n] list as n; HF reshapes the position table into a square grid, so other shapes
    are refused naming the config field."""
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return value[0]
    raise ValueError(f"{field}={value!r}: only square sizes are supported (HF's position table is square)")


def swiglu_hidden(mlp_hidden: int) -> int:
    """HF's SwiGLU hidden size: two thirds of hidden_size * mlp_ratio, rounded up to a multiple of 8."""
    return (int(mlp_hidden * 2 / 3) + 7) // 8 * 8


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> ViTEncoder:
    """The pre-LN ViTEncoder on [B, C, H, W] `pixel_values` computing the HF Dinov2(WithRegisters)Model
    `hf_config` describes (missing fields take HF's defaults)."""
    registers = hf_config["model_type"] == REGISTERS
    width = hf_config.get("hidden_size", 768)
    mlp_hidden = int(width * hf_config.get("mlp_ratio", 4))
    swiglu = hf_config.get("use_swiglu_ffn", False)
    patch = square(hf_config.get("patch_size", 16 if registers else 14), "patch_size")
    return ViTEncoder(
        patch_size=patch,
        width=width,
        depth=hf_config.get("num_hidden_layers", 12),
        num_heads=hf_config.get("num_attention_heads", 12),
        mlp_dim=swiglu_hidden(mlp_hidden) if swiglu else mlp_hidden,
        pre_ln=True,
        activation="silu" if swiglu else hf_config.get("hidden_act", "gelu"),  # SwiGLU ignores hidden_act
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-6),
        qkv_bias=hf_config.get("qkv_bias", True),
        num_registers=hf_config.get("num_register_tokens", 4) if registers else 0,
        mask_token=registers or hf_config.get("use_mask_token", True),
        image_size=square(hf_config.get("image_size", 224), "image_size"),
        position_resize="bicubic_antialias" if registers else "bicubic",
        layer_scale=hf_config.get("layerscale_value", 1.0),
        gated_mlp=swiglu,
        channels_first=True,
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one image of the checkpoint's size."""
    size = square(hf_config.get("image_size", 224), "image_size")
    return (jnp.zeros((1, hf_config.get("num_channels", 3), size, size), jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF DINOv2 key (a task model's `dinov2.` / `dinov2_with_registers.` prefix stripped) -> (ViTEncoder
    param path, transform); None for IGNORED keys."""
    key = re.sub(r"^dinov2(_with_registers)?\.", "", key)
    match = LAYER_SCALE.fullmatch(key)
    if match:
        return f"encoder/layer_{match[1]}/{'self_attn' if match[2] == '1' else 'mlp'}_layer_scale", identity
    layer = LAYER | (SWIGLU if module.gated_mlp else MLP)
    return map_key(key, IGNORED, EMBEDDINGS, layer, module.num_heads)


def mlp_ratio(module: ViTEncoder) -> int:
    """The integer mlp_ratio (HF's config holds an int) that gives the module's mlp_dim."""
    for ratio in range(1, module.mlp_dim + 1):
        hidden = module.width * ratio
        if (swiglu_hidden(hidden) if module.gated_mlp else hidden) == module.mlp_dim:
            return ratio
    rule = "swiglu_hidden(width * r)" if module.gated_mlp else "width * r"
    raise ValueError(f"mlp_dim={module.mlp_dim} is not {rule} for an integer DINOv2 mlp_ratio r")


def hf_config(module: ViTEncoder, params: dict, tower: str) -> dict:
    """The HF Dinov2Model config of `module` (Dinov2WithRegistersModel when it has registers or resizes
    positions with antialiasing); the inverse of encoder_from_config."""
    if module.image_size is None or module.layer_scale is None:
        raise ValueError(
            f"DINOv2 needs image_size (the position table's size) and layer_scale; got "
            f"image_size={module.image_size}, layer_scale={module.layer_scale}"
        )
    registers = module.num_registers > 0 or module.position_resize == "bicubic_antialias"
    config = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": REGISTERS if registers else "dinov2",
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "mlp_ratio": mlp_ratio(module),
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "image_size": module.image_size,
        "patch_size": module.patch_size,
        "num_channels": params["patch_embedding"]["proj"]["kernel"].shape[0] // module.patch_size**2,
        "qkv_bias": module.qkv_bias,
        "layerscale_value": module.layer_scale,
        "use_swiglu_ffn": module.gated_mlp,
    }
    if registers:
        return config | {"num_register_tokens": module.num_registers}
    return config | {"use_mask_token": module.mask_token}


def hf_shapes(hf_config: dict, module: ViTEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key."""
    width, patch, depth = hf_config["hidden_size"], hf_config["patch_size"], hf_config["num_hidden_layers"]
    shapes = {
        "embeddings.cls_token": (1, 1, width),
        "embeddings.position_embeddings": (1, 1 + (hf_config["image_size"] // patch) ** 2, width),
        "embeddings.patch_embeddings.projection.weight": (width, hf_config["num_channels"], patch, patch),
        "embeddings.patch_embeddings.projection.bias": (width,),
        "layernorm.weight": (width,),
        "layernorm.bias": (width,),
    }
    if module.mask_token:
        shapes["embeddings.mask_token"] = (1, width)
    if module.num_registers:
        shapes["embeddings.register_tokens"] = (1, module.num_registers, width)
    mlp = SWIGLU if module.gated_mlp else MLP
    no_bias = () if hf_config["qkv_bias"] else ("self_attn/query", "self_attn/key", "self_attn/value")
    shapes |= layer_shapes(LAYER | mlp, width, module.mlp_dim, depth, no_bias=no_bias)
    for i in range(depth):
        shapes |= {f"encoder.layer.{i}.layer_scale{j}.lambda1": (width,) for j in (1, 2)}
        if module.gated_mlp:  # weights_in stacks the gate and up projections
            shapes[f"encoder.layer.{i}.mlp.weights_in.weight"] = (2 * module.mlp_dim, width)
            shapes[f"encoder.layer.{i}.mlp.weights_in.bias"] = (2 * module.mlp_dim,)
    return shapes
