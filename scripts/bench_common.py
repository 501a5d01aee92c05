"""Shared pieces of scripts/bench_train.py and scripts/bench_infer.py.

A multimodal model built twice from the same Hugging Face encoders: mmjax (the encoders ported with
`mmjax.port`, the cross-attention fusion and heads of mmjax.model) and a PyTorch twin (BertModel, ViTModel,
ASTModel plus `TorchCrossAttentionFusion`, a line-by-line copy of mmjax/fusion/cross_attention.py). Both start
from the same weights: the HF encoders are saved once with `save_pretrained` and read by both; the fusion and
head parameters are copied from mmjax into the twin (`TorchTwin.load_mmjax_params`).

Only `bench_torch_*` functions import torch; the jax side reads the saved folders with safetensors.
"""

import dataclasses
import gzip
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = str(REPO / "experiments" / "av_digits.py")
MODALITIES = ("text", "image", "audio")
# Config switches other mmjax work adds to `model` (used when the config has them): flag -> field.
SWITCHES = {"scan": "scan", "remat": "remat", "dtype": "dtype", "attention": "attention"}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Input shapes and model sizes of a benchmark model (encoders share width/depth/heads/mlp)."""

    batch: int = 8
    text_len: int = 64
    vocab: int = 30522  # BERT's WordPiece vocabulary
    max_positions: int = 512  # BERT's position table
    image_size: int = 224
    channels: int = 3
    image_patch: int = 16
    frames: int = 500  # 5 s of 10 ms frames
    mels: int = 128
    audio_patch: int = 16  # AST cuts square patches
    time_stride: int = 16  # AST's own default is 10 (overlapping patches); 16: non-overlapping
    freq_stride: int = 16
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp: int = 1024
    fusion_depth: int = 2
    fusion_width: int = 256
    dropout: float = 0.0  # 0: deterministic steps, so the twins' losses can be compared

    def tokens(self) -> dict[str, int]:
        """Tokens per example of each encoder ([CLS]/distillation tokens included)."""
        time_patches = (self.frames - self.audio_patch) // self.time_stride + 1
        freq_patches = (self.mels - self.audio_patch) // self.freq_stride + 1
        return {
            "text": self.text_len,
            "image": (self.image_size // self.image_patch) ** 2 + 1,
            "audio": time_patches * freq_patches + 2,
        }


QUICK = dict(
    batch=2,
    text_len=8,
    vocab=100,
    max_positions=16,
    image_size=32,
    image_patch=16,
    frames=48,
    mels=32,
    width=32,
    depth=1,
    heads=2,
    mlp=64,
    fusion_depth=1,
    fusion_width=32,
)


def add_shape_flags(parser, defaults: Shapes) -> None:
    """One --flag per Shapes field (dashes for underscores), defaulting to `defaults`."""
    for field in dataclasses.fields(Shapes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag, type=field.type, default=None, help=f"default {getattr(defaults, field.name)}"
        )


def add_switch_flags(parser) -> None:
    parser.add_argument("--scan", action="store_true", help="model.scan=True (if the config has it)")
    parser.add_argument("--remat", default=None, help="model.remat (e.g. dots; if the config has it)")
    parser.add_argument(
        "--dtype", default=None, help="model.dtype: float32 | bfloat16 (if the config has it)"
    )
    parser.add_argument(
        "--attention", default=None, help="model.attention: xla | fused (if the config has it)"
    )


def shapes_from_args(args, defaults: Shapes) -> Shapes:
    """`defaults` (or QUICK's tiny sizes with --quick) with the flags given on the command line."""
    base = dataclasses.replace(defaults, **QUICK) if args.quick else defaults
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Shapes) if getattr(args, f.name) is not None
    }
    return dataclasses.replace(base, **given)


