"""BERT-style text encoder: token + position + token-type embeddings -> LayerNorm -> transformer."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import INIT, PositionEmbedding
from mmjax.nn.transformer import Encoder


class TextEncoder(nn.Module):
    """Encodes token ids [B, L] with a padding mask [B, L]; pooled = the first ([CLS]) token.

    Returns ((tokens [B, L, width], mask [B, L]), aux) with aux keys `txt/tokens`, `txt/pooled`.
    """

    vocab_size: int
    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    type_vocab_size: int = 2
    dropout_rate: float = 0.0
    pre_ln: bool = True  # True: pre-LN blocks + final LayerNorm; False: BERT's post-LN blocks

    @nn.compact
    def __call__(
        self,
        text: jax.Array,
        text_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(text)
        x = nn.Embed(self.vocab_size, self.width, embedding_init=INIT, name="token_embedding")(text)
        x = PositionEmbedding(self.max_len, name="position_embedding")(x)
        types = nn.Embed(self.type_vocab_size, self.width, embedding_init=INIT, name="type_embedding")
        x = x + types(token_type_ids)
        x = nn.LayerNorm(name="embedding_ln")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = text_mask.astype(bool)
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.dropout_rate, self.pre_ln, name="encoder")(
            x, mask, deterministic=deterministic
        )
        return (x, mask), {"txt/tokens": x, "txt/pooled": x[:, 0]}
