"""BERT, MiniLM (BERT architecture) and RoBERTa <-> mmjax TextEncoder: config, key map, export shapes.

Config options as transformers 5 computes them: hidden_act (any of mmjax.nn.transformer.ACTIVATIONS),
layer_norm_eps, type_vocab_size >= 1, is_decoder (causal self-attention), RoBERTa's pad_token_id (positions
count from it), the pooler when the checkpoint holds one (add_pooling_layer). Refused by name (check_config):
relative position_embedding_type (transformers 5 dropped it), add_cross_attention, type_vocab_size=0.
"""

import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.text import TextEncoder
from mmjax.nn.transformer import ACTIVATIONS
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


def activation(hf_config: dict, field: str, default: str = "gelu") -> str:
    """The transformers activation name `hf_config[field]`; ValueError naming the field if mmjax lacks it."""
    name = hf_config.get(field, default)
    if name not in ACTIVATIONS:
        raise ValueError(f"{field}={name!r} is not supported; mmjax computes {sorted(ACTIVATIONS)}")
    return name


def check_config(hf_config: dict) -> None:
    """Raises naming the field when a BERT-like config (BERT, RoBERTa, ELECTRA) asks for what a TextEncoder
    cannot compute as transformers 5 does."""
    position = hf_config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(
            f"position_embedding_type={position!r} is not supported: transformers 5 computes only absolute "
            "positions (it dropped relative_key/relative_key_query and would ignore distance_embedding)"
        )
    if hf_config.get("add_cross_attention", False):
        raise ValueError(
            "add_cross_attention=True is not supported: TextEncoder has no encoder_hidden_states input "
            "for the decoder's cross-attention layers"
        )
    if hf_config.get("type_vocab_size", 2) < 1:
        raise ValueError(
            "type_vocab_size=0 is not supported: transformers looks token type 0 up in an empty table"
        )
    width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    if width % heads:
        raise ValueError(f"hidden_size={width} is not a multiple of num_attention_heads={heads}")


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder:
    """A post-LN TextEncoder computing the HF BertModel/RobertaModel that `hf_config` describes."""
    check_config(hf_config)
    roberta = hf_config["model_type"] == "roberta"
    pad = hf_config.get("pad_token_id", 1 if roberta else 0)
    if roberta and pad is None:
        raise ValueError("pad_token_id=None is not supported: RoBERTa counts positions from pad_token_id")
    return TextEncoder(
        vocab_size=hf_config["vocab_size"],
        max_len=hf_config["max_position_embeddings"],
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        pre_ln=False,
        activation=activation(hf_config, "hidden_act"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        position_offset=pad if roberta else None,
        pad_token_id=0 if pad is None else pad,
        causal=hf_config.get("is_decoder", False),
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
    model_type = "roberta" if roberta else "bert"
    if module.type_vocab_size < 1:
        raise ValueError(
            f"TextEncoder cannot be written as a Hugging Face {model_type} checkpoint: type_vocab_size=0 "
            "(transformers needs a token-type table)"
        )
    return {
        "architectures": ["RobertaModel" if roberta else "BertModel"],
        "model_type": model_type,
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
        "is_decoder": module.causal,
    }


def embedding_shapes(hf_config: dict, dim: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the `embeddings.*` keys of a BERT-like model whose embeddings have `dim` features."""
    return {
        "embeddings.word_embeddings.weight": (hf_config["vocab_size"], dim),
        "embeddings.position_embeddings.weight": (hf_config["max_position_embeddings"], dim),
        "embeddings.token_type_embeddings.weight": (hf_config["type_vocab_size"], dim),
        "embeddings.LayerNorm.weight": (dim,),
        "embeddings.LayerNorm.bias": (dim,),
    }


def hf_shapes(hf_config: dict, module: TextEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key (the pooler's only when `module` has one)."""
    width = hf_config["hidden_size"]
    shapes = embedding_shapes(hf_config, width)
    if module.pooler:
        shapes |= {"pooler.dense.weight": (width, width), "pooler.dense.bias": (width,)}
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth)
