"""MPNet (HF MPNetModel; all-mpnet-base-v2 and other sentence-transformers MPNets) <-> mmjax TextEncoder.

MPNet is a post-LN BERT without token types whose every layer adds one shared, learned per-head bias by the
bucketed relative position of key and query (TextEncoder.relative_buckets). As transformers computes it:
positions count from padding id 1 (RoBERTa's rule, whatever pad_token_id says), 32 relative buckets up to
distance 128, and the pooler is the first token through Dense + tanh. Task checkpoints (MPNetForMaskedLM,
...) load by their `mpnet.` prefix, their heads skipped with `dont_load`.
"""

import jax
from flax import linen as nn

from mmjax.encoders.text import TextEncoder
from mmjax.port import bert
from mmjax.port.common import Transform, identity, layer_shapes, map_key, transpose

TOWERS = ("text",)
PADDING_IDX = 1  # transformers' MPNetEmbeddings hard-codes it for position ids
NUM_BUCKETS = 32  # transformers' MPNetEncoder computes 32 relative buckets (max distance 128)

# HF keys dropped on purpose: the position-id buffer, and the key bias (it adds q.b_k to every logit of a
# query, which softmax cancels, relative bias or not).
IGNORED = (r"embeddings\.position_ids", r"encoder\.layer\.\d+\.attention\.attn\.k\.bias")
TABLE = {  # HF key -> (TextEncoder param path, transform)
    "embeddings.word_embeddings.weight": ("token_embedding/embedding", identity),
    "embeddings.position_embeddings.weight": ("position_embedding/embedding", identity),
    "embeddings.LayerNorm.weight": ("embedding_ln/scale", identity),
    "embeddings.LayerNorm.bias": ("embedding_ln/bias", identity),
    "encoder.relative_attention_bias.weight": ("relative_attention_bias/embedding", identity),
    "pooler.dense.weight": ("pooler/kernel", transpose),
    "pooler.dense.bias": ("pooler/bias", identity),
}
LAYER = {  # HF module inside encoder.layer.{i} -> mmjax module inside encoder/layer_{i}
    "attention.attn.q": "self_attn/query",
    "attention.attn.k": "self_attn/key",
    "attention.attn.v": "self_attn/value",
    "attention.attn.o": "self_attn/out",
    "attention.LayerNorm": "self_attn_ln",
    "intermediate.dense": "mlp/fc1",
    "output.dense": "mlp/fc2",
    "output.LayerNorm": "mlp_ln",
}
DEFAULTS = dict(  # MPNetConfig's defaults, for config.json files that leave fields out
    vocab_size=30527,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    relative_attention_num_buckets=32,
)


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder:
    """A post-LN TextEncoder with MPNet's relative position bias: the HF MPNetModel of `hf_config`."""
    config = DEFAULTS | hf_config
    width, heads = config["hidden_size"], config["num_attention_heads"]
    if width % heads:
        raise ValueError(f"hidden_size={width} is not a multiple of num_attention_heads={heads}")
    if config["relative_attention_num_buckets"] != NUM_BUCKETS:
        raise ValueError(
            f"relative_attention_num_buckets={config['relative_attention_num_buckets']} is not supported: "
            f"transformers computes {NUM_BUCKETS} buckets whatever the table's size"
        )
    return TextEncoder(
        vocab_size=config["vocab_size"],
        max_len=config["max_position_embeddings"],
        width=width,
        depth=config["num_hidden_layers"],
        num_heads=heads,
        mlp_dim=config["intermediate_size"],
        type_vocab_size=0,
        pre_ln=False,
        activation=bert.activation(config, "hidden_act"),
        layer_norm_eps=config["layer_norm_eps"],
        position_offset=PADDING_IDX,
        pad_token_id=PADDING_IDX,
        pooler="pooler.dense.weight" in keys,
        relative_buckets=NUM_BUCKETS,
        aux_prefix="",
    )


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF MPNetModel key -> (TextEncoder param path, transform); None for IGNORED keys."""
    return map_key(key, IGNORED, TABLE, LAYER, module.num_heads)


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids."""
    return bert.dummy_inputs(hf_config, tower)


def hf_config(module: TextEncoder, params: dict, tower: str) -> dict:
    """The HF MPNetModel config of `module`: the inverse of encoder_from_config, which mmjax.port.export
    checks (so a module without the relative bias, with token types or other positions is refused by name)."""
    return {
        "architectures": ["MPNetModel"],
        "model_type": "mpnet",
        "vocab_size": module.vocab_size,
        "max_position_embeddings": module.max_len,
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "relative_attention_num_buckets": module.relative_buckets,
        "pad_token_id": module.pad_token_id,
    }


def hf_shapes(hf_config: dict, module: TextEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key (the pooler's only when `module` has one)."""
    width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    shapes = {
        "embeddings.word_embeddings.weight": (hf_config["vocab_size"], width),
        "embeddings.position_embeddings.weight": (hf_config["max_position_embeddings"], width),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
        "encoder.relative_attention_bias.weight": (hf_config["relative_attention_num_buckets"], heads),
    }
    if module.pooler:
        shapes |= {"pooler.dense.weight": (width, width), "pooler.dense.bias": (width,)}
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(LAYER, width, mlp_dim, depth)