def switches_from_args(args) -> dict:
    """{model field: value} of the switch flags that were given."""
    values = {
        "scan": args.scan or None,
        "remat": args.remat,
        "dtype": args.dtype,
        "attention": args.attention,
    }
    return {SWITCHES[k]: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- Hugging Face encoders (torch side)


def hf_configs(s: Shapes) -> dict:
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


def hf_encoders(s: Shapes, seed: int = 0) -> dict:
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


def save_hf_encoders(s: Shapes, folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Saves the three random encoders with save_pretrained under `folder`; {modality: path}."""
    paths = {}
    for m, model in hf_encoders(s, seed).items():
        paths[m] = str(Path(folder) / m)
        model.save_pretrained(paths[m])
    return paths


# ---------------------------------------------------------------- mmjax side


def mmjax_config(s: Shapes, hf_dirs: Mapping[str, str] | None, switches: Mapping = (), arg: str = ""):
    """The AV-Digits experiment config reshaped to `s`: cross-attention fusion, encoders from `hf_dirs`
    (None: the scratch encoders of the config's own size). Returns (config, {task: classes}, applied
    switches). Switches the config lacks are left out (and reported by the caller)."""
    from mmjax.config import load_config
    from mmjax.data import av_digits

    # The text tower is trained here (a batch holds token ids, not a frozen tower's cached outputs).
    cfg = load_config(EXPERIMENT + ":" + ",".join(filter(None, ["text=scratch", arg])))
    m = cfg.model
    if hf_dirs is not None:
        m.width, m.depth, m.num_heads, m.mlp_dim = s.fusion_width, s.fusion_depth, s.heads, s.mlp
        m.fusion.name = "cross_attention"
        m.fusion.depth = s.fusion_depth
        m.dropout = s.dropout
        m.head_hidden = 0  # the PyTorch twin's heads are linear
        m.text.max_len = cfg.data.text_len = s.text_len
        m.text.vocab_size = s.vocab
        m.image.size, m.image.channels, m.image.patch_size = s.image_size, s.channels, s.image_patch
        m.audio.frames = cfg.data.audio_frames = s.frames
        m.audio.mels = s.mels
        # Only checked for divisibility (the AST port brings its own patches and strides).
        m.audio.patch_time, m.audio.patch_freq = 1, 1
        for mod in MODALITIES:
            m[mod].init_from = f"hf:{hf_dirs[mod]}"
    cfg.multitask.grad_norms = False  # per-task gradient norms are extra backward passes: not a train step
    applied = {}
    for field, value in dict(switches).items():
        if field in m:
            m[field] = type(m[field])(value) if not isinstance(m[field], bool) else bool(value)
            applied[field] = m[field]
    return cfg, av_digits.task_classes(cfg.tasks), applied


def build_mmjax(cfg, tasks: Mapping[str, int], batch: Mapping, mesh=None):
    """(model, optimizer, objective, state, jitted train step) from the config; `batch` for init."""
    import jax

    from mmjax import optim, parallel
    from mmjax.model import build_model, pretrained_params
    from mmjax.step import init_state, make_objective, make_train_step

    model = build_model(cfg.model, tasks)
    optimizer = optim.make_optimizer(cfg.optim, total_steps=10_000)
    objective = make_objective(cfg)
    mesh = mesh or parallel.make_mesh(jax.devices()[:1])
    state = init_state(model, optimizer, objective, batch, cfg.seed, pretrained_params(cfg.model))
    step = make_train_step(model, optimizer, objective, mesh)
    return model, optimizer, objective, state, step


def random_batch(s: Shapes, tasks: Mapping[str, int], batch_size: int | None = None, seed: int = 0) -> dict:
    """A numpy batch in mmjax's layout: random tokens (the last quarter of the text padded in half of the
    examples), images, spectrograms and labels; every modality present, audio unpadded."""
    rng = np.random.default_rng(seed)
    b = batch_size or s.batch
    text_mask = np.ones((b, s.text_len), bool)
    text_mask[: b // 2, s.text_len - s.text_len // 4 :] = False
    text = rng.integers(1, s.vocab, (b, s.text_len)).astype(np.int32) * text_mask
    batch = {
        "text": text.astype(np.int32),
        "text_mask": text_mask,
        "image": rng.normal(size=(b, s.image_size, s.image_size, s.channels)).astype(np.float32),
        "audio": rng.normal(size=(b, s.frames, s.mels)).astype(np.float32),
        "audio_mask": np.ones((b, s.frames), bool),
        "present": {m: np.ones((b,), bool) for m in MODALITIES},
    }
    return batch | {f"labels/{t}": rng.integers(0, n, (b,)).astype(np.int32) for t, n in tasks.items()}


def flat_params(params: Mapping) -> dict[str, np.ndarray]:
    """{"a/b/c": numpy array} of a param tree."""
    from flax import traverse_util

    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}


def xla_costs(compiled) -> dict:
    """FLOPs, bytes accessed and memory sizes of a compiled jax function (XLA's own estimates)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out = {
        "xla_flops": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
    }
    mem = compiled.memory_analysis()
    if mem is not None:
        out["memory"] = {
            k: int(getattr(mem, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "alias", "generated_code")
            if hasattr(mem, f"{k}_size_in_bytes")
        }
        out["memory"]["peak_estimate"] = out["memory"]["argument"] + out["memory"]["temp"]
    return out


# ---------------------------------------------------------------- PyTorch twin


def _hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (its opcode or fusion name prefix, op_name metadata)} of a compiled HLO module."""
    ops = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = \S+ ([\w-]+)\(", line)
        if match:
            meta = re.search(r'op_name="([^"]*)"', line)
            ops[match.group(1)] = (match.group(2), meta.group(1) if meta else "")
    return ops


def _op_kind(name: str, opcode: str) -> str:
    """matmul | layout copy | other (elementwise, reductions, scatter, ...), from an HLO op's name/opcode."""
    if opcode in ("dot", "convolution") or re.match(r"(ynn|xnn|onednn)_fusion", name):
        return "matmul"
    if opcode in ("copy", "transpose") or re.match(r"(copy|transpose)", name):
        return "layout copy"
    return "other"


def _component(op_name: str) -> str:
    """The model part an op belongs to (text/image/audio encoder, fusion, heads) or `optimizer`."""
    match = re.search(r"MultimodalModel\.forward/([^/]+)(?:/(encoder))?", op_name)
    if not match:
        return "optimizer and loss"
    return "/".join(g for g in match.groups() if g)


def profile_summary(trace_dir: str | Path, hlo_text: str, steps: int, top: int = 12) -> dict:
    """Device busy time per step of the ops of `hlo_text` in a jax.profiler trace of `steps` steps, by kind
    (matmul / layout copy / other), by model component, and the `top` costliest ops. Busy time sums the
    ops on all threads, so it exceeds the wall time when the runtime runs ops concurrently."""
    ops = _hlo_ops(hlo_text)
    busy: dict[str, float] = {}
    kinds: dict[str, float] = {}
    parts: dict[str, float] = {}
    for path in Path(trace_dir).glob("plugins/profile/*/*.trace.json.gz"):
        for event in json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]:
            if event.get("ph") != "X" or event.get("name") not in ops:
                continue
            ms = event["dur"] / 1000 / steps
            opcode, op_name = ops[event["name"]]
            busy[event["name"]] = busy.get(event["name"], 0.0) + ms
            kind = _op_kind(event["name"], opcode)
            kinds[kind] = kinds.get(kind, 0.0) + ms
            part = _component(op_name)
            parts[part] = parts.get(part, 0.0) + ms
    costly = sorted(busy.items(), key=lambda kv: -kv[1])[:top]
    return {
        "busy_ms_per_step": sum(busy.values()),
        "by_kind_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "by_component_ms": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "top_ops": [
            {"op": n, "ms": ms, "kind": _op_kind(n, ops[n][0]), "op_name": ops[n][1]} for n, ms in costly
        ],
    }


