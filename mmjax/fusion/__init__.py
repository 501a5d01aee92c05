"""Fusion modules. Each maps (tokens, masks, present) keyed by modality to ({tokens, mask, pooled}, aux)."""

from mmjax.fusion.cross_attention import CrossAttentionFusion
from mmjax.fusion.late import LateFusion

FUSIONS = {"late": LateFusion, "cross_attention": CrossAttentionFusion}
