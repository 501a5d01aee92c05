"""Whisper encoder (HF WhisperEncoder, WhisperModel, WhisperForConditionalGeneration) <-> WhisperEncoder.

Export writes what HF's WhisperEncoder.save_pretrained writes (architectures ["WhisperEncoder"], keys without
the `encoder.` prefix): `WhisperEncoder.from_pretrained` loads it with no missing or unexpected keys, which
no Whisper class with a decoder or a classification head does from an encoder alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.encoders.audio import WhisperEncoder
from mmjax.nn.transformer import ACTIVATIONS
from mmjax.port.common import Transform, identity, layer_shapes, map_key

TOWERS = ("audio",)
# The text decoder and the LM head (proj_out) are dropped on purpose: this port is the audio encoder.
IGNORED = (r"decoder\..+", r"proj_out\..+")
MODEL_PARTS = ("encoder.", "decoder.", "proj_out.")  # a WhisperEncoder checkpoint's keys have none of these


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
    """A WhisperEncoder on [B, num_mel_bins, T] `input_features` computing HF's Whisper encoder.

    `scale_embedding` only scales the decoder's token embeddings (the encoder computes but never applies
    its scale), so it is ignored.
    """
    activation = hf_config.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function={activation!r} is not supported; known: {sorted(ACTIVATIONS)}"
        )
    return WhisperEncoder(
        width=hf_config["d_model"],
        depth=hf_config["encoder_layers"],
        num_heads=hf_config["encoder_attention_heads"],
        mlp_dim=hf_config["encoder_ffn_dim"],
        max_positions=hf_config.get("max_source_positions", 1500),
        activation=activation,
        layer_norm_eps=1e-5,  # torch's LayerNorm default; Whisper's config has no eps
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one full-length log-mel input [1, num_mel_bins, 2 * max_source_positions]."""
    shape = (1, hf_config.get("num_mel_bins", 80), 2 * hf_config.get("max_source_positions", 1500))
    return (jnp.zeros(shape, jnp.float32),)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF Whisper key (`model.` stripped; a WhisperEncoder checkpoint's keys have no `encoder.`) ->
    (WhisperEncoder param path, transform); None for IGNORED keys."""
    if not key.startswith(MODEL_PARTS):
        key = "encoder." + key
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)


def hf_config(module: WhisperEncoder, params: dict, tower: str) -> dict:
    """The HF WhisperEncoder config of `module` (num_mel_bins from conv1's kernel); the inverse of
    encoder_from_config. The decoder's sizes mirror the encoder's, as in every OpenAI checkpoint, so that
    the config also builds a WhisperModel (whose decoder transformers then initialises)."""
    return {
        "architectures": ["WhisperEncoder"],
        "model_type": "whisper",
        "d_model": module.width,
        "encoder_layers": module.depth,
        "encoder_attention_heads": module.num_heads,
        "encoder_ffn_dim": module.mlp_dim,
        "decoder_layers": module.depth,
        "decoder_attention_heads": module.num_heads,
        "decoder_ffn_dim": module.mlp_dim,
        "max_source_positions": module.max_positions,
        "num_mel_bins": params["conv1"]["kernel"].shape[1],
        "activation_function": module.activation,
    }


def hf_shapes(hf_config: dict, module: WhisperEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every key of HF's WhisperEncoder state dict (no `encoder.` prefix)."""
    width, mels = hf_config["d_model"], hf_config["num_mel_bins"]
    shapes = {
        "conv1.weight": (width, mels, 3),
        "conv1.bias": (width,),
        "conv2.weight": (width, width, 3),
        "conv2.bias": (width,),
        "embed_positions.weight": (hf_config["max_source_positions"], width),
        "layer_norm.weight": (width,),
        "layer_norm.bias": (width,),
    }
    depth, mlp_dim = hf_config["encoder_layers"], hf_config["encoder_ffn_dim"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth, prefix="layers", no_bias=("self_attn/key",))
