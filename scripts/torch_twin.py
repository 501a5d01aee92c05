"""PyTorch twins of mmjax's multimodal models (mmjax/model.py), for the training benchmarks.

The layers mirror mmjax's and carry the same names (a flax path `fusion/text_layer_0/mlp/fc1/kernel` is the
twin's `fusion.text_layer_0.mlp.fc1.weight`), so `load_flax` copies mmjax's parameters in one strict pass
and both frameworks start from identical weights. Hugging Face encoders (`HFEncoder`) keep their own weights.

An experiment's twin is built from a plain-dict spec (`build_twin`); scripts/bench_experiment.py writes it
from the experiment config, so this process imports torch and numpy only. Mirrored: pre-LN transformer
encoders over patches (mmjax SpectrogramEncoder; images go through the ResNet) or word ids (TextEncoder), the
cached text tower, the ResNet encoder, cross-attention fusion and classification heads (hidden layer or
linear), with the static multi-task loss over classes, multi-label and regression tasks.
"""

import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # mmjax's LayerNorm epsilon (flax's default)


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
        any_key = context_mask.any(-1)
        # A query with no valid key would softmax over nothing (NaN): let it see every key, then zero it.
        mask = (context_mask | ~any_key[:, None])[:, None, None, :]
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        out = self.out(out.transpose(1, 2).reshape(b, lq, d))
        return torch.where(any_key[:, None, None], out, 0.0)


class Mlp(nn.Module):
    """mmjax.nn.transformer.MlpBlock (exact GELU)."""

    def __init__(self, width: int, mlp: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """mmjax.nn.transformer.TransformerBlock(pre_ln=True), with cross-attention to a context if `cross`."""

    def __init__(self, width: int, heads: int, mlp: int, dropout: float, cross: bool = False):
        super().__init__()
        self.self_attn, self.self_attn_ln = Attention(width, heads, dropout), nn.LayerNorm(width, EPS)
        if cross:
            self.cross_attn, self.cross_attn_ln = Attention(width, heads, dropout), nn.LayerNorm(width, EPS)
        self.mlp, self.mlp_ln = Mlp(width, mlp, dropout), nn.LayerNorm(width, EPS)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, context=None, context_mask=None):
        h = self.self_attn_ln(x)
        x = x + self.drop(self.self_attn(h, h, mask))
        if context is not None:
            x = x + self.drop(self.cross_attn(self.cross_attn_ln(x), context, context_mask))
        return x + self.drop(self.mlp(self.mlp_ln(x)))


