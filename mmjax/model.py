"""MultimodalModel: text/image/audio encoders -> fusion -> one classification head per task."""

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn
from flax import traverse_util

from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.fusion import build_fusion
from mmjax.heads import ClassificationHead
from mmjax.nn.transformer import SIZES
from mmjax.port.pretrained import load_pretrained


class MultimodalModel(nn.Module):
    """Encodes each modality, hides absent ones (batch["present"]), fuses, and classifies every task.

    `__call__(batch, train=...)` returns ({task: logits [B, num_classes]}, aux) where aux holds the
    encoders' and fusion's named intermediates (`txt/tokens`, `img/pooled`, `fusion/pooled`, ...).
    Tokens of an encoder whose width is not `width` (e.g. a pretrained one) pass through a Dense first.
    In training, each modality of each example is hidden with probability `modality_dropout` (never all
    of an example's modalities). A fusion that returns `per_modality` pooled vectors [B, M, width] and
    `weights` [B, M] (late_logits) gets one head per task and modality, logits averaged with the weights.
    """

    text: TextEncoder
    image: ViTEncoder
    audio: SpectrogramEncoder
    fusion: nn.Module  # one of mmjax.fusion.FUSIONS
    tasks: tuple[tuple[str, int], ...]  # (task name, number of classes)
    width: int  # the fusion's token width
    head_dropout: float = 0.0
    modality_dropout: float = 0.0

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array | Mapping[str, jax.Array]], *, train: bool
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        det = not train
        present = {m: jnp.asarray(p, bool) for m, p in batch["present"].items()}
        if train and self.modality_dropout > 0:
            present = drop_modalities(present, self.modality_dropout, self.make_rng("dropout"))
        text, txt_aux = self.text(batch["text"], batch["text_mask"], deterministic=det)
        image, img_aux = self.image(batch["image"], deterministic=det)
        audio, aud_aux = self.audio(batch["audio"], batch["audio_mask"], deterministic=det)
        encoded = {"text": (text, txt_aux["txt/mask"]), "image": (image, img_aux["img/mask"])}
        encoded["audio"] = (audio, aud_aux["aud/mask"])
        tokens, masks = {}, {}
        for m, (x, mask) in encoded.items():
            if x.shape[-1] != self.width:
                x = nn.Dense(self.width, name=f"{m}_proj")(x)
            masks[m] = mask & present[m][:, None]
            tokens[m] = jnp.where(masks[m][..., None], x, 0.0)
        fused, fusion_aux = self.fusion(tokens, masks, present, deterministic=det)
        outputs = {}
        for task, n in self.tasks:
            head = partial(ClassificationHead, n, dropout_rate=self.head_dropout)
            if "per_modality" in fused:  # late_logits: weighted mean of per-modality logits
                per_modality = [
                    head(name=f"head_{task}_{i}")(fused["per_modality"][:, i], deterministic=det)
                    for i in range(fused["per_modality"].shape[1])
                ]
                outputs[task] = jnp.einsum("bmc,bm->bc", jnp.stack(per_modality, 1), fused["weights"])
            else:
                outputs[task] = head(name=f"head_{task}")(fused["pooled"], deterministic=det)
        return outputs, {**txt_aux, **img_aux, **aud_aux, **fusion_aux}


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


