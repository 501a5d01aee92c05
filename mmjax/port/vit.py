"""ViT (HF ViTModel) <-> mmjax ViTEncoder: config, dummy input, key map and the shapes for export."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.image import ViTEncoder
from mmjax.port.common import Transform, conv_patch_kernel, identity, layer_shapes, map_key, transpose

TOWERS = ("image",)
# The key bias is dropped on purpose: it adds q.b_k to every logit of a query, which softmax cancels.
IGNORED = (r"encoder\.layer\.\d+\.attention\.attention\.key\.bias",)

EMBEDDINGS = {  # HF key -> (ViTEncoder param path, transform)
    "embeddings.cls_token": ("cls/cls", lambda w: w.reshape(-1)),  # [1, 1, D]
    "embeddings.position_embeddings": ("position_embedding/embedding", lambda w: w[0]),  # [1, 1 + N, D]
    "embeddings.patch_embeddings.projection.weight": ("patch_embedding/proj/kernel", conv_patch_kernel),
    "embeddings.patch_embeddings.projection.bias": ("patch_embedding/proj/bias", identity),
    "layernorm.weight": ("encoder/final_ln/scale", identity),
    "layernorm.bias": ("encoder/final_ln/bias", identity),
    "pooler.dense.weight": ("pooler/kernel", transpose),
    "pooler.dense.bias": ("pooler/bias", identity),
}
LAYER = {  # HF module inside encoder.layer.{i} -> mmjax module inside encoder/layer_{i}
    "attention.attention.query": "self_attn/query",
    "attention.attention.key": "self_attn/key",
    "attention.attention.value": "self_attn/value",
    "attention.output.dense": "self_attn/out",
    "layernorm_before": "self_attn_ln",
    "intermediate.dense": "mlp/fc1",
    "output.dense": "mlp/fc2",
    "layernorm_after": "mlp_ln",
}


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> ViTEncoder:
    """A pre-LN ViTEncoder on [B, C, H, W] `pixel_values` computing the HF ViTModel `hf_config` describes."""
    return ViTEncoder(
        patch_size=hf_config["patch_size"],
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        pre_ln=True,
        activation=hf_config.get("hidden_act", "gelu"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        pooler="pooler.dense.weight" in keys,
        qkv_bias=hf_config.get("qkv_bias", True),
        channels_first=True,
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one image of the checkpoint's size, which fixes the position table's length."""
    size = hf_config.get("image_size", 224)
    return (jnp.zeros((1, hf_config.get("num_channels", 3), size, size), jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF ViTModel key -> (ViTEncoder param path, transform); None for IGNORED keys."""
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)


def hf_config(module: ViTEncoder, params: dict, tower: str) -> dict:
    """The HF ViTModel config of `module`; image size and channels come from the param shapes.

    The inverse of encoder_from_config; mmjax.port.export checks that it gives `module` back.
    """
    patches = params["position_embedding"]["embedding"].shape[0] - 1
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ValueError(
            f"position_embedding/embedding holds {patches} patches, not a square grid: "
            "HF ViT needs square images"
        )
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "image_size": grid * module.patch_size,
        "patch_size": module.patch_size,
        "num_channels": params["patch_embedding"]["proj"]["kernel"].shape[0] // module.patch_size**2,
        "qkv_bias": module.qkv_bias,
    }


def hf_shapes(hf_config: dict, module: ViTEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key (the pooler's only when `module` has one)."""
    width, patch = hf_config["hidden_size"], hf_config["patch_size"]
    shapes = {
        "embeddings.cls_token": (1, 1, width),
        "embeddings.position_embeddings": (1, 1 + (hf_config["image_size"] // patch) ** 2, width),
        "embeddings.patch_embeddings.projection.weight": (width, hf_config["num_channels"], patch, patch),
        "embeddings.patch_embeddings.projection.bias": (width,),
        "layernorm.weight": (width,),
        "layernorm.bias": (width,),
    }
    if module.pooler:
        shapes |= {"pooler.dense.weight": (width, width), "pooler.dense.bias": (width,)}
    no_bias = () if hf_config["qkv_bias"] else ("self_attn/query", "self_attn/key", "self_attn/value")
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth, no_bias=no_bias)
