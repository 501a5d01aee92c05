"""Task heads: on pooled features (classification, embeddings) or on tokens (tagging, spans)."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.losses import MASK_VALUE
from mmjax.nn.transformer import gelu


class ClassificationHead(nn.Module):
    """dropout -> [Dense(hidden_dim) -> GELU -> dropout] -> Dense(num_classes) logits, on pooled [B, D].

    Serves every per-example output: softmax classes (`softmax_cross_entropy`), multi-label logits
    (`sigmoid_cross_entropy`) and regression values with num_classes = number of outputs (`mse`, `huber`).
    """

    num_classes: int  # classes, labels or regression outputs
    hidden_dim: int | None = None  # None: a linear head
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        if self.hidden_dim is not None:
            x = gelu(nn.Dense(self.hidden_dim, name="hidden")(x))
            x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.Dense(self.num_classes, name="logits")(x)


class TokenClassificationHead(nn.Module):
    """Tagging: tokens [B, L, D] -> dropout -> Dense(num_classes, "logits") -> logits [B, L, K].

    Pair with `losses.token_cross_entropy`.
    """

    num_classes: int  # tag classes K
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=deterministic)
        return nn.Dense(self.num_classes, name="logits")(tokens)


class SpanHead(nn.Module):
    """Span extraction: tokens [B, L, D] -> Dense(2, "span") -> (start_logits [B, L], end_logits [B, L]).

    With mask [B, L] given, False positions are set to `losses.MASK_VALUE`, the same value
    `losses.span_loss` uses, so the loss is unchanged and an argmax never picks padding; with mask=None the
    raw logits are returned and the masking is left to the loss.
    """

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        logits = nn.Dense(2, name="span")(tokens)
        if mask is not None:
            logits = jnp.where(mask.astype(bool)[..., None], logits, MASK_VALUE)
        return logits[..., 0], logits[..., 1]


class EmbeddingHead(nn.Module):
    """Contrastive alignment: pooled [B, D] -> Dense(dim, "proj") -> embedding [B, dim].

    Not normalised: `losses.info_nce` / `losses.siglip_loss` L2-normalise inside.
    """

    dim: int  # shared embedding width of the aligned modalities

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        return nn.Dense(self.dim, name="proj")(pooled)


class LogitScale(nn.Module):
    """Learnable contrastive temperature: () -> (scale, bias | None), scale = param "logit_scale" clipped.

    `scale` is the LOG inverse temperature (pass it as `logit_scale` to the losses), clipped to
    [0, max_value] in the forward pass (CLIP: inverse temperature <= 100). with_bias adds the SigLIP param
    "logit_bias" (init -10); SigLIP starts the scale at log(10): LogitScale(math.log(10), with_bias=True).
    Fields are init_value/max_value, not init/max: a field `init` would shadow nn.Module.init.
    """

    init_value: float = math.log(1 / 0.07)  # CLIP's initial log inverse temperature
    max_value: float = math.log(100.0)
    with_bias: bool = False  # True: also a learnable "logit_bias" (SigLIP)
    bias_init: float = -10.0

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        scale = self.param("logit_scale", nn.initializers.constant(self.init_value), (), jnp.float32)
        scale = jnp.clip(scale, 0.0, self.max_value)
        bias = None
        if self.with_bias:
            bias = self.param("logit_bias", nn.initializers.constant(self.bias_init), (), jnp.float32)
        return scale, bias
