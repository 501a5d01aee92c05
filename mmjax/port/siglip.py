"""SigLIP and SigLIP 2 (HF SiglipModel, Siglip2Model and their one-tower models) <-> mmjax encoders.

A SiglipModel/Siglip2Model checkpoint holds both towers (`from_hf(path, tower="text" | "vision")`); one-tower
checkpoints (model_type siglip[2]_text_model / siglip[2]_vision_model) hold one: TEXT_MODEL, VISION_MODEL.
- text: a pre-LN TextEncoder without causal mask; pooled = the last position (whatever the padding) after
  the final LayerNorm, embeds = `head` (Dense with bias) of it, which is HF's pooler_output.
- vision (SigLIP): a ViTEncoder without [CLS]; pooled = the attention-pooling head (HF's pooler_output),
  or with vision_use_head=False (HF's pooler_output is None) the token mean, as SiglipForImageClassification
  pools. Other image sizes get the position table resized (HF's interpolate_pos_encoding=True).
- vision (SigLIP 2): a NaFlexEncoder on HF's (pixel_values, pixel_attention_mask, spatial_shapes).
The model's logits: `logits_per_image(image_pooled, text_embeds, *logit_scale_and_bias(path))`.
"""

import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.naflex import NaFlexEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.hf_cache import checkpoint_dir
from mmjax.port.clip import LAYER  # SigLIP's layers are CLIP's, key for key
from mmjax.port.common import (
    Transform,
    conv_patch_kernel,
    identity,
    layer_shapes,
    map_layer_key,
    read_state_dict,
    transpose,
)

TOWERS = ("text", "vision")
PREFIX = {"text": "text_model.", "vision": "vision_model."}  # v5 one-tower models save none

# Fields HF fills in when config.json leaves them out (Siglip[2]TextConfig / Siglip[2]VisionConfig).
COMMON = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
DEFAULTS = {
    "text": COMMON | dict(vocab_size=32000, max_position_embeddings=64, projection_size=None),
    "vision": COMMON | dict(num_channels=3, image_size=224, patch_size=16, vision_use_head=True),
    "vision2": COMMON | dict(num_channels=3, num_patches=256, patch_size=16, vision_use_head=True),
}

# HF keys (tower prefix stripped) dropped on purpose: position-id buffers of old checkpoints, and the key
# bias (it adds q.b_k to every logit of a query, which softmax cancels; mmjax's attention has none).
IGNORED = (r"embeddings\.position_ids", r"encoder\.layers\.\d+\.self_attn\.k_proj\.bias")

HEAD = {  # vision head (HF SiglipMultiheadAttentionPoolingHead) -> (mmjax.nn.pooling.AttentionPool path, fn)
    "head.probe": ("head/probe", lambda w: w.reshape(-1)),  # [1, 1, D]
    "head.layernorm.weight": ("head/ln/scale", identity),
    "head.layernorm.bias": ("head/ln/bias", identity),
    "head.mlp.fc1.weight": ("head/mlp/fc1/kernel", transpose),
    "head.mlp.fc1.bias": ("head/mlp/fc1/bias", identity),
    "head.mlp.fc2.weight": ("head/mlp/fc2/kernel", transpose),
    "head.mlp.fc2.bias": ("head/mlp/fc2/bias", identity),
    "head.attention.out_proj.bias": ("head/out/bias", identity),
}
OUTSIDE_LAYERS = {  # per tower: HF key (tower prefix stripped) -> (param path, transform)
    "text": {
        "embeddings.token_embedding.weight": ("token_embedding/embedding", identity),
        "embeddings.position_embedding.weight": ("position_embedding/embedding", identity),
        "final_layer_norm.weight": ("encoder/final_ln/scale", identity),
        "final_layer_norm.bias": ("encoder/final_ln/bias", identity),
        "head.weight": ("projection/kernel", transpose),
        "head.bias": ("projection/bias", identity),
    },
    "vision": HEAD
    | {
        "embeddings.patch_embedding.weight": ("patch_embedding/proj/kernel", conv_patch_kernel),
        "embeddings.patch_embedding.bias": ("patch_embedding/proj/bias", identity),
        "embeddings.position_embedding.weight": ("position_embedding/embedding", identity),
        "post_layernorm.weight": ("encoder/final_ln/scale", identity),
        "post_layernorm.bias": ("encoder/final_ln/bias", identity),
    },
    "vision2": HEAD
    | {
        "embeddings.patch_embedding.weight": ("patch_embedding/kernel", transpose),  # a Linear
        "embeddings.patch_embedding.bias": ("patch_embedding/bias", identity),
        "embeddings.position_embedding.weight": ("position_embedding", identity),
        "post_layernorm.weight": ("encoder/final_ln/scale", identity),
        "post_layernorm.bias": ("encoder/final_ln/bias", identity),
    },
}


