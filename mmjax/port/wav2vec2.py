"""wav2vec 2.0, HuBERT and WavLM (HF Wav2Vec2Model, HubertModel, WavLMModel and their task models) <->
mmjax Wav2Vec2Encoder: config, dummy input, key map and the shapes for export.

The position conv's weight norm is kept as its two params (direction `kernel`, per-tap `scale`), read from
new (`parametrizations.weight.original0/1`) and old (`weight_g`/`weight_v`) checkpoints and written in the
new names. HuBERT with conv_pos_batch_norm holds BatchNorm running statistics, so its key map fills the
variables {"params": ..., "batch_stats": ...} (paths start with the collection), as ResNet's does.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders.wav2vec2 import Wav2Vec2Encoder, receptive_field
from mmjax.port.common import Transform, identity, layer_shapes, map_layer_key, transpose

TOWERS = ("audio",)
ARCHITECTURES = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel"}
PREFIXES = ("wav2vec2.", "hubert.", "wavlm.")  # the backbone inside HF's task models
# Dropped on purpose: task heads (CTC, classification, pre-training quantizer and projections), BatchNorm's
# step counter and the attention key bias (it adds q.b_k to every logit of a query, which softmax cancels).
IGNORED = (
    r"(lm_head|projector|classifier|quantizer|project_hid|project_q)\..+",
    r"layer_weights",
    r"encoder\.pos_conv_embed\.batch_norm\.num_batches_tracked",
    r"encoder\.layers\.\d+\.attention\.k_proj\.bias",
)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv1d weight [out, in, k] -> flax [k, in, out]."""
    return w.transpose(2, 1, 0)


POSITION = {  # HF key inside encoder.pos_conv_embed -> (Wav2Vec2Encoder param path, transform)
    "conv.parametrizations.weight.original0": ("pos_conv/scale", lambda w: w.reshape(-1)),  # [1, 1, k]
    "conv.parametrizations.weight.original1": ("pos_conv/kernel", conv_kernel),
    "conv.weight_g": ("pos_conv/scale", lambda w: w.reshape(-1)),  # torch's old weight_norm names
    "conv.weight_v": ("pos_conv/kernel", conv_kernel),
    "conv.weight": ("pos_conv/kernel", conv_kernel),  # HuBERT with conv_pos_batch_norm: no weight norm
    "conv.bias": ("pos_conv/bias", identity),
    "batch_norm.weight": ("pos_conv/batch_norm/scale", identity),
    "batch_norm.bias": ("pos_conv/batch_norm/bias", identity),
    "batch_norm.running_mean": ("pos_conv/batch_norm/mean", identity),
    "batch_norm.running_var": ("pos_conv/batch_norm/var", identity),
}
TABLE = {
    "feature_projection.layer_norm.weight": ("feature_ln/scale", identity),
    "feature_projection.layer_norm.bias": ("feature_ln/bias", identity),
    "feature_projection.projection.weight": ("feature_proj/kernel", transpose),
    "feature_projection.projection.bias": ("feature_proj/bias", identity),
    "masked_spec_embed": ("masked_spec_embed", identity),
    "adapter.proj.weight": ("adapter/proj/kernel", transpose),
    "adapter.proj.bias": ("adapter/proj/bias", identity),
    "adapter.proj_layer_norm.weight": ("adapter/proj_ln/scale", identity),
    "adapter.proj_layer_norm.bias": ("adapter/proj_ln/bias", identity),
} | {f"encoder.pos_conv_embed.{k}": v for k, v in POSITION.items()}
CONV = re.compile(
    r"(feature_extractor\.conv_layers|adapter\.layers)\.(\d+)\.(conv|layer_norm)\.(weight|bias)"
)
LAYER = {  # HF module inside encoder.layers.{i} -> mmjax module inside encoder/layer_{i}
    "attention.q_proj": "self_attn/query",
    "attention.k_proj": "self_attn/key",
    "attention.v_proj": "self_attn/value",
    "attention.out_proj": "self_attn/out",
    "layer_norm": "self_attn_ln",
    "feed_forward.intermediate_dense": "mlp/fc1",
    "feed_forward.output_dense": "mlp/fc2",
    "final_layer_norm": "mlp_ln",
}
WAVLM = re.compile(
    r"encoder\.layers\.(\d+)\.attention\.(gru_rel_pos_const|gru_rel_pos_linear\.\w+|rel_attn_embed\.weight)"
)
WAVLM_LEAVES = {  # WavLM's attention extras -> (leaf inside encoder/layer_{i}/self_attn, transform)
    "gru_rel_pos_const": ("gru_rel_pos_const", lambda w: w.reshape(-1)),  # [1, H, 1, 1]
    "gru_rel_pos_linear.weight": ("gru_rel_pos_linear/kernel", transpose),
    "gru_rel_pos_linear.bias": ("gru_rel_pos_linear/bias", identity),
    "rel_attn_embed.weight": ("rel_attn_embed/embedding", identity),
}


