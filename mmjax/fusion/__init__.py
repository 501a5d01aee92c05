"""Fusion modules. Each maps (tokens, masks, present) keyed by stream to ({tokens, mask, pooled}, aux).

Streams have any names (text, text_2, image, image_2, audio, ...) and are taken in the order given: the
tokens dict's insertion order (mmjax.fusion.common). A fusion that cannot work with the streams it gets
raises a ValueError naming itself and them (co_attention needs two; cross_attention its query and another;
film its condition and another); the others work with any number from one.

`build_fusion(cfg, ...)` makes the one named by cfg.name (an experiment's `model.fusion`).
"""

import ml_collections
from flax import linen as nn

from mmjax.fusion.bottleneck import BottleneckFusion
from mmjax.fusion.co_attention import CoAttentionFusion
from mmjax.fusion.cross_attention import CrossAttentionFusion
from mmjax.fusion.early import EarlyFusion
from mmjax.fusion.film import FiLMFusion
from mmjax.fusion.gated import GatedFusion
from mmjax.fusion.late import LateFusion
from mmjax.fusion.late_logits import LateLogitsFusion
from mmjax.fusion.perceiver import PerceiverFusion
from mmjax.fusion.tensor import LowRankTensorFusion, TensorFusion

FUSIONS = {
    "late": LateFusion,
    "late_logits": LateLogitsFusion,
    "early": EarlyFusion,
    "cross_attention": CrossAttentionFusion,
    "co_attention": CoAttentionFusion,
    "bottleneck": BottleneckFusion,
    "gated": GatedFusion,
    "film": FiLMFusion,
    "tensor": TensorFusion,
    "low_rank_tensor": LowRankTensorFusion,
    "perceiver": PerceiverFusion,
}


def build_fusion(
    cfg: ml_collections.ConfigDict,
    *,
    width: int,
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float,
    pre_ln: bool,
    scan: bool = False,
    remat: str = "",
    dtype: str = "float32",
    attention: str = "xla",
) -> nn.Module:
    """The fusion cfg.name with its fields from `cfg` (depth, bidirectional, ...) and the model's sizes.

    The speed levers (mmjax.nn.transformer) reach the transformer-based fusions; scan only EarlyFusion's
    Encoder (the others' layers differ from each other).
    """
    if cfg.name not in FUSIONS:
        raise ValueError(f"model.fusion.name={cfg.name!r} is not one of {sorted(FUSIONS)}")
    blocks = dict(width=width, num_heads=num_heads, mlp_dim=mlp_dim, dropout_rate=dropout_rate, pre_ln=pre_ln)
    blocks |= dict(remat=remat, dtype=dtype, attention=attention)
    if cfg.name == "late":
        return LateFusion(width=width, mlp_dim=mlp_dim, dropout_rate=dropout_rate)
    if cfg.name == "cross_attention":
        query = _stream_name(cfg, "query")  # checked against the actual streams at call time
        return CrossAttentionFusion(**blocks, depth=cfg.depth, bidirectional=cfg.bidirectional, query=query)
    if cfg.name == "late_logits":
        return LateLogitsFusion(width=width, mlp_dim=mlp_dim, dropout_rate=dropout_rate)
    if cfg.name == "early":
        return EarlyFusion(**blocks, depth=cfg.depth, scan=scan)
    if cfg.name == "co_attention":
        return CoAttentionFusion(**blocks, depth=cfg.depth)
    if cfg.name == "bottleneck":
        return BottleneckFusion(
            **blocks, depth=cfg.depth, num_bottlenecks=cfg.num_bottlenecks, fusion_layer=cfg.fusion_layer
        )
    if cfg.name == "gated":
        return GatedFusion(width=width, dropout_rate=dropout_rate)
    if cfg.name == "film":
        condition = _stream_name(cfg, "condition")  # checked against the actual streams at call time
        return FiLMFusion(width=width, depth=cfg.depth, dropout_rate=dropout_rate, condition=condition)
    if cfg.name == "tensor":
        return TensorFusion(width=width, dropout_rate=dropout_rate)
    if cfg.name == "low_rank_tensor":
        return LowRankTensorFusion(width=width, rank=cfg.rank, dropout_rate=dropout_rate)
    if cfg.name == "perceiver":
        return PerceiverFusion(**blocks, depth=cfg.depth, num_latents=cfg.num_latents)
    raise AssertionError(f"build_fusion has no case for {cfg.name!r}")


def _stream_name(cfg: ml_collections.ConfigDict, field: str) -> str:
    """cfg.<field> (default "text"): a stream name, any non-empty string."""
    name = cfg.get(field, "text")
    if not isinstance(name, str) or not name:
        raise ValueError(f"model.fusion.{field}={name!r} must be a stream name (a non-empty string)")
    return name