def kind(hf_config: dict, tower: str) -> str:
    """The key of DEFAULTS / OUTSIDE_LAYERS: text, vision (SigLIP) or vision2 (SigLIP 2's NaFlex)."""
    return "vision2" if tower == "vision" and hf_config["model_type"].startswith("siglip2") else tower


def tower_config(hf_config: dict, tower: str) -> dict:
    """The tower's config with HF's defaults: Siglip[2]Model nests it in `{tower}_config`; a one-tower
    checkpoint's config is its own."""
    defaults = DEFAULTS[kind(hf_config, tower)]
    if hf_config["model_type"] in ("siglip", "siglip2"):
        hf_config = hf_config.get(f"{tower}_config") or {}
    config = defaults | hf_config
    return config | {"projection_size": config.get("projection_size") or config["hidden_size"]}


def encoder_from_config(
    hf_config: dict, keys: set[str], tower: str
) -> TextEncoder | ViTEncoder | NaFlexEncoder:
    """The TextEncoder (text), ViTEncoder on [B, C, H, W] `pixel_values` (SigLIP vision) or NaFlexEncoder
    (SigLIP 2 vision) computing the tower `hf_config` describes."""
    config = tower_config(hf_config, tower)
    common = dict(
        width=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        activation=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"],
        aux_prefix="",
    )
    if tower == "text":
        return TextEncoder(
            vocab_size=config["vocab_size"],
            max_len=config["max_position_embeddings"],
            type_vocab_size=0,
            pre_ln=True,
            embedding_ln=False,
            pool="last",
            projection_dim=config["projection_size"],
            projection_bias=True,
            **common,
        )
    pool = "map" if config["vision_use_head"] else "mean"
    if kind(hf_config, tower) == "vision2":
        return NaFlexEncoder(config["patch_size"], config["num_patches"], pool=pool, **common)
    return ViTEncoder(
        patch_size=config["patch_size"],
        class_token=False,
        image_size=config["image_size"],
        position_resize="bicubic",
        pool=pool,
        channels_first=True,
        **common,
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids, one image of the checkpoint's size, or (SigLIP 2) one image
    filling the position grid."""
    if tower == "text":
        return (jnp.zeros((1, 2), jnp.int32),)
    config = tower_config(hf_config, tower)
    channels, patch = config["num_channels"], config["patch_size"]
    if kind(hf_config, tower) == "vision2":
        n = config["num_patches"]
        grid = round(n**0.5)
        patches = jnp.zeros((1, n, channels * patch * patch), jnp.float32)
        return patches, jnp.ones((1, n), jnp.int32), jnp.array([[grid, grid]], jnp.int32)
    size = config["image_size"]
    return (jnp.zeros((1, channels, size, size), jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF SigLIP key -> (param path of `tower`'s encoder, transform); None for the other tower's keys,
    logit_scale/logit_bias (see logit_scale_and_bias) and IGNORED keys."""
    other = "vision" if tower == "text" else "text"
    if key in ("logit_scale", "logit_bias") or key.startswith(PREFIX[other]):
        return None
    key = key.removeprefix(PREFIX[tower])
    if any(re.fullmatch(p, key) for p in IGNORED):
        return None
    heads = module.num_heads
    if key == "head.attention.in_proj_weight":  # [3D, D] -> [D, 3, heads, head_dim]
        return "head/in_proj_kernel", lambda w: w.T.reshape(w.shape[1], 3, heads, -1)
    if key == "head.attention.in_proj_bias":
        return "head/in_proj_bias", lambda b: b.reshape(3, heads, -1)
    if key == "head.attention.out_proj.weight":
        return "head/out/kernel", lambda w: w.T.reshape(heads, -1, w.shape[0])
    table = OUTSIDE_LAYERS["vision2" if isinstance(module, NaFlexEncoder) else tower]
    if key in table:
        return table[key]
    return map_layer_key(key, LAYER, heads)  # KeyError for unknown keys


def hf_config(module: TextEncoder | ViTEncoder | NaFlexEncoder, params: dict, tower: str) -> dict:
    """The one-tower HF config (SiglipTextModel, SiglipVisionModel or Siglip2VisionModel) of `module`; the
    inverse of encoder_from_config, ValueError for modules no SigLIP tower is."""
    common = {
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
    }
    if tower == "text":
        if module.projection_dim is None:
            raise ValueError("a SigLIP text tower ends in a head: projection_dim must be set")
        return common | {
            "architectures": ["SiglipTextModel"],
            "model_type": "siglip_text_model",
            "vocab_size": module.vocab_size,
            "max_position_embeddings": module.max_len,
            "projection_size": module.projection_dim,
        }
    head = {"vision_use_head": module.pool == "map"}
    if isinstance(module, NaFlexEncoder):
        channels = params["patch_embedding"]["kernel"].shape[0] // module.patch_size**2
        return (
            common
            | head
            | {
                "architectures": ["Siglip2VisionModel"],
                "model_type": "siglip2_vision_model",
                "num_patches": module.num_patches,
                "patch_size": module.patch_size,
                "num_channels": channels,
            }
        )
    if module.image_size is None:
        raise ValueError("a SigLIP vision tower resizes its positions: image_size must be set")
    return (
        common
        | head
        | {
            "architectures": ["SiglipVisionModel"],
            "model_type": "siglip_vision_model",
            "image_size": module.image_size,
            "patch_size": module.patch_size,
            "num_channels": params["patch_embedding"]["proj"]["kernel"].shape[0] // module.patch_size**2,
        }
    )


def hf_shapes(hf_config: dict, module: nn.Module, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key of the one-tower checkpoint."""
    width, mlp_dim = hf_config["hidden_size"], hf_config["intermediate_size"]
    shapes = layer_shapes(LAYER, width, mlp_dim, hf_config["num_hidden_layers"], prefix="encoder.layers")
    if tower == "text":
        return shapes | {
            "embeddings.token_embedding.weight": (hf_config["vocab_size"], width),
            "embeddings.position_embedding.weight": (hf_config["max_position_embeddings"], width),
            "final_layer_norm.weight": (width,),
            "final_layer_norm.bias": (width,),
            "head.weight": (hf_config["projection_size"], width),
            "head.bias": (hf_config["projection_size"],),
        }
    patch, channels = hf_config["patch_size"], hf_config["num_channels"]
    if hf_config["model_type"].startswith("siglip2"):
        positions = hf_config["num_patches"]
        shapes["embeddings.patch_embedding.weight"] = (width, channels * patch * patch)
    else:
        positions = (hf_config["image_size"] // patch) ** 2
        shapes["embeddings.patch_embedding.weight"] = (width, channels, patch, patch)
    shapes |= {
        "embeddings.patch_embedding.bias": (width,),
        "embeddings.position_embedding.weight": (positions, width),
        "post_layernorm.weight": (width,),
        "post_layernorm.bias": (width,),
    }
    if not hf_config["vision_use_head"]:
        return shapes
    return shapes | {
        "head.probe": (1, 1, width),
        "head.attention.in_proj_weight": (3 * width, width),
        "head.attention.in_proj_bias": (3 * width,),
        "head.attention.out_proj.weight": (width, width),
        "head.attention.out_proj.bias": (width,),
        "head.layernorm.weight": (width,),
        "head.layernorm.bias": (width,),
        "head.mlp.fc1.weight": (mlp_dim, width),
        "head.mlp.fc1.bias": (mlp_dim,),
        "head.mlp.fc2.weight": (width, mlp_dim),
        "head.mlp.fc2.bias": (width,),
    }


def logit_scale_and_bias(path: str | Path) -> tuple[float, float]:
    """The logit_scale and logit_bias of the Siglip[2]Model checkpoint at `path` (folder or model id)."""
    state = read_state_dict(checkpoint_dir(path))
    return float(np.asarray(state["logit_scale"]).item()), float(np.asarray(state["logit_bias"]).item())


def logits_per_image(
    image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: float, logit_bias: float
) -> jax.Array:
    """SigLIP's logits [images, texts]: cosine similarity * exp(logit_scale) + logit_bias, the sigmoid of
    which is the match probability. image_embeds: the vision tower's aux["pooled"]; text_embeds: the text
    tower's aux["embeds"]."""
    image = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return image @ text.T * jnp.exp(logit_scale) + logit_bias


# One-tower checkpoints: the same port with the tower fixed by the model_type (FAMILIES' entries).
TEXT_MODEL = SimpleNamespace(
    TOWERS=("text",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
VISION_MODEL = SimpleNamespace(
    TOWERS=("vision",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