TORCH_MATMULS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::convolution_backward",
    "aten::mkldnn_convolution",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)
TORCH_COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")


def torch_profile_summary(run_step: Callable[[], object], steps: int, top: int = 12) -> dict:
    """torch.profiler self CPU time per step of `steps` calls of run_step, by the kinds of profile_summary."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run_step()
    rows = [(e.key, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()]
    kinds = {"matmul": 0.0, "layout copy": 0.0, "other": 0.0}
    for key, ms in rows:
        kinds["matmul" if key in TORCH_MATMULS else "layout copy" if key in TORCH_COPIES else "other"] += ms
    return {
        "busy_ms_per_step": sum(ms for _, ms in rows),
        "by_kind_ms": kinds,
        "top_ops": [{"op": k, "ms": ms} for k, ms in sorted(rows, key=lambda r: -r[1])[:top]],
    }


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

        def __init__(self, encoders: Mapping[str, nn.Module], s: Shapes, tasks: Mapping[str, int]):
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


# ---------------------------------------------------------------- FLOPs, timing, machine


def analytic_flops(s: Shapes, tasks: Mapping[str, int], train: bool = True) -> float:
    """Matmul FLOPs of one step by formula: 2 * multiply-adds of every Dense, patch embedding and attention
    product, times 3 for training (forward + backward's two matmuls per forward one: the 6*N*T rule)."""
    tokens = s.tokens()
    d, f = s.width, s.mlp

    def encoder_layer(n: int, width: int) -> float:
        return 2 * n * (4 * width * width + 2 * width * f) + 4 * n * n * width

    fwd = sum(s.depth * encoder_layer(n, d) for n in tokens.values())
    fwd += 2 * (tokens["image"] - 1) * s.image_patch**2 * s.channels * d
    fwd += 2 * (tokens["audio"] - 2) * s.audio_patch**2 * d
    w, lq, lk = s.fusion_width, tokens["text"], tokens["image"] + tokens["audio"]
    if d != w:
        fwd += 2 * sum(tokens.values()) * d * w
    fwd += 2 * sum(tokens.values()) * w * w  # the fusion's per-modality projections
    cross = 2 * lq * 2 * w * w + 2 * lk * 2 * w * w + 4 * lq * lk * w
    fwd += s.fusion_depth * (encoder_layer(lq, w) + cross)  # fusion MLP width = s.mlp
    fwd += 2 * w * sum(tasks.values())
    return float(fwd * s.batch * (3 if train else 1))


def median_times(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Runs fn `warmup` times untimed, then `repeats` timed calls (fn must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summary(times)


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_s": statistics.median(times), "min_s": ordered[0], "p99_s": p99, "n": len(times)}


def jax_matmul_peak(n: int, repeats: int) -> float:
    """FLOP/s of the best of `repeats` fp32 n x n matmuls in jax."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    return 2 * n**3 / median_times(lambda: matmul(a, a).block_until_ready(), 1, repeats)["min_s"]


def torch_matmul_peak(n: int, repeats: int) -> float:
    import torch

    a = torch.randn(n, n)
    return 2 * n**3 / median_times(lambda: a @ a, 1, repeats)["min_s"]


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes (Linux /proc and getrusage)."""
    current = 0
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def versions(packages=("jax", "jaxlib", "flax", "optax", "torch", "transformers")) -> dict:
    """Python, CPU count, platform and the versions of `packages` (those installed)."""
    out = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    for name in packages:
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def run_phase(script: str, argv: list[str]) -> dict:
    """Runs `python script argv` (one framework's phase); the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    if proc.returncode:
        return {"error": f"phase exited with {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_phases(script: str, argv: list[str], s: Shapes) -> tuple[dict, dict, float]:
    """Saves random HF encoders of `s` to a temporary folder, then runs the script's jax phase and (unless it
    failed) its torch phase, each in its own process. Returns (jax result, torch result, save seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}_") as folder:
        start = time.perf_counter()
        save_hf_encoders(s, folder)
        save_s = time.perf_counter() - start
        phase_argv = [*without_flag(argv, "--out"), "--hf-dir", folder, "--phase"]  # phases only print
        jx = run_phase(script, [*phase_argv, "jax"])
        pt = run_phase(script, [*phase_argv, "torch"]) if "error" not in jx else {"error": "skipped"}
    return jx, pt, save_s


def emit_json(result: dict, out: str) -> None:
    """Prints the result as indented JSON, and writes it to `out` too unless that is empty."""
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def print_table(rows: list[list], header: list[str]) -> None:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
