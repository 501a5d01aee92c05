"""AST (HF ASTModel, model_type audio-spectrogram-transformer) -> mmjax SpectrogramEncoder."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.nn.transformer import ACTIVATIONS
from mmjax.port.common import Transform, conv_patch_kernel, identity, layer_shapes, map_key
from mmjax.port.vit import LAYER  # AST's layers are ViT's, key for key

TOWERS = ("audio",)
# The key bias is dropped on purpose: it adds q.b_k to every logit of a query, which softmax cancels.
IGNORED = (r"encoder\.layer\.\d+\.attention\.attention\.key\.bias",)

EMBEDDINGS = {  # HF key -> (SpectrogramEncoder param path, transform)
    "embeddings.cls_token": ("cls/cls", lambda w: w.reshape(-1)),  # [1, 1, D]
    "embeddings.distillation_token": ("distillation/cls", lambda w: w.reshape(-1)),
    "embeddings.position_embeddings": ("position_embedding/embedding", lambda w: w[0]),  # [1, 2 + N, D]
    # Conv2d [D, 1, p_freq, p_time] over the [F, T] spectrogram -> Dense over (p_freq p_time 1) patches.
    "embeddings.patch_embeddings.projection.weight": ("patch_embedding/proj/kernel", conv_patch_kernel),
    "embeddings.patch_embeddings.projection.bias": ("patch_embedding/proj/bias", identity),
    "layernorm.weight": ("encoder/final_ln/scale", identity),
    "layernorm.bias": ("encoder/final_ln/bias", identity),
}


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> SpectrogramEncoder:
    """A SpectrogramEncoder on [B, max_length, num_mel_bins] `input_values` computing the HF ASTModel."""
    patch = hf_config.get("patch_size", 16)
    if not isinstance(patch, int):
        raise ValueError(f"config.json: patch_size={patch!r} is not an int (HF AST cuts square patches)")
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"config.json: hidden_act={activation!r} is not supported; known: {sorted(ACTIVATIONS)}"
        )
    return SpectrogramEncoder(
        patch_time=patch,
        patch_freq=patch,
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        time_stride=hf_config.get("time_stride", 10),
        freq_stride=hf_config.get("frequency_stride", 10),
        freq_major=True,
        distillation_token=True,
        pooling="cls_distillation",
        activation=activation,
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        qkv_bias=hf_config.get("qkv_bias", True),
        max_frames=hf_config.get("max_length", 1024),
        mels=hf_config.get("num_mel_bins", 128),
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one spectrogram of the checkpoint's size, which fixes the position table's length."""
    shape = (1, hf_config.get("max_length", 1024), hf_config.get("num_mel_bins", 128))
    return (jnp.zeros(shape, jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF ASTModel key -> (SpectrogramEncoder param path, transform); None for IGNORED keys."""
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)


def hf_config(module: SpectrogramEncoder, params: dict, tower: str) -> dict:
    """The HF ASTModel config of `module`; the inverse of encoder_from_config (HF cuts square patches over
    a fixed max_frames x mels spectrogram, which the module must name)."""
    if module.patch_time != module.patch_freq:
        raise ValueError(
            f"patch_time={module.patch_time} and patch_freq={module.patch_freq} differ: "
            "HF AST cuts square patches (patch_size)"
        )
    if module.max_frames is None or module.mels is None:
        raise ValueError(
            f"max_frames={module.max_frames} and mels={module.mels}: HF AST needs both (max_length and "
            "num_mel_bins, the spectrogram size its position table covers)"
        )
    return {
        "architectures": ["ASTModel"],
        "model_type": "audio-spectrogram-transformer",
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "patch_size": module.patch_time,
        "time_stride": module.time_stride or module.patch_time,
        "frequency_stride": module.freq_stride or module.patch_freq,
        "max_length": module.max_frames,
        "num_mel_bins": module.mels,
        "qkv_bias": module.qkv_bias,
    }


def hf_shapes(hf_config: dict, module: SpectrogramEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF ASTModel key."""
    width, patch = hf_config["hidden_size"], hf_config["patch_size"]
    freq_patches = (hf_config["num_mel_bins"] - patch) // hf_config["frequency_stride"] + 1
    time_patches = (hf_config["max_length"] - patch) // hf_config["time_stride"] + 1
    shapes = {
        "embeddings.cls_token": (1, 1, width),
        "embeddings.distillation_token": (1, 1, width),
        "embeddings.position_embeddings": (1, 2 + freq_patches * time_patches, width),
        "embeddings.patch_embeddings.projection.weight": (width, 1, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (width,),
        "layernorm.weight": (width,),
        "layernorm.bias": (width,),
    }
    no_bias = () if hf_config["qkv_bias"] else ("self_attn/query", "self_attn/key", "self_attn/value")
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth, no_bias=no_bias)
