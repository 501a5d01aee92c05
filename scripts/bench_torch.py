"""The PyTorch side of the benchmarks: the Hugging Face encoders (random, saved once and read by both
frameworks), the twin of mmjax's cross-attention model, its batch, loss and optimizer.

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


def torch_twin_classes():
    """TorchCrossAttentionFusion and TorchTwin (defined in a function: torch is imported only here)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        """mmjax.nn.attention.MultiHeadAttention: no key bias, masked keys, zero output with no valid key."""

        def __init__(self, width: int, heads: int, dropout: float):
            super().__init__()
            self.heads, self.dropout = heads, dropout
            self.query, self.value, self.out = (nn.Linear(width, width) for _ in range(3))
            self.key = nn.Linear(width, width, bias=False)

        def forward(self, x, context, context_mask):
            b, lq, d = x.shape
            lk, h = context.shape[1], self.heads
            q = self.query(x).view(b, lq, h, d // h).transpose(1, 2)
            k = self.key(context).view(b, lk, h, d // h).transpose(1, 2)
            v = self.value(context).view(b, lk, h, d // h).transpose(1, 2)
            mask = context_mask[:, None, None, :]
            drop = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            out = self.out(out.transpose(1, 2).reshape(b, lq, d))
            return torch.where(context_mask.any(-1)[:, None, None], out, 0.0)

    class Block(nn.Module):
        """mmjax.nn.transformer.TransformerBlock(pre_ln=True, cross_attention=True)."""

        def __init__(self, width: int, heads: int, mlp: int, dropout: float):
            super().__init__()
            self.self_attn_ln, self.cross_attn_ln, self.mlp_ln = (
                nn.LayerNorm(width, eps=1e-6) for _ in range(3)
            )
            self.self_attn = Attention(width, heads, dropout)
            self.cross_attn = Attention(width, heads, dropout)
            self.fc1, self.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)
            self.drop = nn.Dropout(dropout)

        def forward(self, x, mask, ctx, ctx_mask):
            h = self.self_attn_ln(x)
            x = x + self.drop(self.self_attn(h, h, mask))
            x = x + self.drop(self.cross_attn(self.cross_attn_ln(x), ctx, ctx_mask))
            h = self.drop(F.gelu(self.fc1(self.mlp_ln(x))))
            return x + self.drop(self.fc2(h))

    class TorchCrossAttentionFusion(nn.Module):
        """mmjax.fusion.cross_attention.CrossAttentionFusion (pre-LN, one-directional)."""

        def __init__(
            self, in_widths: Mapping[str, int], width: int, depth: int, heads: int, mlp: int, dropout
        ):
            super().__init__()
            self.proj = nn.ModuleDict({m: nn.Linear(w, width) for m, w in in_widths.items()})
            self.embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(width)) for m in in_widths})
            self.layers = nn.ModuleList(Block(width, heads, mlp, dropout) for _ in range(depth))
            self.final_ln = nn.LayerNorm(width, eps=1e-6)

        def project(self, m, tokens, masks):
            x = torch.where(masks[m][..., None], tokens[m], 0.0)
            return self.proj[m](x) + self.embedding[m]

        def forward(self, tokens, masks):
            x, x_mask = self.project("text", tokens, masks), masks["text"]
            ctx = torch.cat([self.project(m, tokens, masks) for m in ("image", "audio")], 1)
            ctx_mask = torch.cat([masks["image"], masks["audio"]], 1)
            for layer in self.layers:
                x = layer(x, x_mask, ctx, ctx_mask)
            return self.final_ln(x)[:, 0]

    class TorchTwin(nn.Module):
        """mmjax.model.MultimodalModel with these encoders, cross-attention fusion and linear heads."""

        def __init__(self, encoders: Mapping[str, nn.Module], s, tasks: Mapping[str, int]):
            super().__init__()
            self.encoders = nn.ModuleDict(encoders)
            widths = {m: e.config.hidden_size for m, e in encoders.items()}
            # MultimodalModel's own Dense when an encoder's width is not the fusion's.
            self.model_proj = nn.ModuleDict(
                {m: nn.Linear(w, s.fusion_width) for m, w in widths.items() if w != s.fusion_width}
            )
            self.fusion = TorchCrossAttentionFusion(
                {m: s.fusion_width for m in widths}, s.fusion_width, s.fusion_depth, s.heads, s.mlp, s.dropout
            )
            self.heads = nn.ModuleDict({t: nn.Linear(s.fusion_width, n) for t, n in tasks.items()})

        def forward(self, batch):
            present = batch["present"]
            text_mask = batch["text_mask"]
            text = self.encoders["text"](input_ids=batch["text"], attention_mask=text_mask.long())
            image = self.encoders["image"](pixel_values=batch["image"].permute(0, 3, 1, 2))
            audio = self.encoders["audio"](input_values=batch["audio"])
            encoded = {"text": text.last_hidden_state, "image": image.last_hidden_state}
            encoded["audio"] = audio.last_hidden_state
            full = {m: torch.ones(x.shape[:2], dtype=torch.bool) for m, x in encoded.items()}
            full["text"] = text_mask
            tokens, masks = {}, {}
            for m, x in encoded.items():
                if m in self.model_proj:
                    x = self.model_proj[m](x)
                masks[m] = full[m] & present[m][:, None]
                tokens[m] = torch.where(masks[m][..., None], x, 0.0)
            pooled = self.fusion(tokens, masks)
            return {t: head(pooled) for t, head in self.heads.items()}

        @torch.no_grad()
        def load_mmjax_params(self, flat: Mapping[str, np.ndarray]) -> None:
            """Copies MultimodalModel's fusion, projection and head params (flat_params) into the twin."""

            def dense(linear, prefix):
                kernel = flat[f"{prefix}/kernel"]
                linear.weight.copy_(torch.tensor(kernel.reshape(-1, kernel.shape[-1]).T.copy()))
                if linear.bias is not None:
                    linear.bias.copy_(torch.tensor(flat[f"{prefix}/bias"].reshape(-1).copy()))

            def attention(attn, prefix):
                for name in ("query", "key", "value"):
                    kernel = flat[f"{prefix}/{name}/kernel"]  # [D, H, Dh]
                    getattr(attn, name).weight.copy_(
                        torch.tensor(kernel.reshape(kernel.shape[0], -1).T.copy())
                    )
                    if name != "key":
                        getattr(attn, name).bias.copy_(
                            torch.tensor(flat[f"{prefix}/{name}/bias"].reshape(-1))
                        )
                dense(attn.out, f"{prefix}/out")  # [H, Dh, D]

            def norm(ln, prefix):
                ln.weight.copy_(torch.tensor(flat[f"{prefix}/scale"]))
                ln.bias.copy_(torch.tensor(flat[f"{prefix}/bias"]))

            for m, linear in self.model_proj.items():
                dense(linear, f"{m}_proj")
            f = self.fusion
            for m in f.proj:
                dense(f.proj[m], f"fusion/{m}_proj")
                f.embedding[m].copy_(torch.tensor(flat[f"fusion/{m}_embedding"]))
            for i, layer in enumerate(f.layers):
                p = f"fusion/text_layer_{i}"
                for name in ("self_attn", "cross_attn"):
                    attention(getattr(layer, name), f"{p}/{name}")
                    norm(getattr(layer, f"{name}_ln"), f"{p}/{name}_ln")
                norm(layer.mlp_ln, f"{p}/mlp_ln")
                dense(layer.fc1, f"{p}/mlp/fc1")
                dense(layer.fc2, f"{p}/mlp/fc2")
            norm(f.final_ln, "fusion/text_final_ln")
            for t, head in self.heads.items():
                dense(head, f"head_{t}/logits")

    return TorchCrossAttentionFusion, TorchTwin


def torch_batch(batch: Mapping) -> dict:
    import torch

    return {
        k: torch_batch(v) if isinstance(v, Mapping) else torch.from_numpy(np.asarray(v))
        for k, v in batch.items()
    }


def torch_loss(outputs: Mapping, batch: Mapping, weights: Mapping[str, float]):
    """mmjax's static multi-task loss: sum over tasks of weight * mean cross-entropy."""
    import torch.nn.functional as F

    return sum(w * F.cross_entropy(outputs[t], batch[f"labels/{t}"].long()) for t, w in weights.items())


def torch_optimizer(model, cfg):
    """AdamW as mmjax.optim (decay on matrices/embeddings only); clipping is done in the step."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2))
