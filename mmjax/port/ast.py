"""AST (HF ASTModel, model_type audio-spectrogram-transformer) -> mmjax SpectrogramEncoder."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.port.common import Transform, conv_patch_kernel, identity, map_key
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
    if not hf_config.get("qkv_bias", True):
        raise ValueError("config.json: qkv_bias=False is not supported (mmjax attention has q/v biases)")
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
        activation=hf_config.get("hidden_act", "gelu"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one spectrogram of the checkpoint's size, which fixes the position table's length."""
    shape = (1, hf_config.get("max_length", 1024), hf_config.get("num_mel_bins", 128))
    return (jnp.zeros(shape, jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF ASTModel key -> (SpectrogramEncoder param path, transform); None for IGNORED keys."""
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)
