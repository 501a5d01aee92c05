"""Fusion modules. Each maps (tokens, masks, present) keyed by modality to ({tokens, mask, pooled}, aux).

`build_fusion(cfg, ...)` makes the one named by cfg.name (an experiment's `model.fusion`).
"""

import ml_collections
from flax import linen as nn

from mmjax.fusion.cross_attention import CrossAttentionFusion
from mmjax.fusion.late import LateFusion

FUSIONS = {"late": LateFusion, "cross_attention": CrossAttentionFusion}


def build_fusion(
    cfg: ml_collections.ConfigDict,
    *,
    width: int,
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float,
    pre_ln: bool,
) -> nn.Module:
    """The fusion cfg.name with its fields from `cfg` (depth, bidirectional, ...) and the model's sizes."""
    if cfg.name not in FUSIONS:
        raise ValueError(f"model.fusion.name={cfg.name!r} is not one of {sorted(FUSIONS)}")
    blocks = dict(width=width, num_heads=num_heads, mlp_dim=mlp_dim, dropout_rate=dropout_rate, pre_ln=pre_ln)
    if cfg.name == "late":
        return LateFusion(width=width, mlp_dim=mlp_dim, dropout_rate=dropout_rate)
    if cfg.name == "cross_attention":
        return CrossAttentionFusion(**blocks, depth=cfg.depth, bidirectional=cfg.bidirectional)
    raise AssertionError(f"build_fusion has no case for {cfg.name!r}")
