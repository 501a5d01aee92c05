"""Text encoder: token + position (+ token-type) embeddings (-> LayerNorm) -> transformer.

With pre_ln=False, activation and layer_norm_eps from a Hugging Face config (and position_offset for
RoBERTa, type_vocab_size=0 for DistilBERT, embedding_dim for ELECTRA, relative_buckets for MPNet) it
computes exactly BERT, MiniLM, RoBERTa, DistilBERT, ELECTRA or MPNet; with pre_ln=True, type_vocab_size=0,
embedding_ln=False, causal=True and EOS pooling it is CLIP's text tower. mmjax.port fills it from their
checkpoints.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.embeddings import INIT, PositionEmbedding, RelativePositionBias
from mmjax.nn.pooling import masked_mean
from mmjax.nn.transformer import encoder_stack


def roberta_positions(input_ids: jax.Array, pad_token_id: int, offset: int) -> jax.Array:
    """RoBERTa's position ids: non-pad tokens count up from offset + 1, pad tokens sit at `offset`."""
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + offset


def pool_index(input_ids: jax.Array, pool: str, eos_token_id: int | None = None) -> jax.Array:
    """Position [B] of the pooled token: 0, the last position (SigLIP: whatever the padding), the first
    `eos_token_id` (0 if absent), or the highest id."""
    if pool == "first":
        return jnp.zeros(input_ids.shape[:1], jnp.int32)
    if pool == "last":
        return jnp.full(input_ids.shape[:1], input_ids.shape[1] - 1, jnp.int32)
    if pool == "eos":
        if eos_token_id is None:
            raise ValueError("pool='eos' needs an eos_token_id")
        return jnp.argmax(input_ids == eos_token_id, axis=1)
    if pool == "max_id":
        return jnp.argmax(input_ids, axis=1)  # the first of equal maxima, as torch.argmax
    raise ValueError(f"pool={pool!r} is not one of 'first', 'last', 'eos', 'max_id'")


class TextEncoder(nn.Module):
    """Encodes token ids [B, L] with a padding mask [B, L] into tokens [B, L, width].

    Returns (tokens, aux); aux keys (after `aux_prefix`): `tokens`, `mask` (bool attention_mask), `pooled`
    (the token picked by `pool`, through Dense + tanh when `pooler`), `hidden_states` (embedding output,
    then every layer's output) and, with `projection_dim`, `embeds` (pooled through a bias-free Dense).
    """

    vocab_size: int
    max_len: int  # number of position embeddings (HF max_position_embeddings)
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    type_vocab_size: int = 2  # 0: no token-type embedding (CLIP)
    dropout_rate: float = 0.0
    pre_ln: bool = True  # True: pre-LN blocks + final LayerNorm; False: BERT's post-LN blocks
    activation: str = "gelu"  # a key of mmjax.nn.transformer.ACTIVATIONS (HF hidden_act names)
    layer_norm_eps: float = 1e-6
    position_offset: int | None = None  # None: positions 0..L-1 (BERT); int: roberta_positions (RoBERTa: 1)
    pad_token_id: int = 0  # only read with position_offset
    embedding_ln: bool = True  # LayerNorm on the embeddings (BERT); CLIP has none
    causal: bool = False  # tokens attend only to earlier ones (CLIP; BERT's is_decoder)
    pool: str = (
        "first"  # "first" ([CLS]), "last" (SigLIP), "eos" (first eos_token_id: CLIP), "max_id" (old CLIP)
    )
    eos_token_id: int | None = None  # only read with pool="eos"
    pooler: bool = False  # HF's pooler: pooled = tanh(Dense(pooled))
    projection_dim: int | None = None  # CLIP's text_projection: embeds = Dense(pooled), no bias
    projection_bias: bool = False  # SigLIP's head: the projection has a bias
    embedding_dim: int | None = None  # ELECTRA: embeddings of this size, then a Dense to `width`
    relative_buckets: int = 0  # MPNet (32): every layer adds a learned per-head bias by relative position
    scan: bool = False  # speed levers of mmjax.nn.transformer.Encoder: nn.scan over layers (params `layers`)
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES)
    dtype: str = "float32"  # compute dtype of the transformer blocks: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (mmjax.nn.attention.MultiHeadAttention.implementation)
    aux_prefix: str = "txt/"

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[jax.Array, dict]:
        if token_type_ids is not None and not self.type_vocab_size:
            raise ValueError("token_type_ids given but type_vocab_size=0 (no token-type embedding)")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        positions = None
        if self.position_offset is not None:
            last = input_ids.shape[1] + self.position_offset
            if last >= self.max_len:
                raise ValueError(
                    f"sequence length {input_ids.shape[1]} needs position {last} but max_len={self.max_len}"
                )
            positions = roberta_positions(input_ids, self.pad_token_id, self.position_offset)
        dim = self.embedding_dim or self.width
        x = nn.Embed(self.vocab_size, dim, embedding_init=INIT, name="token_embedding")(input_ids)
        x = PositionEmbedding(self.max_len, name="position_embedding")(x, positions)
        if self.type_vocab_size:
            types = nn.Embed(self.type_vocab_size, dim, embedding_init=INIT, name="type_embedding")
            x = x + types(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.embedding_ln:
            x = nn.LayerNorm(self.layer_norm_eps, name="embedding_ln")(x)
        if self.embedding_dim is not None:
            x = nn.Dense(self.width, name="embedding_proj")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        encoder = encoder_stack(self, pre_ln=self.pre_ln, causal=self.causal)
        mask = attention_mask.astype(bool)
        bias = None
        if self.relative_buckets:
            relative = RelativePositionBias(
                self.relative_buckets, self.num_heads, name="relative_attention_bias"
            )
            bias = relative(input_ids.shape[1])
        x, hidden_states = encoder(x, mask, bias, deterministic=deterministic)
        index = pool_index(input_ids, self.pool, self.eos_token_id)
        pooled = x[jnp.arange(x.shape[0]), index]
        if self.pooler:
            pooled = jnp.tanh(nn.Dense(self.width, name="pooler")(pooled))
        aux = {"tokens": x, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        if self.projection_dim is not None:
            projection = nn.Dense(self.projection_dim, use_bias=self.projection_bias, name="projection")
            aux["embeds"] = projection(pooled)
        return x, {self.aux_prefix + k: v for k, v in aux.items()}


class CachedTextEncoder(nn.Module):
    """The text tower of `model.text.cache=True`: token outputs a frozen tower computed ahead, per distinct
    text (mmjax.data.text_cache), [B, L, D] -> (tokens, aux). No params: the model projects D to its width.
    aux keys (after `aux_prefix`): `tokens`, `mask`, `pooled` (the mean over real tokens, as
    sentence-transformers pool)."""

    aux_prefix: str = "txt/"

    @nn.compact
    def __call__(self, features: jax.Array, mask: jax.Array, *, deterministic: bool = True):
        del deterministic  # nothing random: the tower was run deterministically
        mask = mask.astype(bool)
        pooled = masked_mean(features, mask)
        p = self.aux_prefix
        return features, {f"{p}tokens": features, f"{p}mask": mask, f"{p}pooled": pooled}
