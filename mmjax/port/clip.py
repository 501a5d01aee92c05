"""CLIP (HF CLIPModel, CLIPTextModel, CLIPVisionModel, *WithProjection) <-> mmjax TextEncoder / ViTEncoder.

A CLIPModel checkpoint holds both towers (`from_hf(path, tower="text" | "vision")`); CLIPTextModel and
CLIPVisionModel checkpoints (model_type clip_text_model / clip_vision_model) hold one, see TEXT_MODEL and
VISION_MODEL. An mmjax module is one tower, so export writes a one-tower checkpoint: CLIPTextModel or
CLIPVisionModel, or the *WithProjection model when the module has a projection.
"""

import math
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.nn.transformer import ACTIVATIONS
from mmjax.port.common import Transform, conv_patch_kernel, identity, layer_shapes, map_layer_key, transpose

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


def check_config(config: dict, tower: str) -> None:
    """Raises naming the field of a tower config that HF computes but mmjax cannot (or HF cannot either)."""
    if config["hidden_act"] not in ACTIVATIONS:
        raise ValueError(
            f"config.json: hidden_act={config['hidden_act']!r} is not supported; known: {sorted(ACTIVATIONS)}"
        )
    if tower == "text" and not isinstance(config["eos_token_id"], int):
        raise ValueError(
            f"config.json: eos_token_id={config['eos_token_id']!r} is not an int (CLIP pools the first "
            "eos_token_id; 2 marks old configs, which pool the highest id)"
        )
    if tower == "vision":
        size, patch = config["image_size"], config["patch_size"]
        if not (isinstance(size, int) and isinstance(patch, int)) or size % patch:
            raise ValueError(
                f"config.json: image_size={size!r} is not a multiple of patch_size={patch!r} (mmjax's "
                "ViTEncoder cuts square images into whole patches)"
            )


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder | ViTEncoder:
    """The pre-LN TextEncoder (text) or ViTEncoder on [B, C, H, W] `pixel_values` (vision) computing the CLIP
    tower `hf_config` describes, with the projection when `keys` hold it."""
    config = tower_config(hf_config, tower)
    check_config(config, tower)
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


def hf_config(module: TextEncoder | ViTEncoder, params: dict, tower: str) -> dict:
    """The HF config of a one-tower checkpoint of `module` (CLIPTextModel / CLIPVisionModel, *WithProjection
    with a projection); image size and channels come from the param shapes. The inverse of
    encoder_from_config; pool="max_id" is written as HF's marker of old configs, eos_token_id=2."""
    projection = module.projection_dim is not None
    name = "CLIPTextModel" if tower == "text" else "CLIPVisionModel"
    config = {
        "architectures": [name + ("WithProjection" if projection else "")],
        "model_type": f"clip_{tower}_model",
        "hidden_size": module.width,
        "intermediate_size": module.mlp_dim,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
    } | ({"projection_dim": module.projection_dim} if projection else {})
    if tower == "text":
        if module.pool not in ("eos", "max_id"):
            raise ValueError(
                f"pool={module.pool!r}: CLIP's text tower pools the first eos_token_id (pool='eos') or, "
                "in old configs, the highest id (pool='max_id')"
            )
        eos = 2 if module.pool == "max_id" else module.eos_token_id
        return config | {
            "vocab_size": module.vocab_size,
            "max_position_embeddings": module.max_len,
            "eos_token_id": eos,
        }
    patches = params["position_embedding"]["embedding"].shape[0] - 1
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ValueError(
            f"position_embedding/embedding holds {patches} patches, not a square grid: "
            "HF CLIP needs square images"
        )
    return config | {
        "image_size": grid * module.patch_size,
        "patch_size": module.patch_size,
        "num_channels": params["patch_embedding"]["proj"]["kernel"].shape[0] // module.patch_size**2,
    }


def hf_shapes(hf_config: dict, module: TextEncoder | ViTEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every key of the one-tower checkpoint (*WithProjection models prefix the tower's keys)."""
    width = hf_config["hidden_size"]
    if tower == "text":
        shapes = {
            "embeddings.token_embedding.weight": (hf_config["vocab_size"], width),
            "embeddings.position_embedding.weight": (hf_config["max_position_embeddings"], width),
            "final_layer_norm.weight": (width,),
            "final_layer_norm.bias": (width,),
        }
    else:
        patch, channels = hf_config["patch_size"], hf_config["num_channels"]
        shapes = {
            "embeddings.class_embedding": (width,),
            "embeddings.patch_embedding.weight": (width, channels, patch, patch),
            "embeddings.position_embedding.weight": (1 + (hf_config["image_size"] // patch) ** 2, width),
        }
        shapes |= {
            f"{ln}.{leaf}": (width,)
            for ln in ("pre_layrnorm", "post_layernorm")
            for leaf in ("weight", "bias")
        }
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    shapes |= layer_shapes(LAYER, width, mlp_dim, depth, prefix="encoder.layers")
    if "projection_dim" not in hf_config:
        return shapes
    prefixed = {PREFIX[tower] + key: shape for key, shape in shapes.items()}
    return prefixed | {PROJECTION[tower]: (hf_config["projection_dim"], width)}


# One-tower checkpoints: the same port with the tower fixed by the model_type (FAMILIES' entries).
TEXT_MODEL = SimpleNamespace(
    TOWERS=("text",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
VISION_MODEL = SimpleNamespace(
    TOWERS=("vision",), encoder_from_config=encoder_from_config, dummy_inputs=dummy_inputs, key_map=key_map
)