class Encoder(nn.Module):
    """mmjax.nn.transformer.Encoder (pre-LN): `layer_{i}` blocks, then `final_ln`."""

    def __init__(self, width: int, depth: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        for i in range(depth):
            self.add_module(f"layer_{i}", Block(width, heads, mlp, dropout))
        self.depth = depth
        self.final_ln = nn.LayerNorm(width, EPS)

    def forward(self, x, mask):
        for i in range(self.depth):
            x = getattr(self, f"layer_{i}")(x, mask)
        return self.final_ln(x)


class Table(nn.Module):
    """One learned tensor under mmjax's parameter name (a [CLS] token, a position table)."""

    def __init__(self, name: str, *shape: int):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        self.key = name

    def forward(self):
        return getattr(self, self.key)


class PatchEncoder(nn.Module):
    """mmjax SpectrogramEncoder (time-major, non-overlapping patches; unchecked against ViTEncoder): patches
    flattened in (ph, pw, C) order -> Dense, [CLS] first, learned positions, dropout, pre-LN encoder.
    Inputs [B, H, W] (spectrograms, with a frame mask [B, H]) or [B, H, W, C] (images). Returns (tokens,
    mask, pooled = [CLS])."""

    def __init__(self, patch: tuple[int, int], channels: int, tokens: int, width, depth, heads, mlp, dropout):
        super().__init__()
        self.patch = patch
        self.patch_embedding = nn.Module()
        self.patch_embedding.proj = nn.Linear(patch[0] * patch[1] * channels, width)
        self.cls = Table("cls", width)
        self.position_embedding = Table("embedding", tokens, width)
        self.drop = nn.Dropout(dropout)
        self.encoder = Encoder(width, depth, heads, mlp, dropout)

    def forward(self, x, frame_mask=None):
        if x.ndim == 3:
            x = x[..., None]
        if frame_mask is not None:
            x = torch.where(frame_mask[:, :, None, None], x, 0.0)
        (b, hh, ww, c), (p, q) = x.shape, self.patch
        patches = x.view(b, hh // p, p, ww // q, q, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, p * q * c)
        x = self.patch_embedding.proj(patches)
        x = torch.cat([self.cls().expand(b, 1, -1), x], 1)
        x = self.drop(x + self.position_embedding()[: x.shape[1]])
        if frame_mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:  # a patch is valid if one of its frames is; time-major: each time patch spans the frequencies
            valid = frame_mask.view(b, hh // p, p).any(-1).repeat_interleave(ww // q, dim=1)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), valid], 1)
        x = self.encoder(x, mask)
        return x, mask, x[:, 0]


class TextEncoder(nn.Module):
    """mmjax TextEncoder (pre-LN, scratch): token + position + token-type embeddings -> LayerNorm ->
    dropout -> encoder; pooled = the first token."""

    def __init__(self, vocab: int, max_len: int, width, depth, heads, mlp, dropout):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = Table("embedding", max_len, width)
        self.type_embedding = nn.Embedding(2, width)
        self.embedding_ln = nn.LayerNorm(width, EPS)
        self.drop = nn.Dropout(dropout)
        self.encoder = Encoder(width, depth, heads, mlp, dropout)

    def forward(self, ids, mask):
        x = self.token_embedding(ids) + self.position_embedding()[: ids.shape[1]]
        x = self.drop(self.embedding_ln(x + self.type_embedding.weight[0]))
        x = self.encoder(x, mask)
        return x, mask, x[:, 0]


class CachedText(nn.Module):
    """mmjax CachedTextEncoder: a frozen tower's token outputs, computed ahead; no params."""

    def forward(self, features, mask):
        return features, mask, masked_mean(features, mask)


class HFEncoder(nn.Module):
    """A Hugging Face encoder (weights of its own, not from mmjax): text (input_ids, attention_mask), images
    [B, H, W, C] or spectrograms [B, T, F]; returns (last_hidden_state, mask, [CLS])."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x, mask=None):
        if self.kind == "text":
            out = self.model(input_ids=x, attention_mask=mask.long()).last_hidden_state
            return out, mask, out[:, 0]
        if self.kind == "image":
            out = self.model(pixel_values=x.permute(0, 3, 1, 2)).last_hidden_state
        else:
            out = self.model(input_values=x).last_hidden_state
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device), out[:, 0]


class ConvNorm(nn.Module):
    """mmjax.encoders.resnet.ConvNorm: bias-free Conv (padding kernel // 2) -> BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm(self.conv(x))


class ResidualLayer(nn.Module):
    """mmjax.encoders.resnet.ResidualLayer, basic type: 3x3 (stride) -> ReLU -> 3x3, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin != cout or stride != 1:
            self.shortcut = ConvNorm(cin, cout, 1, stride)
        self.conv_0, self.conv_1 = ConvNorm(cin, cout, 3, stride), ConvNorm(cout, cout, 3)

    def forward(self, x):
        residual = self.shortcut(x) if hasattr(self, "shortcut") else x
        return F.relu(self.conv_1(F.relu(self.conv_0(x))) + residual)


class ResNet(nn.Module):
    """mmjax ResNetEncoder (basic layers, ReLU) on images [B, H, W, C]: tokens = [global average, the last
    map's positions row-major], pooled = the global average."""

    def __init__(self, channels, embedding_size, hidden_sizes, depths, stem_kernel, stem_stride, pool):
        super().__init__()
        self.embedder = ConvNorm(channels, embedding_size, stem_kernel, stem_stride)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()
        self.names, cin = [], embedding_size
        for s, (features, depth) in enumerate(zip(hidden_sizes, depths, strict=True)):
            for i in range(depth):
                name = f"stage_{s}_layer_{i}"
                self.add_module(name, ResidualLayer(cin, features, 2 if i == 0 and s > 0 else 1))
                self.names.append(name)
                cin = features

    def forward(self, x):
        x = self.pool(F.relu(self.embedder(x.permute(0, 3, 1, 2))))
        for name in self.names:
            x = getattr(self, name)(x)
        spatial = x.flatten(2).transpose(1, 2)
        pooled = spatial.mean(1)
        tokens = torch.cat([pooled[:, None], spatial], 1)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device), pooled


class CrossAttentionFusion(nn.Module):
    """mmjax.fusion.cross_attention.CrossAttentionFusion (pre-LN, one-directional): the `query` stream's
    tokens attend to every other stream's, in the order given; pooled = the query's first token."""

    def __init__(self, streams, query: str, width: int, depth: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.streams, self.query, self.depth = list(streams), query, depth
        for m in self.streams:
            self.add_module(f"{m}_proj", nn.Linear(width, width))
            self.register_parameter(f"{m}_embedding", nn.Parameter(torch.zeros(width)))
        for i in range(depth):
            self.add_module(f"{query}_layer_{i}", Block(width, heads, mlp, dropout, cross=True))
        self.add_module(f"{query}_final_ln", nn.LayerNorm(width, EPS))

    def project(self, m, tokens, masks, present):
        valid = masks[m] & present[m][:, None]
        x = getattr(self, f"{m}_proj")(torch.where(valid[..., None], tokens[m], 0.0))
        return x + getattr(self, f"{m}_embedding"), valid

    def forward(self, tokens, masks, present):
        x, x_mask = self.project(self.query, tokens, masks, present)
        context = [self.project(m, tokens, masks, present) for m in self.streams if m != self.query]
        ctx, ctx_mask = torch.cat([c[0] for c in context], 1), torch.cat([c[1] for c in context], 1)
        for i in range(self.depth):
            x = getattr(self, f"{self.query}_layer_{i}")(x, x_mask, ctx, ctx_mask)
        return getattr(self, f"{self.query}_final_ln")(x)[:, 0]


class Head(nn.Module):
    """mmjax.heads.ClassificationHead: dropout -> [hidden Dense -> GELU -> dropout] -> logits Dense."""

    def __init__(self, width: int, outputs: int, hidden: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        if hidden:
            self.hidden = nn.Linear(width, hidden)
        self.logits = nn.Linear(hidden or width, outputs)

    def forward(self, x):
        x = self.drop(x)
        if hasattr(self, "hidden"):
            x = self.drop(F.gelu(self.hidden(x)))
        return self.logits(x)


class Twin(nn.Module):
    """mmjax.model.MultimodalModel: one encoder per stream, `{stream}_proj` where an encoder's width is not
    the model's, the text streams' masked mean token with `text_pool` (in training plus Gaussian noise of
    `text_noise` x its RMS), the fusion, `head_{task}`s."""

    def __init__(
        self, encoders: Mapping, kinds, widths, width, fusion, heads, text_pool=False, text_noise=0.0
    ):
        super().__init__()
        self.streams, self.kinds, self.text_pool = list(encoders), dict(kinds), text_pool
        self.text_noise = text_noise
        for m, encoder in encoders.items():
            self.add_module(m, encoder)
            if widths[m] != width:
                self.add_module(f"{m}_proj", nn.Linear(widths[m], width))
        self.fusion = fusion
        self.tasks = list(heads)
        for task, head in heads.items():
            self.add_module(f"head_{task}", head)

    def encode(self, m, batch):
        encoder = getattr(self, m)
        if self.kinds[m] == "image":
            return encoder(batch[m])
        if isinstance(encoder, CachedText):
            return encoder(batch[f"{m}_features"], batch[f"{m}_mask"])
        return encoder(batch[m], batch[f"{m}_mask"])

    def forward(self, batch):
        tokens, masks = {}, {}
        for m in self.streams:
            x, mask, _ = self.encode(m, batch)
            if self.text_pool and self.kinds[m] == "text":
                x, mask = masked_mean(x, mask)[:, None], mask.any(1, keepdim=True)
            if self.training and self.text_noise > 0 and self.kinds[m] == "text":
                rms = x.detach().square().mean(-1, keepdim=True).sqrt()
                x = x + self.text_noise * rms * torch.randn_like(x)
            if hasattr(self, f"{m}_proj"):
                x = getattr(self, f"{m}_proj")(x)
            masks[m] = mask & batch["present"][m][:, None]
            tokens[m] = torch.where(masks[m][..., None], x, 0.0)
        pooled = self.fusion(tokens, masks, batch["present"])
        return {t: getattr(self, f"head_{t}")(pooled) for t in self.tasks}


def masked_mean(x, mask):
    total = torch.where(mask[..., None], x, 0.0).sum(1)
    return total / mask.sum(1, keepdim=True).clamp(min=1)


# ---------------------------------------------------------------- from a spec


def build_twin(spec: Mapping) -> Twin:
    """The twin of a model spec (scripts/bench_experiment.py `twin_spec`): {streams: {stream: kind},
    encoders: {stream: {type, ...}}, width, depth, heads, mlp, dropout, head_hidden, head_dropout, text_pool,
    text_noise, fusion: {query, depth}, tasks: {task: {outputs, kind, weight}}}."""
    size = [spec[k] for k in ("width", "depth", "heads", "mlp", "dropout")]
    encoders, widths = {}, {}
    for m, e in spec["encoders"].items():
        encoders[m], widths[m] = encoder(e, size), e.get("width", spec["width"])
    width, fusion = spec["width"], spec["fusion"]
    cross = CrossAttentionFusion(
        spec["streams"], fusion["query"], width, fusion["depth"], spec["heads"], spec["mlp"], spec["dropout"]
    )
    heads = {
        t: Head(width, task["outputs"], spec["head_hidden"], spec["head_dropout"])
        for t, task in spec["tasks"].items()
    }
    return Twin(encoders, spec["streams"], widths, width, cross, heads, spec["text_pool"], spec["text_noise"])


def encoder(e: Mapping, size: list) -> nn.Module:
    if e["type"] == "patch":
        return PatchEncoder(tuple(e["patch"]), e["channels"], e["tokens"], *size)
    if e["type"] == "text":
        return TextEncoder(e["vocab"], e["max_len"], *size)
    if e["type"] == "cached":
        return CachedText()
    if e["type"] == "resnet":
        fields = ("embedding_size", "hidden_sizes", "depths", "stem_kernel", "stem_stride", "pool")
        return ResNet(e["channels"], *(e[f] for f in fields))
    if e["type"] == "hf_bert":
        from transformers import BertModel
        from transformers.utils import logging

        logging.set_verbosity_error()
        return HFEncoder(BertModel.from_pretrained(e["path"], add_pooling_layer=False), "text")
    raise ValueError(f"the PyTorch twin has no encoder of type {e['type']!r}")


# ---------------------------------------------------------------- weights, loss, optimizer


@torch.no_grad()
def load_flax(model: nn.Module, params: Mapping[str, np.ndarray], batch_stats: Mapping = ()) -> None:
    """Copies mmjax's flat params ({"a/b/kernel": array}, bench_common.flat_params) and BatchNorm statistics
    into the twin, strictly: a twin tensor without a flax source, or a flax param left unused, is an error.
    HFEncoder subtrees keep their own weights."""
    params, stats, used = dict(params), dict(batch_stats), set()
    hf = [name for name, module in model.named_modules() if isinstance(module, HFEncoder)]

    def take(key, source=params):
        if key not in source:
            raise KeyError(f"the twin's {key} has no mmjax parameter")
        used.add(key)
        return torch.from_numpy(np.ascontiguousarray(source[key]))

    for name, module in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in hf):
            continue
        key = name.replace(".", "/")
        if isinstance(module, nn.Linear):
            module.weight.copy_(take(f"{key}/kernel").reshape(module.in_features, -1).T)
            if module.bias is not None:
                module.bias.copy_(take(f"{key}/bias").reshape(-1))
        elif isinstance(module, nn.Conv2d):
            module.weight.copy_(take(f"{key}/kernel").permute(3, 2, 0, 1))
        elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
            module.weight.copy_(take(f"{key}/scale"))
            module.bias.copy_(take(f"{key}/bias"))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(take(f"{key}/mean", stats))
                module.running_var.copy_(take(f"{key}/var", stats))
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(take(f"{key}/embedding"))
        else:  # tensors held directly (Table, the fusion's stream embeddings): mmjax's param of that name
            for pname, p in module.named_parameters(recurse=False):
                p.copy_(take(f"{key}/{pname}".lstrip("/")))
    hf_keys = {k for k in params if any(k.startswith(h.replace(".", "/") + "/") for h in hf)}
    unused = sorted(set(params) - used - hf_keys)
    if unused:
        raise KeyError(f"mmjax parameters with no place in the twin: {unused[:10]}")


def twin_loss(outputs: Mapping, batch: Mapping, tasks: Mapping[str, Mapping], smoothing: float = 0.0):
    """mmjax's static multi-task loss (mmjax.step.task_loss): the sum of weight x the task's mean loss:
    softmax cross-entropy (classes), sigmoid cross-entropy over labelled entries (multilabel), MSE
    (regression)."""
    total = 0.0
    for t, task in tasks.items():
        logits, labels = outputs[t], batch[f"labels/{t}"]
        if task["kind"] == "multilabel":
            valid = labels >= 0
            loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
            loss = (loss * valid).sum() / valid.sum().clamp(min=1)
        elif task["kind"].startswith("regression"):
            loss = F.mse_loss(logits[..., 0], labels.float())
        else:
            loss = F.cross_entropy(logits, labels.long(), label_smoothing=smoothing)
        total = total + task["weight"] * loss
    return total


def optimizer(model: nn.Module, cfg: Mapping, lr_rules: str = ""):
    """AdamW as mmjax.optim: weight decay on matrices and embeddings only; learning-rate multipliers by the
    first `lr_rules` regex ("REGEX=MULT;...", mmjax.optim.parse_lr_rules) matching a parameter's path in
    full (0 freezes). Clipping is done in the step."""
    rules = []
    for item in filter(None, (part.strip() for part in lr_rules.split(";"))):
        pattern, _, multiplier = item.rpartition("=")
        rules.append((re.compile(pattern), float(multiplier)))
    groups = {}
    for name, p in model.named_parameters():
        path = name.replace(".", "/")
        mult = next((m for pattern, m in rules if pattern.fullmatch(path)), 1.0)
        if mult == 0:
            p.requires_grad_(False)
            continue
        decay = cfg["weight_decay"] if p.ndim >= 2 else 0.0
        group = groups.setdefault((mult, decay), {"params": [], "lr": cfg["learning_rate"] * mult})
        group["params"].append(p)
        group["weight_decay"] = decay
    return torch.optim.AdamW(list(groups.values()), lr=cfg["learning_rate"], betas=(cfg["b1"], cfg["b2"]))
