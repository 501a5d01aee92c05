"""DeBERTa (v1) and DeBERTa-v2/v3 text encoders: disentangled attention over relative positions.

Each layer adds to the content-to-content logits q.k the content-to-position (c2p: q against the relative
position embedding of j - i) and position-to-content (p2c: k against that of i - j) terms, all divided by
sqrt(head_dim * (1 + len(pos_att_type))). DeBERTa-v2/v3 add log-bucketed relative positions, shared
position projections, a LayerNorm on the relative embeddings and a convolution after the first layer.
With fields from a Hugging Face config it computes exactly DebertaModel (version=1) or DebertaV2Model
(version=2), hidden state by hidden state, including HF's float32 rounding order of the scaling.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mmjax.nn.attention import IMPLEMENTATIONS, compute_dtype
from mmjax.nn.embeddings import INIT, PositionEmbedding
from mmjax.nn.transformer import ACTIVATIONS, REMAT_POLICIES, MlpBlock

POS_ATT_TYPES = ("c2p", "p2c")
V2_ONLY = ("share_att_key", "rel_embedding_ln", "position_buckets", "conv_kernel_size")


def log_buckets(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """DeBERTa-v2's log buckets: distances under bucket_size / 2 stay, longer ones shrink logarithmically
    so that max_position - 1 lands on bucket_size - 1. float32 as in HF, so ties round the same way."""
    mid = bucket_size // 2
    inside = (relative < mid) & (relative > -mid)
    distance = np.where(inside, mid - 1, np.abs(relative)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # only where `distance <= mid` discards it
        ratio = np.log(distance / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
        far = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
        return np.where(distance <= mid, relative, far * np.sign(relative)).astype(np.int32)


def relative_positions(length: int, buckets: int = -1, max_position: int = -1) -> np.ndarray:
    """[L, L] query position minus key position (i - j), log-bucketed when buckets > 0."""
    ids = np.arange(length)
    relative = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        relative = log_buckets(relative, buckets, max_position)
    return relative


def gather_c2p(scores: jax.Array, relative: np.ndarray, span: int) -> jax.Array:
    """[B, H, Lq, 2 span] query-vs-relative-embedding scores -> [B, H, Lq, Lk]: entry (i, j) is the score
    against the embedding of distance i - j (clipped to the table)."""
    index = np.clip(relative + span, 0, 2 * span - 1)
    return scores[:, :, np.arange(len(relative))[:, None], index]


def gather_p2c(scores: jax.Array, relative: np.ndarray, span: int) -> jax.Array:
    """[B, H, Lk, 2 span] key-vs-relative-embedding scores -> [B, H, Lq, Lk]: entry (i, j) is key j's score
    against the embedding of distance -(j - i), HF's gather on the key axis then transpose."""
    index = np.clip(-relative + span, 0, 2 * span - 1)
    return jnp.swapaxes(scores[:, :, np.arange(len(relative))[:, None], index], -1, -2)


def scores(a: jax.Array, b: jax.Array) -> jax.Array:
    """[B, La, H, d] x [B or none, Lb, H, d] -> [B, H, La, Lb] dot products, in at least float32."""
    out = jnp.einsum("bqhd,bkhd->bhqk" if b.ndim == 4 else "bqhd,khd->bhqk", a, b)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))


