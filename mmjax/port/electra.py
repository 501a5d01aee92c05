"""ELECTRA (HF ElectraModel: the discriminator's or the generator's body) <-> mmjax TextEncoder.

Task checkpoints (ElectraForPreTraining, ...) load by their `electra.` prefix; their heads are reported as
unexpected unless skipped, e.g. `from_hf(path, dont_load=[r"discriminator_predictions\\..*"])`.
ELECTRA is BERT (mmjax.port.bert: same layers and supported options) with embeddings of `embedding_size`
projected to `hidden_size` by `embeddings_project` (TextEncoder.embedding_dim; none when the sizes are equal)
and no pooler: the pooled output is the first token.
"""

import jax
from flax import linen as nn

from mmjax.encoders.text import TextEncoder
from mmjax.port import bert
from mmjax.port.common import Transform, identity, layer_shapes, transpose

TOWERS = ("text",)
PROJECTION = {
    "embeddings_project.weight": ("embedding_proj/kernel", transpose),
    "embeddings_project.bias": ("embedding_proj/bias", identity),
}
DEFAULTS = dict(  # ElectraConfig's defaults, for config.json files that leave fields out
    embedding_size=128,
    hidden_size=256,
    num_hidden_layers=12,
    num_attention_heads=4,
    intermediate_size=1024,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
)


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> TextEncoder:
    """A post-LN TextEncoder computing the HF ElectraModel that `hf_config` describes."""
    config = DEFAULTS | hf_config
    bert.check_config(config)
    embedding_size = config["embedding_size"]
    return TextEncoder(
        vocab_size=config["vocab_size"],
        max_len=config["max_position_embeddings"],
        width=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        type_vocab_size=config["type_vocab_size"],
        pre_ln=False,
        activation=bert.activation(config, "hidden_act"),
        layer_norm_eps=config["layer_norm_eps"],
        pad_token_id=0 if config.get("pad_token_id") is None else config["pad_token_id"],
        causal=config.get("is_decoder", False),
        embedding_dim=None if embedding_size == config["hidden_size"] else embedding_size,
        aux_prefix="",
    )


def key_map(key: str, module: nn.Module, tower: str) -> tuple[str, Transform] | None:
    """HF ElectraModel key -> (TextEncoder param path, transform); None for bert.IGNORED keys."""
    if key in PROJECTION:
        return PROJECTION[key]
    return bert.key_map(key, module, tower)


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: a [1, 2] batch of token ids."""
    return bert.dummy_inputs(hf_config, tower)


def hf_config(module: TextEncoder, params: dict, tower: str) -> dict:
    """The HF ElectraModel config of `module` (embedding_size = embedding_dim, else the width).

    The inverse of encoder_from_config; mmjax.port.export checks that it gives `module` back (so a module
    with a pooler, RoBERTa positions or pre-LN blocks is refused by name).
    """
    if module.type_vocab_size < 1:
        raise ValueError(
            "TextEncoder cannot be written as a Hugging Face electra checkpoint: type_vocab_size=0 "
            "(transformers needs a token-type table)"
        )
    return {
        "architectures": ["ElectraModel"],
        "model_type": "electra",
        "vocab_size": module.vocab_size,
        "max_position_embeddings": module.max_len,
        "embedding_size": module.embedding_dim or module.width,
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


def hf_shapes(hf_config: dict, module: TextEncoder, tower: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every HF key: BERT's without the pooler, embeddings of embedding_size, the projection."""
    width, dim = hf_config["hidden_size"], hf_config["embedding_size"]
    shapes = bert.embedding_shapes(hf_config, dim)
    if dim != width:
        shapes |= {"embeddings_project.weight": (width, dim), "embeddings_project.bias": (width,)}
    depth, mlp_dim = hf_config["num_hidden_layers"], hf_config["intermediate_size"]
    return shapes | layer_shapes(bert.LAYER, width, mlp_dim, depth)
