"""DeBERTa (HF DebertaModel) and DeBERTa-v2/v3 (DebertaV2Model) <-> mmjax DebertaEncoder.

Task checkpoints (DebertaV2ForSequenceClassification, ...) hold the encoder under `deberta.`; their heads
(ContextPooler, classifier, QA and MLM heads) are dropped on purpose: pooled is the [CLS] token.
"""

import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.encoders.deberta import DebertaEncoder, relative_span
from mmjax.nn.transformer import ACTIVATIONS
from mmjax.port.common import Transform, identity, layer_shapes, map_layer_key, transpose

TOWERS = ("text",)
PREFIX = "deberta."  # the task models' encoder
MODEL_TYPES = {1: "deberta", 2: "deberta-v2"}
ARCHITECTURES = {1: "DebertaModel", 2: "DebertaV2Model"}
IGNORED = (  # the position-id buffer and the task heads
    r"embeddings\.position_ids",
    r"(pooler|classifier|qa_outputs|lm_predictions|cls)\..*",
)

EMBEDDINGS = {  # HF key -> (DebertaEncoder param path, transform)
    "embeddings.word_embeddings.weight": ("token_embedding/embedding", identity),
    "embeddings.position_embeddings.weight": ("position_embedding/embedding", identity),
    "embeddings.token_type_embeddings.weight": ("type_embedding/embedding", identity),
    "embeddings.embed_proj.weight": ("embedding_proj/kernel", transpose),
    "embeddings.LayerNorm.weight": ("embedding_ln/scale", identity),
    "embeddings.LayerNorm.bias": ("embedding_ln/bias", identity),
    "encoder.rel_embeddings.weight": ("rel_embedding", identity),
    "encoder.LayerNorm.weight": ("rel_embedding_ln/scale", identity),
    "encoder.LayerNorm.bias": ("rel_embedding_ln/bias", identity),
    "encoder.conv.conv.weight": ("conv/kernel", lambda w: w.transpose(2, 1, 0)),  # [O, I/g, k] -> [k, I/g, O]
    "encoder.conv.conv.bias": ("conv/bias", identity),
    "encoder.conv.LayerNorm.weight": ("conv_ln/scale", identity),
    "encoder.conv.LayerNorm.bias": ("conv_ln/bias", identity),
}
LAYER = {  # HF module inside encoder.layer.{i} -> mmjax module inside layer_{i} (both versions)
    "attention.output.dense": "self_attn/out",
    "attention.output.LayerNorm": "self_attn_ln",
    "intermediate.dense": "mlp/fc1",
    "output.dense": "mlp/fc2",
    "output.LayerNorm": "mlp_ln",
}
LAYER_V2 = {
    "attention.self.query_proj": "self_attn/query",
    "attention.self.key_proj": "self_attn/key",
    "attention.self.value_proj": "self_attn/value",
    "attention.self.pos_key_proj": "self_attn/pos_key",
    "attention.self.pos_query_proj": "self_attn/pos_query",
}
LAYER_V1 = {  # in_proj is [3 width, width], rows per head [q, k, v]: it splits into (heads, 3 head_dim)
    "attention.self.in_proj": "self_attn/in_proj",
    "attention.self.pos_proj": "self_attn/pos_key",
    "attention.self.pos_q_proj": "self_attn/pos_query",
}
LAYER_V1_LEAVES = {  # leaves that are no Linear's weight/bias -> (mmjax leaf, per-head transform?)
    "attention.self.q_bias": ("self_attn/q_bias", True),
    "attention.self.v_bias": ("self_attn/v_bias", True),
    "attention.self.head_logits_proj.weight": ("self_attn/head_logits/kernel", False),
    "attention.self.head_weights_proj.weight": ("self_attn/head_weights/kernel", False),
}
LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def pos_att_type(value: str | list[str] | None) -> tuple[str, ...]:
    """HF's pos_att_type (a list, the older "c2p|p2c" string, or None) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.lower().split("|"))
    return tuple(value)


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> DebertaEncoder:
    """The DebertaEncoder computing the HF DebertaModel / DebertaV2Model that `hf_config` describes."""
    version = 1 if hf_config["model_type"] == "deberta" else 2
    v2 = version == 2  # the v2 options; DebertaModel ignores them
    width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    head_size = hf_config.get("attention_head_size", width // heads)
    if v2 and head_size * heads != width:
        raise ValueError(
            f"attention_head_size={head_size} with {heads} heads does not give hidden_size={width}: "
            "DebertaV2Model's output projection takes hidden_size features, so transformers cannot run it"
        )
    conv = hf_config.get("conv_kernel_size", 0) > 0 and v2  # conv_act and conv_groups matter only then
    for field in ("hidden_act", "conv_act") if conv else ("hidden_act",):
        if hf_config.get(field, "gelu") not in ACTIVATIONS:
            raise ValueError(
                f"config.json: {field}={hf_config[field]!r} is not supported; known: {sorted(ACTIVATIONS)}"
            )
    embedding_size = hf_config.get("embedding_size", width)
    norm_rel_ebd = [t.strip() for t in hf_config.get("norm_rel_ebd", "none").lower().split("|")]
    return DebertaEncoder(
        vocab_size=hf_config["vocab_size"],
        max_len=hf_config["max_position_embeddings"],
        width=width,
        depth=hf_config["num_hidden_layers"],
        num_heads=heads,
        mlp_dim=hf_config["intermediate_size"],
        version=version,
        type_vocab_size=hf_config.get("type_vocab_size", 0),
        embedding_dim=None if embedding_size == width else embedding_size,
        position_biased_input=hf_config.get("position_biased_input", True),
        relative_attention=hf_config.get("relative_attention", False),
        max_relative_positions=hf_config.get("max_relative_positions", -1),
        position_buckets=hf_config.get("position_buckets", -1) if v2 else -1,
        pos_att_type=pos_att_type(hf_config.get("pos_att_type")),
        share_att_key=hf_config.get("share_att_key", False) and v2,
        rel_embedding_ln="layer_norm" in norm_rel_ebd and v2,
        conv_kernel_size=hf_config["conv_kernel_size"] if conv else 0,
        conv_groups=hf_config.get("conv_groups", 1) if conv else 1,
        conv_act=hf_config.get("conv_act", "tanh") if conv else "tanh",
        talking_head=hf_config.get("talking_head", False) and not v2,
        activation=hf_config.get("hidden_act", "gelu"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-7),
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids."""
    return (jnp.zeros((1, 2), jnp.int32),)


