"""The PyTorch side of the bench model: the Hugging Face encoders (random, saved once and read by both
frameworks), the twin of mmjax's cross-attention model on them (scripts/torch_twin.py) and its batch.

Only these functions import torch and transformers (inside them). `s` is a bench_common.Shapes.
"""

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def hf_configs(s) -> dict:
    """BertConfig, ViTConfig and ASTConfig with the benchmark sizes (dropout s.dropout everywhere)."""
    from transformers import ASTConfig, BertConfig, ViTConfig

    common = dict(
        hidden_size=s.width,
        num_hidden_layers=s.depth,
        num_attention_heads=s.heads,
        intermediate_size=s.mlp,
        hidden_dropout_prob=s.dropout,
        attention_probs_dropout_prob=s.dropout,
    )
    return {
        "text": BertConfig(vocab_size=s.vocab, max_position_embeddings=s.max_positions, **common),
        "image": ViTConfig(
            image_size=s.image_size, patch_size=s.image_patch, num_channels=s.channels, **common
        ),
        "audio": ASTConfig(
            max_length=s.frames,
            num_mel_bins=s.mels,
            patch_size=s.audio_patch,
            time_stride=s.time_stride,
            frequency_stride=s.freq_stride,
            **common,
        ),
    }


def hf_encoders(s, seed: int = 0) -> dict:
    """Randomly initialised BertModel / ViTModel (no poolers: nothing reads them) / ASTModel."""
    import torch
    from transformers import ASTModel, BertModel, ViTModel

    torch.manual_seed(seed)
    cfgs = hf_configs(s)
    return {
        "text": BertModel(cfgs["text"], add_pooling_layer=False),
        "image": ViTModel(cfgs["image"], add_pooling_layer=False),
        "audio": ASTModel(cfgs["audio"]),
    }


def load_hf_encoders(dirs: Mapping[str, str]) -> dict:
    """The encoders saved by save_hf_encoders, loaded back with from_pretrained."""
    from transformers import ASTModel, BertModel, ViTModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    return {
        "text": BertModel.from_pretrained(dirs["text"], add_pooling_layer=False),
        "image": ViTModel.from_pretrained(dirs["image"], add_pooling_layer=False),
        "audio": ASTModel.from_pretrained(dirs["audio"]),
    }


def save_hf_encoders(s, folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Saves the three random encoders with save_pretrained under `folder`; {modality: path}."""
    paths = {}
    for m, model in hf_encoders(s, seed).items():
        paths[m] = str(Path(folder) / m)
        model.save_pretrained(paths[m])
    return paths


def bench_twin(encoders: Mapping, s, tasks: Mapping[str, int]):
    """The PyTorch twin of the bench model (bench_common.mmjax_config): these HF encoders, mmjax's own
    Dense where an encoder's width is not the fusion's, cross-attention fusion and linear heads
    (scripts/torch_twin.py; load mmjax's params with torch_twin.load_flax)."""
    import torch_twin as tt

    hf = {m: tt.HFEncoder(model, m) for m, model in encoders.items()}
    widths = {m: model.config.hidden_size for m, model in encoders.items()}
    w = s.fusion_width
    fusion = tt.CrossAttentionFusion(list(hf), "text", w, s.fusion_depth, s.heads, s.mlp, s.dropout)
    heads = {t: tt.Head(w, n, 0, 0.0) for t, n in tasks.items()}
    return tt.Twin(hf, {m: m for m in hf}, widths, w, fusion, heads)


def torch_batch(batch: Mapping) -> dict:
    import torch

    return {
        k: torch_batch(v) if isinstance(v, Mapping) else torch.from_numpy(np.asarray(v))
        for k, v in batch.items()
    }


def to_device(batch: Mapping, device: str) -> dict:
    """A (nested) dict of torch tensors moved to `device`."""
    return {k: to_device(v, device) if isinstance(v, Mapping) else v.to(device) for k, v in batch.items()}
