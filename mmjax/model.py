"""MultimodalModel: text/image/audio encoders -> fusion -> one classification head per task; TextTaskModel:
a text encoder with token-level heads (tagging, span extraction)."""

import math
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from mmjax.data import text_cache
from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.resnet import ResNetEncoder
from mmjax.encoders.text import CachedTextEncoder, TextEncoder
from mmjax.encoders.wav2vec2 import Wav2Vec2Encoder
from mmjax.fusion import build_fusion
from mmjax.heads import ClassificationHead, EmbeddingHead, LogitScale, SpanHead, TokenClassificationHead
from mmjax.nn import lora
from mmjax.nn.attention import DTYPES, IMPLEMENTATIONS
from mmjax.nn.pooling import mean_token
from mmjax.nn.transformer import REMAT_POLICIES, SIZES, stack_layers
from mmjax.port.pretrained import load_pretrained


class MultimodalModel(nn.Module):
    """Encodes each input stream, hides absent ones (batch["present"]), fuses, and predicts every task.

    `encoders` holds one encoder per stream of the data set, in its order (`text`, `image`, `image_2`,
    `audio`, ...; a stream's kind is its name before `_`); only those streams have parameters. The batch
    holds each stream's array under its name (and `<stream>_mask` for text and audio).
    `__call__(batch, train=...)` returns ({task: outputs [B, n]}, aux) where aux holds the encoders' and
    fusion's named intermediates (`txt/tokens`, `img_2/pooled`, `fusion/pooled`, ...).
    Tokens of an encoder whose width is not `width` (e.g. a pretrained one) pass through a Dense first.
    In training, each stream of each example is hidden with probability `modality_dropout` (never all
    of an example's streams). A fusion that returns `per_modality` pooled vectors [B, M, width] and
    `weights` [B, M] (late_logits) gets one head per task and stream, outputs averaged with the weights.
    With `align` = (stream a, stream b), outputs["align"] holds both streams' pooled encodings
    projected to `align_dim` ("x", "y"), the learnable "scale" (and SigLIP's "bias") and "valid" (both
    present in the data) for a contrastive loss. `peft` (keyword arguments of mmjax.nn.lora.interceptor)
    adds LoRA and bottleneck adapters to the modules its regexes select. With `modality_heads`, every task
    also gets one head per stream on that encoder's pooled vector: outputs["modality_heads"] =
    {task: {stream: logits}} and outputs["present"] = {stream: [B]} (present in the example and not
    dropped), so each head's loss covers the examples that have its stream.
    """

    encoders: tuple[tuple[str, nn.Module], ...]  # (stream, encoder), in the data set's stream order
    fusion: nn.Module  # one of mmjax.fusion.FUSIONS
    tasks: tuple[tuple[str, int], ...]  # (task name, head outputs)
    width: int  # the fusion's token width
    head_dropout: float = 0.0
    head_hidden: int = 0  # > 0: every classification head has a GELU hidden layer this wide (0: linear)
    modality_dropout: float = 0.0
    align: tuple[str, ...] = ()  # () or two streams aligned contrastively
    align_dim: int = 64
    align_bias: bool = False  # SigLIP's learnable logit bias
    peft: tuple[tuple[str, object], ...] = ()  # mmjax.nn.lora.interceptor keyword arguments
    modality_heads: bool = False  # also one head per task and stream on the encoders' pooled vectors
    text_pool: str = ""  # "mean": each text stream reaches the fusion as one token, its tokens' masked mean
    text_noise: float = 0.0  # training only: Gaussian noise on text features, std = this x their RMS

    def __call__(
        self, batch: Mapping[str, jax.Array | Mapping[str, jax.Array]], *, train: bool
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        return with_peft(self, batch, train)

    @nn.compact
    def forward(self, batch, train: bool) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        det = not train
        in_data = {m: jnp.asarray(batch["present"][m], bool) for m, _ in self.encoders}
        present = in_data
        if train and self.modality_dropout > 0:
            present = drop_modalities(present, self.modality_dropout, self.make_rng("dropout"))
        tokens, masks, pooled, aux = {}, {}, {}, {}
        for m, encoder in self.encoders:
            x, enc_aux = encode(encoder.clone(name=m, parent=self), m, batch, det)
            prefix = aux_prefix(m)
            if self.text_pool and stream_kind(m) == "text":
                x, enc_aux[f"{prefix}mask"] = mean_token(x, enc_aux[f"{prefix}mask"])
            if train and self.text_noise > 0 and stream_kind(m) == "text":
                x = with_noise(x, self.text_noise, self.make_rng("dropout"))
            aux |= enc_aux
            if x.shape[-1] != self.width:
                x = nn.Dense(self.width, name=f"{m}_proj")(x)
            masks[m] = enc_aux[f"{prefix}mask"] & present[m][:, None]
            tokens[m] = jnp.where(masks[m][..., None], x, 0.0)
            pooled[m] = enc_aux[f"{prefix}pooled"]
        fused, fusion_aux = self.fusion(tokens, masks, present, deterministic=det)
        outputs = {}
        for task, n in self.tasks:
            head = partial(ClassificationHead, n, self.head_hidden or None, self.head_dropout)
            if "per_modality" in fused:  # late_logits: weighted mean of per-modality logits
                per_modality = [
                    head(name=f"head_{task}_{i}")(fused["per_modality"][:, i], deterministic=det)
                    for i in range(fused["per_modality"].shape[1])
                ]
                outputs[task] = jnp.einsum("bmc,bm->bc", jnp.stack(per_modality, 1), fused["weights"])
            else:
                outputs[task] = head(name=f"head_{task}")(fused["pooled"], deterministic=det)
        if self.modality_heads:
            outputs["modality_heads"] = {
                task: {
                    m: ClassificationHead(
                        n, self.head_hidden or None, self.head_dropout, name=f"head_{task}_{m}"
                    )(pooled[m], deterministic=det)
                    for m in pooled
                }
                for task, n in self.tasks
            }
            outputs["present"] = present
        if self.align:
            a, b = self.align
            scale, bias = LogitScale(with_bias=self.align_bias, name="align_scale")()
            outputs["align"] = {
                "x": EmbeddingHead(self.align_dim, name=f"align_{a}")(pooled[a]),
                "y": EmbeddingHead(self.align_dim, name=f"align_{b}")(pooled[b]),
                "scale": scale,
                "valid": in_data[a] & in_data[b],
            } | ({"bias": bias} if self.align_bias else {})
        return outputs, {**aux, **fusion_aux}


def with_noise(x: jax.Array, scale: float, rng: jax.Array) -> jax.Array:
    """x plus Gaussian noise whose std is `scale` times each vector's RMS (over the last axis)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True))
    return x + scale * jax.lax.stop_gradient(rms) * jax.random.normal(rng, x.shape, x.dtype)


def stream_kind(stream: str) -> str:
    """`image_2` -> `image`: a stream's kind is its name up to the first `_`."""
    return stream.split("_")[0]


def aux_prefix(stream: str) -> str:
    """The aux-key prefix of a stream's encoder: `txt/`, `img/`, `aud/`; `img_2/` for a second image."""
    kind, _, number = stream.partition("_")
    return AUX_PREFIXES[kind].rstrip("/") + (f"_{number}/" if number else "/")


def encode(encoder: nn.Module, stream: str, batch, deterministic: bool):
    """(tokens, aux) of one stream's encoder on its batch arrays (text and audio also take their masks)."""
    if stream_kind(stream) == "image":
        return encoder(batch[stream], deterministic=deterministic)
    if isinstance(encoder, CachedTextEncoder):
        return encoder(batch[f"{stream}{text_cache.FEATURES}"], batch[f"{stream}_mask"])
    return encoder(batch[stream], batch[f"{stream}_mask"], deterministic=deterministic)


SPAN = "span"  # TextTaskModel's span-extraction task


class TextTaskModel(nn.Module):
    """A text encoder with token-level heads, for text-only experiments (UD tagging, XQuAD span QA).

    `__call__(batch, train=...)` reads `text`, `text_mask` and, when given, `text_types` (segment ids) and
    returns ({task: logits}, aux). A tagging task gets logits [B, L, K] from a TokenClassificationHead;
    the task `span` gets start and end logits over positions stacked as [B, 2, L] (SpanHead), with the
    positions outside batch["span_mask"] [B, L] set to losses.MASK_VALUE. Both train with
    losses.token_cross_entropy against labels [B, L] (tags, -1 ignored) or [B, 2] (start, end positions).
    """

    text: TextEncoder
    tasks: tuple[tuple[str, int], ...]  # (task name, number of classes; for `span` the sequence length)
    head_dropout: float = 0.0
    peft: tuple[tuple[str, object], ...] = ()  # mmjax.nn.lora.interceptor keyword arguments

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[dict, dict]:
        return with_peft(self, batch, train)

    @nn.compact
    def forward(self, batch, train: bool) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        det = not train
        tokens, aux = self.text(batch["text"], batch["text_mask"], batch.get("text_types"), deterministic=det)
        outputs = {}
        for task, n in self.tasks:
            if task == SPAN:
                x = nn.Dropout(self.head_dropout)(tokens, deterministic=det)
                start, end = SpanHead(name="head_span")(x, batch["span_mask"])
                outputs[task] = jnp.stack([start, end], axis=1)
            else:
                head = TokenClassificationHead(n, dropout_rate=self.head_dropout, name=f"head_{task}")
                outputs[task] = head(tokens, deterministic=det)
        return outputs, aux


def with_peft(model: MultimodalModel | TextTaskModel, batch, train: bool):
    """model.forward(batch, train), inside the LoRA / adapter interceptor when the model has `peft`."""
    if not model.peft:
        return model.forward(batch, train)
    with nn.intercept_methods(lora.interceptor(**dict(model.peft), deterministic=not train)):
        return model.forward(batch, train)


def drop_modalities(present: dict[str, jax.Array], rate: float, rng: jax.Array) -> dict[str, jax.Array]:
    """Hides each present modality of each example with probability `rate`; an example that would lose
    all its modalities keeps them all."""
    names = sorted(present)
    kept = jax.random.bernoulli(rng, 1.0 - rate, (len(names), *present[names[0]].shape))
    dropped = {m: present[m] & kept[i] for i, m in enumerate(names)}
    any_left = jnp.any(jnp.stack([dropped[m] for m in names]), axis=0)
    return {m: jnp.where(any_left, dropped[m], present[m]) for m in names}


AUX_PREFIXES = {"text": "txt/", "image": "img/", "audio": "aud/"}


def _check_divisible(size: int, size_field: str, patch: int, patch_field: str) -> None:
    if size % patch:
        raise ValueError(f"{size_field}={size} is not divisible by {patch_field}={patch}")


THREE_STREAMS = {"text": "text", "image": "image", "audio": "audio"}  # one stream of each kind


def build_model(
    cfg: ml_collections.ConfigDict,
    tasks: Mapping[str, int],
    streams: Mapping[str, str] = THREE_STREAMS,
    text_vocab_size: int = 0,
) -> MultimodalModel | TextTaskModel:
    """Builds the model from the experiment config (see the module fields read below) for a data set's
    `streams` ({stream: kind}, in order) and tasks ({task: head outputs}): a MultimodalModel with one encoder
    per stream (each from `model.<kind>`), or with `model.kind="text"` a TextTaskModel on the text encoder
    alone. `text_vocab_size` > 0 (a word vocabulary built from the data) replaces model.text.vocab_size.

    An encoder whose config has `init_from` (`hf:DIR` or a `python -m mmjax.port` folder; `tower` for
    CLIP) takes that checkpoint's architecture; its weights come from pretrained_params at init.
    """
    if cfg.get("kind", "multimodal") not in MODEL_KINDS:
        raise ValueError(f"model.kind={cfg.kind!r} is not one of {MODEL_KINDS}")
    if cfg.get("kind") == "text":
        return build_text_model(cfg, tasks)
    if cfg.size not in SIZES:
        raise ValueError(f"model.size={cfg.size!r} is not one of {sorted(SIZES)}")
    if not streams:
        raise ValueError("the data set has no input streams")
    kinds = set(streams.values())
    size = SIZES[cfg.size] | {k: cfg[k] for k in SIZES[cfg.size] if cfg.get(k)}  # e.g. model.width=256
    common = dict(
        width=size["width"],
        depth=size["depth"],
        num_heads=size["num_heads"],
        mlp_dim=size["mlp_dim"],
        dropout_rate=cfg.dropout,
        pre_ln=cfg.pre_ln,
    )
    levers = lever_fields(cfg)
    common |= levers
    fusion = build_fusion(
        cfg.fusion,
        width=size["width"],
        num_heads=size["num_heads"],
        mlp_dim=size["mlp_dim"],
        dropout_rate=cfg.dropout,
        pre_ln=cfg.pre_ln,
        **levers,
    )
    by_kind = {}  # kind -> an encoder (every stream of the kind gets its own copy, with its own params)
    if "text" in kinds and cfg.text.get("cache", False):
        by_kind["text"] = CachedTextEncoder()
    elif "text" in kinds:
        vocab_size = text_vocab_size or cfg.text.vocab_size
        by_kind["text"] = TextEncoder(vocab_size=vocab_size, max_len=cfg.text.max_len, **common)
    if "image" in kinds:
        by_kind["image"] = image_encoder(cfg.image, common)
    if "audio" in kinds and cfg.audio.get("frontend", "log_mel") == "waveform":
        by_kind["audio"] = waveform_encoder(common)
    elif "audio" in kinds:
        _check_divisible(
            cfg.audio.frames, "model.audio.frames", cfg.audio.patch_time, "model.audio.patch_time"
        )
        _check_divisible(cfg.audio.mels, "model.audio.mels", cfg.audio.patch_freq, "model.audio.patch_freq")
        by_kind["audio"] = SpectrogramEncoder(
            patch_time=cfg.audio.patch_time,
            patch_freq=cfg.audio.patch_freq,
            max_frames=cfg.audio.frames,
            **common,
        )
    for kind, (spec, tower) in _pretrained_specs(cfg).items():
        if kind not in kinds:
            continue
        pretrained, _ = load_pretrained(spec, tower)
        if kind == "audio":
            _check_frontend(pretrained, cfg.audio.get("frontend", "log_mel"))
        # batches hold images [B, H, W, C] and audio features [B, T, F]; ports take HF's channels-first ones
        updates = dict(channels_first=False) if hasattr(pretrained, "channels_first") else {}
        if not isinstance(pretrained, ResNetEncoder):  # transformers: the run's dropout and speed levers
            updates |= dict(dropout_rate=cfg.dropout, **levers)
        by_kind[kind] = pretrained.clone(**updates)
    encoders = tuple((m, by_kind[kind].clone(aux_prefix=aux_prefix(m))) for m, kind in streams.items())
    return MultimodalModel(
        encoders=encoders,
        fusion=fusion,
        tasks=tuple(tasks.items()),
        width=size["width"],
        head_dropout=cfg.head_dropout,
        head_hidden=cfg.get("head_hidden", 0),
        modality_dropout=cfg.get("modality_dropout", 0.0),
        **align_fields(cfg.get("align", {})),
        peft=peft_fields(cfg.get("peft", {})),
        modality_heads=bool(cfg.get("modality_heads", False)),
        text_pool=text_pool(cfg),
        text_noise=text_noise(cfg),
    )


TEXT_POOLS = ("", "mean")


def text_pool(cfg: ml_collections.ConfigDict) -> str:
    """model.text.pool, checked: "" (every text token reaches the fusion) or "mean" (one pooled token)."""
    pool = cfg.get("text", {}).get("pool", "")
    if pool not in TEXT_POOLS:
        raise ValueError(f"model.text.pool={pool!r} is not one of {TEXT_POOLS}")
    return pool


def text_noise(cfg: ml_collections.ConfigDict) -> float:
    """model.text.noise, checked: >= 0, the std of the training noise on text features per unit of RMS."""
    noise = cfg.get("text", {}).get("noise", 0.0)
    if not noise >= 0:
        raise ValueError(f"model.text.noise={noise!r} must be >= 0")
    return float(noise)


IMAGE_ENCODERS = ("vit", "resnet")
MODEL_KINDS = ("multimodal", "text")


def build_text_model(cfg: ml_collections.ConfigDict, tasks: Mapping[str, int]) -> TextTaskModel:
    """A TextTaskModel on the text encoder of `model.text.init_from` (required: text tasks fine-tune
    a port)."""
    spec = cfg.text.get("init_from", "")
    if not spec:
        raise ValueError("model.kind='text' needs model.text.init_from (hf:DIR or a ported folder)")
    encoder, _ = load_pretrained(spec, cfg.text.get("tower", "") or None)
    encoder = encoder.clone(aux_prefix=AUX_PREFIXES["text"], dropout_rate=cfg.dropout, **lever_fields(cfg))
    return TextTaskModel(
        text=encoder,
        tasks=tuple(tasks.items()),
        head_dropout=cfg.head_dropout,
        peft=peft_fields(cfg.get("peft", {})),
    )


def image_encoder(cfg: ml_collections.ConfigDict, common: dict) -> ViTEncoder | ResNetEncoder:
    """The scratch image encoder of `model.image` (encoder vit | resnet)."""
    kind = cfg.get("encoder", "vit")
    if kind not in IMAGE_ENCODERS:
        raise ValueError(f"model.image.encoder={kind!r} is not one of {IMAGE_ENCODERS}")
    if kind == "resnet":
        return resnet_encoder(cfg)
    _check_divisible(cfg.size, "model.image.size", cfg.patch_size, "model.image.patch_size")
    return ViTEncoder(patch_size=cfg.patch_size, **common)


def waveform_encoder(common: dict) -> Wav2Vec2Encoder:
    """The scratch encoder of raw waveforms (model.audio.frontend="waveform"): wav2vec2's conv stack (7
    layers, 20 ms frames at 16 kHz) with the model size's width, then its transformer."""
    fields = {k: v for k, v in common.items() if k != "pre_ln"}
    return Wav2Vec2Encoder(
        conv_dim=(common["width"],) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=math.gcd(16, common["width"]),
        stable_layer_norm=common["pre_ln"],
        **fields,
    )


def _check_frontend(encoder: nn.Module, frontend: str) -> None:
    """A pretrained audio encoder must get the inputs it was trained on: waveforms or features."""
    wants = "waveform" if isinstance(encoder, Wav2Vec2Encoder) else "log_mel"
    if frontend != wants:
        raise ValueError(
            f"model.audio.init_from is a {type(encoder).__name__}, which takes "
            f"{'raw waveforms' if wants == 'waveform' else 'features'}: set model.audio.frontend={wants!r} "
            f"(it is {frontend!r})"
        )


def resnet_encoder(cfg: ml_collections.ConfigDict) -> ResNetEncoder:
    """A ResNetEncoder from `model.image.resnet` (embedding_size, hidden_sizes, depths, layer_type and, when
    set, stem_kernel, stem_stride, stem_pool)."""
    r = cfg.resnet
    stem = {k: r[k] for k in ("stem_kernel", "stem_stride", "stem_pool") if k in r}
    return ResNetEncoder(
        embedding_size=r.embedding_size,
        hidden_sizes=tuple(r.hidden_sizes),
        depths=tuple(r.depths),
        layer_type=r.layer_type,
        aux_prefix=AUX_PREFIXES["image"],
        **stem,
    )


def lever_fields(cfg: ml_collections.ConfigDict) -> dict:
    """The speed levers of encoders and transformer fusions (mmjax.nn.transformer) from `model.scan`,
    `model.remat`, `model.dtype` and `model.attention`; missing fields keep the plain model."""
    levers = dict(
        scan=bool(cfg.get("scan", False)),
        remat=cfg.get("remat", ""),
        dtype=cfg.get("dtype", "float32"),
        attention=cfg.get("attention", "xla"),
    )
    allowed = dict(remat=tuple(REMAT_POLICIES), dtype=DTYPES, attention=IMPLEMENTATIONS)
    for field, values in allowed.items():
        if levers[field] not in values:
            raise ValueError(f"model.{field}={levers[field]!r} is not one of {values}")
    return levers


ALIGN_LOSSES = ("info_nce", "siglip")


def align_fields(cfg: Mapping) -> dict:
    """MultimodalModel's align fields from `model.align` (modalities "a,b" or "" for none, loss, dim)."""
    modalities = tuple(m.strip() for m in cfg.get("modalities", "").split(",") if m.strip())
    if not modalities:
        return {}
    if len(modalities) != 2 or len(set(modalities)) != 2 or not set(modalities) <= set(AUX_PREFIXES):
        raise ValueError(
            f"model.align.modalities={cfg['modalities']!r} must name two of {sorted(AUX_PREFIXES)}"
        )
    if cfg["loss"] not in ALIGN_LOSSES:
        raise ValueError(f"model.align.loss={cfg['loss']!r} is not one of {ALIGN_LOSSES}")
    return dict(align=modalities, align_dim=cfg["dim"], align_bias=cfg["loss"] == "siglip")


def peft_fields(cfg: Mapping) -> tuple[tuple[str, object], ...]:
    """mmjax.nn.lora.interceptor keyword arguments from `model.peft`; () without LoRA and adapters."""
    if not cfg or not (cfg.get("lora") or cfg.get("adapters")):
        return ()
    return (
        ("lora_targets", cfg["lora"]),
        ("rank", cfg["rank"]),
        ("alpha", cfg["alpha"]),
        ("dropout_rate", cfg["dropout"]),
        ("adapter_targets", cfg["adapters"]),
        ("adapter_dim", cfg["adapter_dim"]),
    )


def _pretrained_specs(cfg: ml_collections.ConfigDict) -> dict[str, tuple[str, str | None]]:
    """{kind: (init_from, tower)} of the encoder kinds that start from a checkpoint."""
    specs = {
        m: (cfg[m].get("init_from", ""), cfg[m].get("tower", "") or None) for m in AUX_PREFIXES if m in cfg
    }
    cached = {"text"} if cfg.get("text", {}).get("cache", False) else set()  # its tower runs in the data path
    return {m: spec for m, spec in specs.items() if spec[0] and m not in cached}


def pretrained_params(cfg: ml_collections.ConfigDict, streams: Mapping[str, str] = THREE_STREAMS) -> dict:
    """{stream: host (numpy) params} of every stream whose kind's encoder has `init_from` (see build_model);
    with `model.scan`, the ported `encoder/layer_{i}` params are stacked into `encoder/layers`."""
    by_kind = {}
    for kind, (spec, tower) in _pretrained_specs(cfg).items():
        if kind not in streams.values():
            continue
        module, tree = load_pretrained(spec, tower)
        tree = jax.device_get(tree)
        if cfg.get("scan", False) and "encoder" in tree:  # transformer encoders (not ResNet's variables)
            tree = tree | {"encoder": stack_layers(tree["encoder"], module.depth)}
        by_kind[kind] = tree
    return {m: by_kind[kind] for m, kind in streams.items() if kind in by_kind}


def dummy_batch(
    cfg: ml_collections.ConfigDict,
    tasks: Mapping[str, int],
    batch_size: int = 1,
    streams: Mapping[str, str] = THREE_STREAMS,
) -> dict:
    """An all-zeros batch with the configured shapes (every stream present), for init / eval_shape."""
    b = batch_size
    if cfg.get("kind") == "text":
        length = cfg.text.max_len
        batch = {key: jnp.ones((b, length), bool) for key in ("text_mask", "span_mask")}
        batch |= {key: jnp.zeros((b, length), jnp.int32) for key in ("text", "text_types")}
        return batch | {f"labels/{t}": jnp.zeros((b, 2 if t == SPAN else length), jnp.int32) for t in tasks}
    batch = {"present": {m: jnp.ones((b,), bool) for m in streams}}
    for m, kind in streams.items():
        if kind == "text":
            batch[m] = jnp.zeros((b, cfg.text.max_len), jnp.int32)
            batch[f"{m}_mask"] = jnp.ones((b, cfg.text.max_len), bool)
            if cfg.text.get("cache", False):
                width = text_cache.config_cache(cfg.text).width
                batch[f"{m}{text_cache.FEATURES}"] = jnp.zeros((b, cfg.text.max_len, width), jnp.float32)
        elif kind == "image":
            batch[m] = jnp.zeros((b, cfg.image.size, cfg.image.size, cfg.image.channels), jnp.float32)
        elif cfg.audio.get("frontend", "log_mel") == "waveform":  # any length fixes the params: 10 ms frames
            batch[m] = jnp.zeros((b, cfg.audio.frames * 160), jnp.float32)
            batch[f"{m}_mask"] = jnp.ones((b, cfg.audio.frames * 160), bool)
        else:
            batch[m] = jnp.zeros((b, cfg.audio.frames, cfg.audio.mels), jnp.float32)
            batch[f"{m}_mask"] = jnp.ones((b, cfg.audio.frames), bool)
    return batch | {f"labels/{task}": jnp.zeros((b,), jnp.int32) for task in tasks}