class DisentangledAttention(nn.Module):
    """Self-attention with DeBERTa's relative-position terms; `pair_mask` [B, L, L] (HF masks queries and
    keys: a padded query attends uniformly to every key, as in HF). Returns the output projection.

    version 2: q/k/v projections with biases; the keys are divided by the scale before q.k, the c2p/p2c
    terms after their dot products; position projections are the query/key ones (share_att_key) or their
    own pos_query/pos_key. version 1: one bias-free in_proj (per head [q, k, v]) plus q_bias/v_bias, the
    queries are divided by the scale, pos_key has no bias, and talking_head mixes logits and weights across
    heads. `rel_embeddings`: the relative-position table [2 span, width] for distances -span..span-1 (None
    without relative_attention).
    """

    num_heads: int
    version: int = 2  # 1: DebertaModel, 2: DebertaV2Model
    relative_attention: bool = True
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")  # any of c2p, p2c; each adds 1 to the scale factor
    share_att_key: bool = True  # v2: project positions with the query/key projections
    talking_head: bool = False  # v1: head_logits / head_weights mixing across heads
    max_relative_positions: int = 512  # resolved (> 0): the distance log buckets reach their last at
    position_buckets: int = -1  # v2: > 0 log-buckets distances (into +-this)
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype of the projections
    implementation: str = "xla"  # xla | fused (jax.nn.dot_product_attention with the c2p/p2c bias)

    @nn.compact
    def __call__(
        self, x: jax.Array, pair_mask: jax.Array, rel_embeddings: jax.Array | None, *, deterministic: bool
    ) -> jax.Array:
        batch, length, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        dtype = compute_dtype(self.dtype)

        def dense(name: str, use_bias: bool = True) -> nn.DenseGeneral:
            return nn.DenseGeneral((heads, head_dim), use_bias=use_bias, dtype=dtype, name=name)

        scale = np.sqrt(np.float32(head_dim) * np.float32(1 + len(self.pos_att_type)), dtype=np.float32)
        if self.version == 1:
            qkv = nn.DenseGeneral((heads, 3 * head_dim), use_bias=False, dtype=dtype, name="in_proj")(x)
            q, k, v = jnp.split(qkv, 3, axis=-1)
            q = (q + self.param("q_bias", nn.initializers.zeros, (heads, head_dim))) / scale
            v = v + self.param("v_bias", nn.initializers.zeros, (heads, head_dim))
        else:
            query, key = dense("query"), dense("key")
            q, k, v = query(x), key(x), dense("value")(x)
        k_scaled = k if self.version == 1 else k / scale
        bias = 0.0
        if self.relative_attention:
            rel = nn.Dropout(self.dropout_rate)(rel_embeddings, deterministic=deterministic)
            span = half = len(rel) // 2
            if self.version == 1:  # v1 uses the middle rows its distances reach
                span = min(length, half)
                rel = rel[half - span : half + span]
                relative = relative_positions(length)
            else:
                relative = relative_positions(length, self.position_buckets, self.max_relative_positions)
            if "c2p" in self.pos_att_type:
                pos_key = key if self.share_att_key else dense("pos_key", use_bias=self.version == 2)
                c2p = gather_c2p(scores(q, pos_key(rel)), relative, span)
                bias = bias + (c2p if self.version == 1 else c2p / scale)
            if "p2c" in self.pos_att_type:
                pos_query = (query if self.share_att_key else dense("pos_query"))(rel)
                pos_query = pos_query / scale if self.version == 1 else pos_query
                p2c = gather_p2c(scores(k, pos_query), relative, span)
                bias = bias + (p2c if self.version == 1 else p2c / scale)
        mask = pair_mask[:, None]
        if self.implementation == "fused":
            if self.dropout_rate > 0 and not deterministic:
                raise ValueError(
                    f"attention='fused' does not support attention dropout (dropout_rate={self.dropout_rate} "
                    "in training): use attention='xla' or dropout 0"
                )
            bias = jnp.broadcast_to(bias, (batch, heads, length, length)).astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k_scaled, v, bias=bias, mask=mask, scale=1.0)
        else:

            def mix(name: str, a: jax.Array) -> jax.Array:  # talking heads: a Dense over the head axis
                return jnp.moveaxis(nn.Dense(heads, use_bias=False, name=name)(jnp.moveaxis(a, 1, -1)), -1, 1)

            logits = scores(q, k_scaled) + bias
            if self.talking_head:
                logits = mix("head_logits", logits)
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            weights = jax.nn.softmax(logits, axis=-1)  # a row masked throughout: uniform, as in HF
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            if self.talking_head:
                weights = mix("head_weights", weights)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=dtype, name="out")(out)


class DebertaLayer(nn.Module):
    """Post-LN block: LN(x + attention(x)), then LN(x + fc2(act(fc1(x)))); dropout on both sub-layers.

    `self_attn` is this layer's attention, passed unbound (parent=None) so that the layer adopts it.
    """

    self_attn: DisentangledAttention
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-7
    dropout_rate: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, pair_mask: jax.Array, rel_embeddings: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        drop = nn.Dropout(self.dropout_rate)
        h = self.self_attn(x, pair_mask, rel_embeddings, deterministic=deterministic)
        x = layer_norm(self.layer_norm_eps, "self_attn_ln")(x + drop(h, deterministic=deterministic))
        h = MlpBlock(self.mlp_dim, 0.0, self.activation, self.dtype, name="mlp")(
            x, deterministic=deterministic
        )
        return layer_norm(self.layer_norm_eps, "mlp_ln")(x + drop(h, deterministic=deterministic))


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """LayerNorm with the two-pass variance (mean of squared deviations), as torch and DeBERTa's own."""
    return nn.LayerNorm(eps, use_fast_variance=False, name=name)


