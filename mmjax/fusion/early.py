"""Early fusion: one joint Transformer over the concatenated tokens of every stream."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import project, stream_names
from mmjax.nn.embeddings import ClsToken
from mmjax.nn.transformer import Encoder


class EarlyFusion(nn.Module):
    """Per-stream Dense to `width` + learned stream embedding, concatenated (streams in the order given)
    behind a learned fusion [CLS] token, then an Encoder of `depth` blocks with keys masked by padding and
    presence. Works with one stream or more.

    pooled = the fusion [CLS] output: a learned token favours no stream (the text [CLS] would) and still
    exists when text is absent. out["tokens"] holds the stream tokens only (without the [CLS]), so
    N = sum of the input lengths, in the same layout as the other fusions (streams in the order given).
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    pre_ln: bool = True
    scan: bool = False  # nn.scan over the encoder layers (params under encoder/layers)
    remat: str = ""  # speed levers of the blocks (mmjax.nn.transformer): "" | full | dots | dots_saveable
    dtype: str = "float32"  # compute dtype of the blocks: float32 | bfloat16 (params stay float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        embedded, token_masks = [], []
        for m in stream_names(self, tokens, masks, present):
            x, valid = project(self, m, tokens, masks, present)
            embedded.append(x)
            token_masks.append(valid)
        x = ClsToken(name="cls")(jnp.concatenate(embedded, axis=1))
        token_mask = jnp.concatenate(token_masks, axis=1)
        mask = jnp.concatenate([jnp.ones_like(token_mask[:, :1]), token_mask], axis=1)
        encoder = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.dropout_rate,
            self.pre_ln,
            scan=self.scan,
            remat=self.remat,
            dtype=self.dtype,
            attention=self.attention,
            name="encoder",
        )
        x, _ = encoder(x, mask, deterministic=deterministic)
        out = {
            "tokens": jnp.where(token_mask[..., None], x[:, 1:], 0.0),
            "mask": token_mask,
            "pooled": x[:, 0],
        }
        return out, {f"fusion/{k}": v for k, v in out.items()}