def build_model(cfg: ml_collections.ConfigDict, tasks: Mapping[str, int]) -> MultimodalModel:
    """Builds the model from the experiment config (see the module fields read below).

    An encoder whose config has `init_from` (`hf:DIR` or a `python -m mmjax.port` folder; `tower` for
    CLIP) takes that checkpoint's architecture; its weights come from pretrained_params at init.
    """
    if cfg.size not in SIZES:
        raise ValueError(f"cfg.size={cfg.size!r} is not one of {sorted(SIZES)}")
    _check_divisible(cfg.image.size, "cfg.image.size", cfg.image.patch_size, "cfg.image.patch_size")
    _check_divisible(cfg.audio.frames, "cfg.audio.frames", cfg.audio.patch_time, "cfg.audio.patch_time")
    _check_divisible(cfg.audio.mels, "cfg.audio.mels", cfg.audio.patch_freq, "cfg.audio.patch_freq")
    size = SIZES[cfg.size]
    common = dict(
        width=size["width"],
        depth=size["depth"],
        num_heads=size["num_heads"],
        mlp_dim=size["mlp_dim"],
        dropout_rate=cfg.dropout,
        pre_ln=cfg.pre_ln,
    )
    fusion = build_fusion(
        cfg.fusion,
        width=size["width"],
        num_heads=size["num_heads"],
        mlp_dim=size["mlp_dim"],
        dropout_rate=cfg.dropout,
        pre_ln=cfg.pre_ln,
    )
    encoders = dict(
        text=TextEncoder(vocab_size=cfg.text.vocab_size, max_len=cfg.text.max_len, **common),
        image=ViTEncoder(patch_size=cfg.image.patch_size, **common),
        audio=SpectrogramEncoder(patch_time=cfg.audio.patch_time, patch_freq=cfg.audio.patch_freq, **common),
    )
    for m, (spec, tower) in _pretrained_specs(cfg).items():
        pretrained, _ = load_pretrained(spec, tower)
        updates = dict(channels_first=False) if m == "image" else {}  # batches hold images [B, H, W, C]
        encoders[m] = pretrained.clone(aux_prefix=AUX_PREFIXES[m], dropout_rate=cfg.dropout, **updates)
    return MultimodalModel(
        **encoders,
        fusion=fusion,
        tasks=tuple(tasks.items()),
        width=size["width"],
        head_dropout=cfg.head_dropout,
        modality_dropout=cfg.get("modality_dropout", 0.0),
    )


def _pretrained_specs(cfg: ml_collections.ConfigDict) -> dict[str, tuple[str, str | None]]:
    """{modality: (init_from, tower)} of the encoders that start from a checkpoint."""
    specs = {m: (cfg[m].get("init_from", ""), cfg[m].get("tower", "") or None) for m in AUX_PREFIXES}
    return {m: spec for m, spec in specs.items() if spec[0]}


def pretrained_params(cfg: ml_collections.ConfigDict) -> dict[str, dict]:
    """{modality: host (numpy) params} of every encoder with `init_from` (see build_model)."""
    specs = _pretrained_specs(cfg)
    return {m: jax.device_get(load_pretrained(spec, tower)[1]) for m, (spec, tower) in specs.items()}


def with_pretrained(params: dict, pretrained: Mapping[str, dict]) -> dict:
    """`params` with each pretrained modality's subtree swapped in; structures and shapes must agree."""
    params = dict(params)
    for m, tree in pretrained.items():
        ours, theirs = _shapes(params[m]), _shapes(tree)
        if ours != theirs:
            diff = sorted(set(ours.items()) ^ set(theirs.items()))
            raise ValueError(
                f"pretrained {m} params do not fit the {m} encoder; differing (path, shape): {diff}"
            )
        params[m] = tree
    return params


def _shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    return {"/".join(path): tuple(x.shape) for path, x in traverse_util.flatten_dict(tree).items()}


def dummy_batch(cfg: ml_collections.ConfigDict, tasks: Mapping[str, int], batch_size: int = 1) -> dict:
    """An all-zeros batch with the configured shapes (every modality present), for init / eval_shape."""
    b = batch_size
    batch = {
        "text": jnp.zeros((b, cfg.text.max_len), jnp.int32),
        "text_mask": jnp.ones((b, cfg.text.max_len), bool),
        "image": jnp.zeros((b, cfg.image.size, cfg.image.size, cfg.image.channels), jnp.float32),
        "audio": jnp.zeros((b, cfg.audio.frames, cfg.audio.mels), jnp.float32),
        "audio_mask": jnp.ones((b, cfg.audio.frames), bool),
        "present": {m: jnp.ones((b,), bool) for m in ("text", "image", "audio")},
    }
    return batch | {f"labels/{task}": jnp.zeros((b,), jnp.int32) for task in tasks}