def check_fields(m: "DebertaEncoder") -> None:
    """Raises ValueError naming the first field DeBERTa cannot run with."""
    checks = [
        ("version", m.version not in (1, 2), "must be 1 or 2"),
        (
            "pos_att_type",
            not set(m.pos_att_type) <= set(POS_ATT_TYPES) or len(set(m.pos_att_type)) < len(m.pos_att_type),
            f"entries must be distinct ones of {POS_ATT_TYPES}",
        ),
        ("num_heads", m.width % m.num_heads != 0, f"must divide width={m.width}"),
        (
            "conv_kernel_size",
            m.conv_kernel_size > 0 and m.conv_kernel_size % 2 == 0,
            "must be odd (HF's padding shortens the sequence otherwise)",
        ),
        ("conv_act", m.conv_act not in ACTIVATIONS, f"must be one of {sorted(ACTIVATIONS)}"),
        (
            "talking_head",
            m.talking_head and (m.version == 2 or m.attention == "fused"),
            "is DeBERTa v1 only and needs attention='xla'",
        ),
        ("scan", m.scan, "is not supported (the convolution after layer 0 breaks the identical layers)"),
        ("remat", m.remat not in REMAT_POLICIES, f"must be one of {sorted(REMAT_POLICIES)}"),
        ("attention", m.attention not in IMPLEMENTATIONS, f"must be one of {IMPLEMENTATIONS}"),
    ]
    checks += [
        (f, m.version == 1 and getattr(m, f) not in (False, 0, -1), "is a DeBERTa-v2 option") for f in V2_ONLY
    ]
    for field, bad, reason in checks:
        if bad:
            raise ValueError(f"DebertaEncoder {field}={getattr(m, field)!r} {reason}")


def relative_span(m: "DebertaEncoder") -> int:
    """Half the relative-embedding table's rows: position_buckets (v2, > 0), else max_relative_positions
    (< 1: max_len)."""
    if m.version == 2 and m.position_buckets > 0:
        return m.position_buckets
    return m.max_relative_positions if m.max_relative_positions > 0 else m.max_len


