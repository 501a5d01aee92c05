"""CLIP (HF CLIPModel, CLIPTextModel, CLIPVisionModel, *WithProjection) -> mmjax TextEncoder / ViTEncoder.

A CLIPModel checkpoint holds both towers (`from_hf(path, tower="text" | "vision")`); CLIPTextModel and
CLIPVisionModel checkpoints (model_type clip_text_model / clip_vision_model) hold one, see TEXT_MODEL and
VISION_MODEL.
"""

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.port.common import Transform, conv_patch_kernel, identity, map_layer_key, transpose

TOWERS = ("text", "vision")
PREFIX = {"text": "text_model.", "vision": "vision_model."}  # v5 CLIPTextModel/CLIPVisionModel save none
PROJECTION = {"text": "text_projection.weight", "vision": "visual_projection.weight"}

# Fields HF fills in when config.json leaves them out (CLIPTextConfig / CLIPVisionConfig defaults).
DEFAULTS = {
    "text": dict(
        vocab_size=49408,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        eos_token_id=49407,
    ),
    "vision": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
}

# HF keys (tower prefix stripped) dropped on purpose: position-id buffers of old checkpoints, and the key
# bias (it adds q.b_k to every logit of a query, which softmax cancels; mmjax's attention has none).
IGNORED = (r"embeddings\.position_ids", r"encoder\.layers\.\d+\.self_attn\.k_proj\.bias")

OUTSIDE_LAYERS = {  # per tower: HF key (tower prefix stripped) -> (param path, transform)
    "text": {
        "embeddings.token_embedding.weight": ("token_embedding/embedding", identity),
        "embeddings.position_embedding.weight": ("position_embedding/embedding", identity),
        "final_layer_norm.weight": ("encoder/final_ln/scale", identity),
        "final_layer_norm.bias": ("encoder/final_ln/bias", identity),
    },
    "vision": {
        "embeddings.class_embedding": ("cls/cls", identity),
        "embeddings.patch_embedding.weight": ("patch_embedding/proj/kernel", conv_patch_kernel),
        "embeddings.position_embedding.weight": ("position_embedding/embedding", identity),
        "pre_layrnorm.weight": ("embedding_ln/scale", identity),  # sic: HF's spelling
        "pre_layrnorm.bias": ("embedding_ln/bias", identity),
        "post_layernorm.weight": ("pooled_ln/scale", identity),
        "post_layernorm.bias": ("pooled_ln/bias", identity),
    },
}
LAYER = {  # HF module inside encoder.layers.{i} -> mmjax module inside encoder/layer_{i}
    "self_attn.q_proj": "self_attn/query",
    "self_attn.k_proj": "self_attn/key",
    "self_attn.v_proj": "self_attn/value",
    "self_attn.out_proj": "self_attn/out",
    "layer_norm1": "self_attn_ln",
    "mlp.fc1": "mlp/fc1",
    "mlp.fc2": "mlp/fc2",
    "layer_norm2": "mlp_ln",
}


def tower_config(hf_config: dict, tower: str) -> dict:
    """The tower's config with HF's defaults: CLIPModel nests it in `{tower}_config` (or the older
    `{tower}_config_dict`, which HF prefers); a one-tower checkpoint's config is its own."""
    if hf_config["model_type"] == "clip":
        nested = hf_config.get(f"{tower}_config_dict") or hf_config.get(f"{tower}_config") or {}
        return DEFAULTS[tower] | nested
    return DEFAULTS[tower] | hf_config


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder | ViTEncoder:
    """The pre-LN TextEncoder (text) or ViTEncoder on [B, C, H, W] `pixel_values` (vision) computing the CLIP
    tower `hf_config` describes, with the projection when `keys` hold it."""
    config = tower_config(hf_config, tower)
    common = dict(
        width=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        pre_ln=True,
        activation=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"],
        projection_dim=hf_config.get("projection_dim", 512) if PROJECTION[tower] in keys else None,
        aux_prefix="",
    )
    if tower == "text":
        eos = config["eos_token_id"]
        pool = "max_id" if eos == 2 else "eos"  # HF: eos_token_id=2 marks old configs, which pool the max id
        return TextEncoder(
            vocab_size=config["vocab_size"],
            max_len=config["max_position_embeddings"],
            type_vocab_size=0,
            embedding_ln=False,
            causal=True,
            pool=pool,
            eos_token_id=eos,
            **common,
        )
    return ViTEncoder(
        patch_size=config["patch_size"],
        patch_bias=False,
        embedding_ln=True,
        final_ln=False,
        pooled_ln=True,
        channels_first=True,
        **common,
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids, or one image of the checkpoint's size (it fixes the
    position table's length)."""
    if tower == "text":
        return (jnp.zeros((1, 2), jnp.int32),)
    config = tower_config(hf_config, tower)
    size = config["image_size"]
    return (jnp.zeros((1, config["num_channels"], size, size), jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF CLIP key -> (param path of `tower`'s encoder, transform); None for the other tower's keys,
    logit_scale and IGNORED keys."""
    other = "vision" if tower == "text" else "text"
    if key == "logit_scale" or key.startswith(PREFIX[other]) or key == PROJECTION[other]:
        return None
    if key == PROJECTION[tower]:
        return "projection/kernel", transpose
    key = key.removeprefix(PREFIX[tower])
    if any(re.fullmatch(p, key) for p in IGNORED):
        return None
    if key in OUTSIDE_LAYERS[tower]:
        return OUTSIDE_LAYERS[tower][key]
    return map_layer_key(key, LAYER, module.num_heads)  # KeyError for unknown keys


# One-tower checkpoints: the same port with the tower fixed by the model_type (FAMILIES' entries).
TEXT_MODEL = SimpleNamespace(
    TOWERS=("text",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
VISION_MODEL = SimpleNamespace(
    TOWERS=("vision",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