def per_head(num_heads: int) -> Transform:
    return lambda b: b.reshape(num_heads, -1)


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF DeBERTa key (`deberta.` prefix allowed) -> (DebertaEncoder param path, transform); None for
    IGNORED keys and the weights HF holds but never uses (position embeddings without
    position_biased_input, the relative-embedding LayerNorm without relative_attention)."""
    key = key.removeprefix(PREFIX)
    unused = [] if module.position_biased_input else [r"embeddings\.position_embeddings\.weight"]
    unused += [] if module.relative_attention else [r"encoder\.LayerNorm\.(weight|bias)"]
    if any(re.fullmatch(p, key) for p in (*IGNORED, *unused)):
        return None
    if key in EMBEDDINGS:
        return EMBEDDINGS[key]
    match = LAYER_KEY.fullmatch(key)
    if match is None:
        raise KeyError(key)
    if module.version == 1 and match[2] in LAYER_V1_LEAVES:
        leaf, heads = LAYER_V1_LEAVES[match[2]]
        return f"layer_{match[1]}/{leaf}", per_head(module.num_heads) if heads else transpose
    table = LAYER | (LAYER_V1 if module.version == 1 else LAYER_V2)
    path, transform = map_layer_key(key, table, module.num_heads)
    return path.removeprefix("encoder/"), transform


def hf_config(module: DebertaEncoder, params: dict, tower: str) -> dict:
    """The HF config of `module`: DebertaModel (version 1) or DebertaV2Model (version 2).

    The inverse of encoder_from_config (`params` is unused: the fields fix every shape); mmjax.port.export
    checks that it gives `module` back.
    """
    if module.version not in MODEL_TYPES:
        raise ValueError(f"DebertaEncoder version={module.version!r} is not one of {sorted(MODEL_TYPES)}")
    config = {
        "architectures": [ARCHITECTURES[module.version]],
        "model_type": MODEL_TYPES[module.version],
        "vocab_size": module.vocab_size,
        "max_position_embeddings": module.max_len,
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "type_vocab_size": module.type_vocab_size,
        "embedding_size": module.embedding_dim or module.width,
        "position_biased_input": module.position_biased_input,
        "relative_attention": module.relative_attention,
        "max_relative_positions": module.max_relative_positions,
        "pos_att_type": list(module.pos_att_type),
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
    }
    if module.version == 1:
        return config | {"talking_head": module.talking_head}
    return config | {
        "position_buckets": module.position_buckets,
        "share_att_key": module.share_att_key,
        "norm_rel_ebd": "layer_norm" if module.rel_embedding_ln else "none",
        "conv_kernel_size": module.conv_kernel_size,
        "conv_groups": module.conv_groups,
        "conv_act": module.conv_act,
    }


def hf_shapes(hf_config: dict, module: DebertaEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every key of the HF DebertaModel / DebertaV2Model (no task heads)."""
    width, heads, v1 = module.width, module.num_heads, module.version == 1
    dim = module.embedding_dim or width
    shapes = {
        "embeddings.word_embeddings.weight": (module.vocab_size, dim),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
    }
    if module.position_biased_input:
        shapes["embeddings.position_embeddings.weight"] = (module.max_len, dim)
    if module.type_vocab_size:
        shapes["embeddings.token_type_embeddings.weight"] = (module.type_vocab_size, dim)
    if module.embedding_dim is not None:
        shapes["embeddings.embed_proj.weight"] = (width, dim)
    if module.relative_attention:
        shapes["encoder.rel_embeddings.weight"] = (2 * relative_span(module), width)
    if module.rel_embedding_ln:
        shapes |= {"encoder.LayerNorm.weight": (width,), "encoder.LayerNorm.bias": (width,)}
    if module.conv_kernel_size > 0:
        shapes |= {
            "encoder.conv.conv.weight": (width, width // module.conv_groups, module.conv_kernel_size),
            "encoder.conv.conv.bias": (width,),
            "encoder.conv.LayerNorm.weight": (width,),
            "encoder.conv.LayerNorm.bias": (width,),
        }
    layer, relative = dict(LAYER), module.relative_attention
    own_pos = relative and not module.share_att_key
    pos_modules = {"c2p": "self_attn/pos_key", "p2c": "self_attn/pos_query"}
    wanted = {pos_modules[t] for t in module.pos_att_type} if own_pos else set()
    for hf, ours in (LAYER_V1 if v1 else LAYER_V2).items():
        if ours == "self_attn/in_proj" or (ours in pos_modules.values() and ours not in wanted):
            continue  # in_proj: added below, it is no square Linear; position projections: if used
        layer[hf] = ours
    no_bias = ("self_attn/pos_key",) if v1 else ()
    shapes |= layer_shapes(layer, width, module.mlp_dim, module.depth, no_bias=no_bias)
    for i in range(module.depth if v1 else 0):
        prefix = f"encoder.layer.{i}.attention.self."
        shapes |= {prefix + "in_proj.weight": (3 * width, width)}
        shapes |= {prefix + "q_bias": (width,), prefix + "v_bias": (width,)}
        if module.talking_head:
            shapes |= {
                prefix + f"{n}.weight": (heads, heads) for n in ("head_logits_proj", "head_weights_proj")
            }
    return shapes
