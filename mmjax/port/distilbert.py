"""DistilBERT (HF DistilBertModel) <-> mmjax TextEncoder: post-LN BERT without token types or pooler.

Task checkpoints (DistilBertForMaskedLM, ...) load by their `distilbert.` prefix, their heads skipped with
`dont_load`. The pooled output is the first token. LayerNorms use eps 1e-12 (fixed in transformers).
sinusoidal_pos_embds only sets how transformers initialises the position table: checkpoints hold the table
and transformers 5 loads it like a learned one (and trains it), so it is loaded as such; export writes
sinusoidal_pos_embds=False.
"""

import jax
from flax import linen as nn

from mmjax.encoders.text import TextEncoder
from mmjax.port import bert
from mmjax.port.common import Transform, identity, layer_shapes, map_key

TOWERS = ("text",)
LAYER_NORM_EPS = 1e-12  # transformers' DistilBERT hard-codes it

# HF keys dropped on purpose (layer keys as key_map renames them): the position-id buffer of old
# checkpoints, and the key bias (it adds q.b_k to every logit of a query, which softmax cancels).
IGNORED = (r"embeddings\.position_ids", r"encoder\.layer\.\d+\.attention\.k_lin\.bias")
EMBEDDINGS = {  # HF key -> (TextEncoder param path, transform)
    "embeddings.word_embeddings.weight": ("token_embedding/embedding", identity),
    "embeddings.position_embeddings.weight": ("position_embedding/embedding", identity),
    "embeddings.LayerNorm.weight": ("embedding_ln/scale", identity),
    "embeddings.LayerNorm.bias": ("embedding_ln/bias", identity),
}
LAYER = {  # HF module inside transformer.layer.{i} -> mmjax module inside encoder/layer_{i}
    "attention.q_lin": "self_attn/query",
    "attention.k_lin": "self_attn/key",
    "attention.v_lin": "self_attn/value",
    "attention.out_lin": "self_attn/out",
    "sa_layer_norm": "self_attn_ln",
    "ffn.lin1": "mlp/fc1",
    "ffn.lin2": "mlp/fc2",
    "output_layer_norm": "mlp_ln",
}
DEFAULTS = dict(  # DistilBertConfig's defaults, for config.json files that leave fields out
    vocab_size=30522,
    max_position_embeddings=512,
    n_layers=6,
    n_heads=12,
    dim=768,
    hidden_dim=3072,
    activation="gelu",
    pad_token_id=0,
)


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder:
    """A post-LN TextEncoder without token types or pooler computing the HF DistilBertModel of `hf_config`."""
    config = DEFAULTS | hf_config
    if config["dim"] % config["n_heads"]:
        raise ValueError(f"dim={config['dim']} is not a multiple of n_heads={config['n_heads']}")
    return TextEncoder(
        vocab_size=config["vocab_size"],
        max_len=config["max_position_embeddings"],
        width=config["dim"],
        depth=config["n_layers"],
        num_heads=config["n_heads"],
        mlp_dim=config["hidden_dim"],
        type_vocab_size=0,
        pre_ln=False,
        activation=bert.activation(config, "activation"),
        layer_norm_eps=LAYER_NORM_EPS,
        pad_token_id=0 if config["pad_token_id"] is None else config["pad_token_id"],
        aux_prefix="",
    )


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF DistilBertModel key -> (TextEncoder param path, transform); None for IGNORED keys.

    `transformer.layer.{i}.*` is read as `encoder.layer.{i}.*`, the layer naming of mmjax.port.common.
    """
    if key.startswith("transformer.layer."):
        key = "encoder." + key[len("transformer.") :]
    return map_key(key, IGNORED, EMBEDDINGS, LAYER, module.num_heads)


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids."""
    return bert.dummy_inputs(hf_config, tower)


def hf_config(module: TextEncoder, params: dict, tower: str) -> dict:
    """The HF DistilBertModel config of `module`.

    The inverse of encoder_from_config; mmjax.port.export checks that it gives `module` back (so a module
    with token types, a pooler or another layer_norm_eps is refused by name).
    """
    return {
        "architectures": ["DistilBertModel"],
        "model_type": "distilbert",
        "vocab_size": module.vocab_size,
        "max_position_embeddings": module.max_len,
        "dim": module.width,
        "n_layers": module.depth,
        "n_heads": module.num_heads,
        "hidden_dim": module.mlp_dim,
        "activation": module.activation,
        "sinusoidal_pos_embds": False,
        "pad_token_id": module.pad_token_id,
    }


def hf_shapes(hf_config: dict, module: TextEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key."""
    width = hf_config["dim"]
    shapes = {
        "embeddings.word_embeddings.weight": (hf_config["vocab_size"], width),
        "embeddings.position_embeddings.weight": (hf_config["max_position_embeddings"], width),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
    }
    depth, mlp_dim = hf_config["n_layers"], hf_config["hidden_dim"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth, prefix="transformer.layer")
