"""BERT, MiniLM (BERT architecture) and RoBERTa <-> mmjax TextEncoder: config, key map, export shapes."""

import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.text import TextEncoder
from mmjax.port.common import Transform, identity, layer_shapes, map_layer_key, transpose

TOWERS = ("text",)

# HF keys dropped on purpose: the position-id buffer, and the key bias (it adds q.b_k to every logit of
# a query, which softmax cancels; mmjax's attention has no key bias).
IGNORED = (r"embeddings\.position_ids", r"encoder\.layer\.\d+\.attention\.self\.key\.bias")

EMBEDDINGS = {
    "word_embeddings.weight": "token_embedding/embedding",
    "position_embeddings.weight": "position_embedding/embedding",
    "token_type_embeddings.weight": "type_embedding/embedding",
    "LayerNorm.weight": "embedding_ln/scale",
    "LayerNorm.bias": "embedding_ln/bias",
}
LAYER = {  # HF module inside encoder.layer.{i} -> mmjax module inside encoder/layer_{i}
    "attention.self.query": "self_attn/query",
    "attention.self.key": "self_attn/key",
    "attention.self.value": "self_attn/value",
    "attention.output.dense": "self_attn/out",
    "attention.output.LayerNorm": "self_attn_ln",
    "intermediate.dense": "mlp/fc1",
    "output.dense": "mlp/fc2",
    "output.LayerNorm": "mlp_ln",
}


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder:
    """A post-LN TextEncoder computing the HF BertModel/RobertaModel that `hf_config` describes."""
    roberta = hf_config["model_type"] == "roberta"
    pad = hf_config.get("pad_token_id", 1 if roberta else 0)
    return TextEncoder(
        vocab_size=hf_config["vocab_size"],
        max_len=hf_config["max_position_embeddings"],
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        pre_ln=False,
        activation=hf_config.get("hidden_act", "gelu"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        position_offset=pad if roberta else None,
        pad_token_id=pad,
        pooler="pooler.dense.weight" in keys,
        aux_prefix="",
    )


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF BertModel/RobertaModel key -> (TextEncoder param path, transform); None for IGNORED keys."""
    if any(re.fullmatch(p, key) for p in IGNORED):
        return None
    if key.startswith("embeddings.") and key[len("embeddings.") :] in EMBEDDINGS:
        return EMBEDDINGS[key[len("embeddings.") :]], identity
    if key in ("pooler.dense.weight", "pooler.dense.bias"):
        return ("pooler/kernel", transpose) if key.endswith("weight") else ("pooler/bias", identity)
    return map_layer_key(key, LAYER, module.num_heads)


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids."""
    return (jnp.zeros((1, 2), jnp.int32),)


def hf_config(module: TextEncoder, params: dict, tower: str) -> dict:
    """The HF config of `module`: RobertaModel when positions count from `position_offset`, else BertModel.

    The inverse of encoder_from_config (`params` is unused: the fields fix every shape); mmjax.port.export
    checks that it gives `module` back.
    """
    roberta = module.position_offset is not None
    return {
        "architectures": ["RobertaModel" if roberta else "BertModel"],
        "model_type": "roberta" if roberta else "bert",
        "vocab_size": module.vocab_size,
        "max_position_embeddings": module.max_len,
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "type_vocab_size": module.type_vocab_size,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "pad_token_id": module.pad_token_id,
    }


def hf_shapes(hf_config: dict, module: TextEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key (the pooler's only when `module` has one)."""
    width = hf_config["hidden_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (hf_config["vocab_size"], width),
        "embeddings.position_embeddings.weight": (hf_config["max_position_embeddings"], width),
        "embeddings.token_type_embeddings.weight": (hf_config["type_vocab_size"], width),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
    }
    if module.pooler:
        shapes |= {"pooler.dense.weight": (width, width), "pooler.dense.bias": (width,)}
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth)