def strip(key: str) -> str:
    """Drops the task models' `wav2vec2.` / `hubert.` / `wavlm.` prefix."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def encoder_from_config(hf_config: dict, keys: set[str], tower: str) -> Wav2Vec2Encoder:
    """A Wav2Vec2Encoder on [B, S] `input_values` computing the HF model `hf_config` describes.

    HuBERT's checkpoints alone hold feat_proj_layer_norm=False and conv_pos_batch_norm; HubertModel has no
    adapter. The attention adapters of MMS (adapter_attn_dim, a bottleneck added inside every pre-LN layer)
    are refused: mmjax's shared transformer layer has no place for them.
    """
    model_type = hf_config["model_type"]
    hubert = model_type == "hubert"
    stable = hf_config.get("do_stable_layer_norm", False)
    if stable and hf_config.get("adapter_attn_dim") is not None:
        raise ValueError(
            f"config.json: adapter_attn_dim={hf_config['adapter_attn_dim']} (MMS attention adapters) is not "
            "supported"
        )
    hidden = hf_config.get("hidden_size", 768)
    adapter = not hubert and hf_config.get("add_adapter", False)
    output_hidden_size = hf_config.get("output_hidden_size") if adapter else None
    return Wav2Vec2Encoder(
        conv_dim=tuple(hf_config.get("conv_dim", (512,) * 7)),
        conv_kernel=tuple(hf_config.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))),
        conv_stride=tuple(hf_config.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))),
        conv_bias=hf_config.get("conv_bias", False),
        feat_extract_norm=hf_config.get("feat_extract_norm", "group"),
        feat_extract_activation=hf_config.get("feat_extract_activation", "gelu"),
        feat_proj_layer_norm=hf_config.get("feat_proj_layer_norm", True) if hubert else True,
        width=hidden,
        depth=hf_config.get("num_hidden_layers", 12),
        num_heads=hf_config.get("num_attention_heads", 12),
        mlp_dim=hf_config.get("intermediate_size", 3072),
        activation=hf_config.get("hidden_act", "gelu"),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-5),
        stable_layer_norm=stable,
        num_conv_pos_embeddings=hf_config.get("num_conv_pos_embeddings", 128),
        num_conv_pos_embedding_groups=hf_config.get("num_conv_pos_embedding_groups", 16),
        conv_pos_batch_norm=hf_config.get("conv_pos_batch_norm", False) if hubert else False,
        masked_spec_embed="masked_spec_embed" in {strip(k) for k in keys},
        variant=model_type,
        num_buckets=hf_config.get("num_buckets", 320),
        max_bucket_distance=hf_config.get("max_bucket_distance", 800),
        add_adapter=adapter,
        output_hidden_size=None if output_hidden_size == hidden else output_hidden_size,
        adapter_kernel_size=hf_config.get("adapter_kernel_size", 3),
        adapter_stride=hf_config.get("adapter_stride", 2),
        num_adapter_layers=hf_config.get("num_adapter_layers", 3),
        aux_prefix="",
    )


def dummy_inputs(hf_config: dict, tower: str) -> tuple[jax.Array, ...]:
    """Init inputs: one waveform of 8 frames (the weights do not depend on its length)."""
    kernels = hf_config.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))
    strides = hf_config.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))
    samples = receptive_field(kernels, strides) + 7 * int(np.prod(strides))
    return (jnp.zeros((1, samples), jnp.float32),)


def map_conv_key(match: re.Match) -> tuple[str, Transform]:
    """A conv stack or adapter layer key -> (param path, transform)."""
    where, i, part, kind = match.groups()
    scope = "feature_encoder" if where.startswith("feature") else "adapter"
    if part == "conv" and kind == "weight":
        return f"{scope}/conv_{i}/kernel", conv_kernel
    if part == "conv":
        return f"{scope}/conv_{i}/bias", identity
    if scope == "adapter":
        raise KeyError(match[0])
    return f"feature_encoder/norm_{i}/{'scale' if kind == 'weight' else 'bias'}", identity


def param_key_map(key: str, module: Wav2Vec2Encoder) -> tuple[str, Transform] | None:
    """HF key (task prefix stripped) -> (path in the module's variables, without the collection)."""
    if any(re.fullmatch(p, key) for p in IGNORED):
        return None
    if key in TABLE:
        return TABLE[key]
    if key in ("encoder.layer_norm.weight", "encoder.layer_norm.bias"):
        norm = "encoder/final_ln" if module.stable_layer_norm else "embedding_ln"
        return f"{norm}/{'scale' if key.endswith('weight') else 'bias'}", identity
    if match := CONV.fullmatch(key):
        return map_conv_key(match)
    if match := WAVLM.fullmatch(key):
        leaf, transform = WAVLM_LEAVES[match[2]]
        return f"encoder/layer_{match[1]}/self_attn/{leaf}", transform
    return map_layer_key(key, LAYER, module.num_heads)


def key_map(key: str, module: Wav2Vec2Encoder, tower: str) -> tuple[str, Transform] | None:
    """HF key -> (Wav2Vec2Encoder param path, transform); None for IGNORED keys. With conv_pos_batch_norm
    the paths start with the collection (`params/`, or `batch_stats/` for the running statistics)."""
    target = param_key_map(strip(key), module)
    if target is None or not module.conv_pos_batch_norm:
        return target
    path, transform = target
    collection = "batch_stats" if path.endswith(("batch_norm/mean", "batch_norm/var")) else "params"
    return f"{collection}/{path}", transform


def hf_config(module: Wav2Vec2Encoder, params: dict, tower: str) -> dict:
    """The HF config of `module`: WavLMModel, HubertModel or Wav2Vec2Model as `variant` says.

    The inverse of encoder_from_config (`params` is unused: the fields fix every shape); options the
    variant's checkpoints cannot hold are reported by mmjax.port.export's check. SpecAugment's mask_time_prob
    is HF's default 0.05 when the module keeps masked_spec_embed (HF creates it only then), else 0.
    """
    if module.variant not in ARCHITECTURES:
        raise ValueError(f"Wav2Vec2Encoder variant={module.variant!r} is not one of {tuple(ARCHITECTURES)}")
    config = {
        "architectures": [ARCHITECTURES[module.variant]],
        "model_type": module.variant,
        "conv_dim": list(module.conv_dim),
        "conv_kernel": list(module.conv_kernel),
        "conv_stride": list(module.conv_stride),
        "conv_bias": module.conv_bias,
        "feat_extract_norm": module.feat_extract_norm,
        "feat_extract_activation": module.feat_extract_activation,
        "hidden_size": module.width,
        "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim,
        "hidden_act": module.activation,
        "layer_norm_eps": module.layer_norm_eps,
        "do_stable_layer_norm": module.stable_layer_norm,
        "num_conv_pos_embeddings": module.num_conv_pos_embeddings,
        "num_conv_pos_embedding_groups": module.num_conv_pos_embedding_groups,
        "mask_time_prob": 0.05 if module.masked_spec_embed else 0.0,
        "mask_feature_prob": 0.0,
    }
    if module.variant == "hubert":
        return config | {
            "feat_proj_layer_norm": module.feat_proj_layer_norm,
            "conv_pos_batch_norm": module.conv_pos_batch_norm,
        }
    config |= {
        "add_adapter": module.add_adapter,
        "output_hidden_size": module.output_hidden_size or module.width,
        "adapter_kernel_size": module.adapter_kernel_size,
        "adapter_stride": module.adapter_stride,
        "num_adapter_layers": module.num_adapter_layers,
    }
    if module.variant == "wavlm":
        config |= {"num_buckets": module.num_buckets, "max_bucket_distance": module.max_bucket_distance}
    return config


def hf_shapes(
    hf_config: dict, module: Wav2Vec2Encoder, tower: str
) -> dict[str, tuple[int, ...] | np.ndarray]:
    """Shapes of every key of the HF model `hf_config` describes (as hf_config writes it); BatchNorm's step
    counter is a constant (int64 zero)."""
    width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    conv_dim, kernels = hf_config["conv_dim"], hf_config["conv_kernel"]
    shapes = {}
    for i, (dim, kernel) in enumerate(zip(conv_dim, kernels, strict=True)):
        prefix = f"feature_extractor.conv_layers.{i}"
        shapes[f"{prefix}.conv.weight"] = (dim, conv_dim[i - 1] if i else 1, kernel)
        if hf_config["conv_bias"]:
            shapes[f"{prefix}.conv.bias"] = (dim,)
        if hf_config["feat_extract_norm"] == "layer" or i == 0:
            shapes |= {f"{prefix}.layer_norm.weight": (dim,), f"{prefix}.layer_norm.bias": (dim,)}
    if hf_config.get("feat_proj_layer_norm", True):
        shapes |= {f"feature_projection.layer_norm.{k}": (conv_dim[-1],) for k in ("weight", "bias")}
    shapes |= {
        "feature_projection.projection.weight": (width, conv_dim[-1]),
        "feature_projection.projection.bias": (width,),
    }
    if hf_config["mask_time_prob"] > 0 or hf_config["mask_feature_prob"] > 0:
        shapes["masked_spec_embed"] = (width,)
    pos = "encoder.pos_conv_embed"
    kernel = (
        width,
        width // hf_config["num_conv_pos_embedding_groups"],
        hf_config["num_conv_pos_embeddings"],
    )
    if hf_config.get("conv_pos_batch_norm", False):
        shapes |= {
            f"{pos}.conv.weight": kernel,
            f"{pos}.batch_norm.num_batches_tracked": np.zeros((), np.int64),
        }
        shapes |= {
            f"{pos}.batch_norm.{k}": (width,) for k in ("weight", "bias", "running_mean", "running_var")
        }
    else:
        shapes |= {f"{pos}.conv.parametrizations.weight.original0": (1, 1, kernel[2])}
        shapes |= {f"{pos}.conv.parametrizations.weight.original1": kernel}
    shapes |= {
        f"{pos}.conv.bias": (width,),
        "encoder.layer_norm.weight": (width,),
        "encoder.layer_norm.bias": (width,),
    }
    depth = hf_config["num_hidden_layers"]
    shapes |= layer_shapes(LAYER, width, hf_config["intermediate_size"], depth, prefix="encoder.layers")
    if hf_config["model_type"] == "wavlm":
        for i in range(depth):
            prefix = f"encoder.layers.{i}.attention"
            shapes |= {
                f"{prefix}.gru_rel_pos_const": (1, heads, 1, 1),
                f"{prefix}.gru_rel_pos_linear.bias": (8,),
            }
            shapes[f"{prefix}.gru_rel_pos_linear.weight"] = (8, width // heads)
        shapes["encoder.layers.0.attention.rel_attn_embed.weight"] = (hf_config["num_buckets"], heads)
    if hf_config.get("add_adapter", False):
        out = hf_config["output_hidden_size"]
        if out != width:
            shapes |= {"adapter.proj.weight": (out, width), "adapter.proj.bias": (out,)}
            shapes |= {"adapter.proj_layer_norm.weight": (out,), "adapter.proj_layer_norm.bias": (out,)}
        for i in range(hf_config["num_adapter_layers"]):
            shapes[f"adapter.layers.{i}.conv.weight"] = (2 * out, out, hf_config["adapter_kernel_size"])
            shapes[f"adapter.layers.{i}.conv.bias"] = (2 * out,)
    return shapes
