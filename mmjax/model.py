"""MultimodalModel: text/image/audio encoders -> fusion -> one classification head per task."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.fusion import FUSIONS, CrossAttentionFusion, LateFusion
from mmjax.heads import ClassificationHead
from mmjax.nn.transformer import SIZES


class MultimodalModel(nn.Module):
    """Encodes each modality, hides absent ones (batch["present"]), fuses, and classifies every task.

    `__call__(batch, train=...)` returns ({task: logits [B, num_classes]}, aux) where aux holds the
    encoders' and fusion's named intermediates (`txt/tokens`, `img/pooled`, `fusion/pooled`, ...).
    """

    text: TextEncoder
    image: ViTEncoder
    audio: SpectrogramEncoder
    fusion: nn.Module  # one of mmjax.fusion.FUSIONS
    tasks: tuple[tuple[str, int], ...]  # (task name, number of classes)
    head_dropout: float = 0.0

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array | Mapping[str, jax.Array]], *, train: bool
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        det = not train
        present = {m: jnp.asarray(p, bool) for m, p in batch["present"].items()}
        text, txt_aux = self.text(batch["text"], batch["text_mask"], deterministic=det)
        image, img_aux = self.image(batch["image"], deterministic=det)
        audio, aud_aux = self.audio(batch["audio"], batch["audio_mask"], deterministic=det)
        encoded = {"text": (text, txt_aux["txt/mask"]), "image": (image, img_aux["img/mask"])}
        encoded["audio"] = (audio, aud_aux["aud/mask"])
        tokens, masks = {}, {}
        for m, (x, mask) in encoded.items():
            masks[m] = mask & present[m][:, None]
            tokens[m] = jnp.where(masks[m][..., None], x, 0.0)
        fused, fusion_aux = self.fusion(tokens, masks, present, deterministic=det)
        outputs = {
            task: ClassificationHead(n, dropout_rate=self.head_dropout, name=f"head_{task}")(
                fused["pooled"], deterministic=det
            )
            for task, n in self.tasks
        }
        return outputs, {**txt_aux, **img_aux, **aud_aux, **fusion_aux}


def _check_divisible(size: int, size_field: str, patch: int, patch_field: str) -> None:
    if size % patch:
        raise ValueError(f"{size_field}={size} is not divisible by {patch_field}={patch}")


def build_model(cfg: ml_collections.ConfigDict, tasks: Mapping[str, int]) -> MultimodalModel:
    """Builds the model from the experiment config (see the module fields read below)."""
    if cfg.size not in SIZES:
        raise ValueError(f"cfg.size={cfg.size!r} is not one of {sorted(SIZES)}")
    if cfg.fusion.name not in FUSIONS:
        raise ValueError(f"cfg.fusion.name={cfg.fusion.name!r} is not one of {sorted(FUSIONS)}")
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
    if cfg.fusion.name == "late":
        fusion = LateFusion(width=size["width"], mlp_dim=size["mlp_dim"], dropout_rate=cfg.dropout)
    else:
        fusion = CrossAttentionFusion(
            **common | {"depth": cfg.fusion.depth}, bidirectional=cfg.fusion.bidirectional
        )
    return MultimodalModel(
        text=TextEncoder(vocab_size=cfg.text.vocab_size, max_len=cfg.text.max_len, **common),
        image=ViTEncoder(patch_size=cfg.image.patch_size, **common),
        audio=SpectrogramEncoder(patch_time=cfg.audio.patch_time, patch_freq=cfg.audio.patch_freq, **common),
        fusion=fusion,
        tasks=tuple(tasks.items()),
        head_dropout=cfg.head_dropout,
    )


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
