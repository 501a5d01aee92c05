"""Whisper (HF WhisperModel / WhisperForConditionalGeneration) encoder -> mmjax WhisperEncoder."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.encoders.audio import WhisperEncoder
from mmjax.port.common import Transform, identity, map_key

TOWERS = ("audio",)
# The text decoder and the LM head (proj_out) are dropped on purpose: this port is the audio encoder.
IGNORED = (r"decoder\..+", r"proj_out\..+")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv1d [out, in, k] -> flax Conv [k, in, out]."""
    return w.transpose(2, 1, 0)


EMBEDDINGS = {  # HF key -> (WhisperEncoder param path, transform)
    "encoder.conv1.weight": ("conv1/kernel", conv_kernel),
    "encoder.conv1.bias": ("conv1/bias", identity),
    "encoder.conv2.weight": ("conv2/kernel", conv_kernel),
    "encoder.conv2.bias": ("conv2/bias", identity),
    "encoder.embed_positions.weight": ("position_embedding", identity),
    "encoder.layer_norm.weight": ("encoder/final_ln/scale", identity),
    "encoder.layer_norm.bias": ("encoder/final_ln/bias", identity),
}
LAYER = {  # HF module inside encoder.layers.{i} -> mmjax module inside encoder/layer_{i}
    "self_attn.q_proj": "self_attn/query",
    "self_attn.k_proj": "self_attn/key",  # a weight only: Whisper's key projection has no bias
    "self_attn.v_proj": "self_attn/value",
    "self_attn.out_proj": "self_attn/out",
    "self_attn_layer_norm": "self_attn_ln",
    "fc1": "mlp/fc1",
    "fc2": "mlp/fc2",
    "final_layer_norm": "mlp_ln",
}


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> WhisperEncoder:
    """A WhisperEncoder on [B, num_mel_bins, T] `input_features` computing HF's Whisper encoder."""
    return WhisperEncoder(
        width=hf_config["d_model"],
        depth=hf_config["encoder_layers"],
        num_heads=hf_config["encoder_attention_heads"],
        mlp_dim=hf_config["encoder_ffn_dim"],
        max_positions=hf_config.get("max_source_positions", 1500),
        activation=hf_config.get("activation_function", "gelu"),
        layer_norm_eps=1e-5,  # torch's LayerNorm default; Whisper's config has no eps
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one full-length log-mel input [1, num_mel_bins, 2 * max_source_positions]."""
    shape = (1, hf_config.get("num_mel_bins", 80), 2 * hf_config.get("max_source_positions", 1500))
    return (jnp.zeros(shape, jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF Whisper key (`model.` stripped) -> (WhisperEncoder param path, transform); None for IGNORED keys."""
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)