class DebertaEncoder(nn.Module):
    """Encodes token ids [B, L] with a padding mask [B, L] into tokens [B, L, width], as HF DeBERTa.

    Returns (tokens, aux); aux keys (after `aux_prefix`): `tokens`, `mask` (bool attention_mask), `pooled`
    (the first token, [CLS]; HF's ContextPooler belongs to its task heads), `hidden_states` (the masked
    embedding output, then every layer's output, the first after the convolution when there is one).
    token_type_ids are ignored when type_vocab_size=0, as in HF (DeBERTa-v3's tokenizer returns them).
    Defaults are DeBERTa-v3's; fields marked v2 need version=2.
    """

    vocab_size: int
    max_len: int  # number of absolute position embeddings (HF max_position_embeddings)
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    version: int = 2  # 1: DeBERTa (HF DebertaModel); 2: DeBERTa-v2/v3 (HF DebertaV2Model)
    type_vocab_size: int = 0  # 0: no token-type embedding
    embedding_dim: int | None = None  # HF embedding_size when it differs: then a bias-free Dense to width
    position_biased_input: bool = False  # add absolute position embeddings to the token embeddings
    relative_attention: bool = True  # c2p/p2c terms over a table of relative position embeddings
    max_relative_positions: int = -1  # the table spans +-this; < 1: max_len
    position_buckets: int = 256  # v2: > 0 log-buckets distances into +-this (the table's span); else none
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")  # any distinct of "c2p", "p2c"
    share_att_key: bool = True  # v2: positions use the query/key projections (else pos_query/pos_key)
    rel_embedding_ln: bool = True  # v2: LayerNorm on the relative embeddings (HF norm_rel_ebd="layer_norm")
    conv_kernel_size: int = 0  # v2: > 0 (odd) adds HF's ConvLayer after the first layer
    conv_groups: int = 1
    conv_act: str = "tanh"  # a key of mmjax.nn.transformer.ACTIVATIONS
    talking_head: bool = False  # v1: mix attention logits and weights across heads
    activation: str = "gelu"  # HF hidden_act, a key of ACTIVATIONS
    layer_norm_eps: float = 1e-7
    dropout_rate: float = 0.0  # embeddings, relative embeddings, attention weights, sub-layers, conv
    scan: bool = False  # not supported (raises): kept so the model's speed levers apply uniformly
    remat: str = ""  # "" | full | dots | dots_saveable (mmjax.nn.transformer.REMAT_POLICIES) per layer
    dtype: str = "float32"  # compute dtype of the projections: float32 | bfloat16 (params float32)
    attention: str = "xla"  # xla | fused (jax.nn.dot_product_attention with the relative bias)
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
        check_fields(self)
        mask = (jnp.ones_like(input_ids) if attention_mask is None else attention_mask).astype(bool)
        drop = nn.Dropout(self.dropout_rate)
        dim = self.embedding_dim or self.width
        x = nn.Embed(self.vocab_size, dim, embedding_init=INIT, name="token_embedding")(input_ids)
        if self.position_biased_input:
            x = PositionEmbedding(self.max_len, name="position_embedding")(x)
        if self.type_vocab_size:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + nn.Embed(self.type_vocab_size, dim, embedding_init=INIT, name="type_embedding")(types)
        if self.embedding_dim is not None:
            x = nn.Dense(self.width, use_bias=False, name="embedding_proj")(x)
        x = layer_norm(self.layer_norm_eps, "embedding_ln")(x) * mask[..., None]
        x = drop(x, deterministic=deterministic)
        rel = self.rel_embeddings()
        pair_mask = mask[:, :, None] & mask[:, None, :]
        layer = DebertaLayer
        if self.remat:
            layer = nn.remat(DebertaLayer, policy=REMAT_POLICIES[self.remat], static_argnums=(4,))
        hidden_states = [x]
        for i in range(self.depth):
            out = layer(
                self.attention_module(),
                self.mlp_dim,
                self.activation,
                self.layer_norm_eps,
                self.dropout_rate,
                self.dtype,
                name=f"layer_{i}",
            )(x, pair_mask, rel, deterministic)
            if i == 0 and self.conv_kernel_size > 0:
                out = self.conv(hidden_states[0], out, mask, deterministic)
            x = out
            hidden_states.append(x)
        aux = {"tokens": x, "mask": mask, "pooled": x[:, 0], "hidden_states": tuple(hidden_states)}
        return x, {self.aux_prefix + k: v for k, v in aux.items()}

    def attention_module(self) -> DisentangledAttention:
        """An unbound attention for one layer (the layer adopts it as `self_attn`)."""
        return DisentangledAttention(
            self.num_heads,
            self.version,
            self.relative_attention,
            tuple(self.pos_att_type),
            self.share_att_key,
            self.talking_head,
            self.max_relative_positions if self.max_relative_positions > 0 else self.max_len,
            self.position_buckets,
            self.dropout_rate,
            self.dtype,
            self.attention,
            parent=None,
        )

    def rel_embeddings(self) -> jax.Array | None:
        """The relative-position table [2 span, width] (LayerNorm-ed with rel_embedding_ln), or None."""
        if not self.relative_attention:
            return None
        table = self.param("rel_embedding", INIT, (2 * relative_span(self), self.width))
        if self.rel_embedding_ln:
            table = layer_norm(self.layer_norm_eps, "rel_embedding_ln")(table)
        return table

    def conv(self, embedded: jax.Array, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """HF's ConvLayer: LN(x + act(conv(embedded))) with padded positions zeroed before and after."""
        pad = (self.conv_kernel_size - 1) // 2
        out = nn.Conv(
            self.width,
            (self.conv_kernel_size,),
            padding=[(pad, pad)],
            feature_group_count=self.conv_groups,
            dtype=compute_dtype(self.dtype),
            name="conv",
        )(embedded)
        out = jnp.where(mask[..., None], out, 0.0)
        out = ACTIVATIONS[self.conv_act](nn.Dropout(self.dropout_rate)(out, deterministic=deterministic))
        return layer_norm(self.layer_norm_eps, "conv_ln")(x + out) * mask[..., None]
