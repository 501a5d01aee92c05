"""Task heads on pooled features."""

import jax
from flax import linen as nn


class ClassificationHead(nn.Module):
    """dropout -> [Dense(hidden_dim) -> GELU -> dropout] -> Dense(num_classes) logits."""

    num_classes: int
    hidden_dim: int | None = None  # None: a linear head
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        if self.hidden_dim is not None:
            x = nn.gelu(nn.Dense(self.hidden_dim, name="hidden")(x), approximate=False)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.Dense(self.num_classes, name="logits")(x)
