"""Pure per-task losses: classification, multi-label, regression, tagging, spans and contrastive alignment.

Every loss is computed in float32, respects its masks/weights and returns 0 (not NaN, with a finite
gradient) when nothing is valid.
"""

import jax
import jax.numpy as jnp
import optax

# Large finite negative for logits that must drop out of a softmax: exp() underflows to 0, while the
# log-probabilities and gradients stay finite (-inf would give 0 * inf = NaN).
MASK_VALUE = -1e9


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(w * v) / sum(w), or 0 when sum(w) == 0 (no NaN in value or gradient)."""
    weights = weights.astype(jnp.float32)
    total = weights.sum()
    return jnp.where(total > 0, (weights * values).sum() / jnp.where(total > 0, total, 1.0), 0.0)


def _example_weights(batch_size: int, weights: jax.Array | None) -> jax.Array:
    return jnp.ones((batch_size,), jnp.float32) if weights is None else weights.astype(jnp.float32)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None, smoothing: float = 0.0
) -> jax.Array:
    """Mean cross-entropy of logits [B, K] against int labels [B], weighted by `weights` [B].

    The weighted mean sum(w * nll) / sum(w): with 0/1 weights, the mean over examples with weight > 0.
    Returns 0 (no NaN) when every weight is 0. Computed in float32. `smoothing` > 0: against the labels
    smoothed as optax.smooth_labels does (1 - smoothing on the label, smoothing / K spread over all K).
    """
    logits, labels = logits.astype(jnp.float32), labels.astype(jnp.int32)
    if smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        nll = optax.softmax_cross_entropy(logits, targets)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _weighted_mean(nll, _example_weights(nll.shape[0], weights))


def sigmoid_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    label_mask: jax.Array | None = None,
) -> jax.Array:
    """Multi-label binary cross-entropy of logits [B, K] against multi-hot 0/1 labels [B, K] (float or int).

    Mean over the valid entries, each weighted by weights[b] [B] * label_mask[b, k] [B, K] (e.g. labels
    not annotated for some examples); 0 when nothing is valid.
    """
    per_label = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
    entry_weights = _example_weights(per_label.shape[0], weights)[:, None] * jnp.ones_like(per_label)
    if label_mask is not None:
        entry_weights = entry_weights * label_mask.astype(jnp.float32)
    return _weighted_mean(per_label, entry_weights)


def _per_example_mean(errors: jax.Array) -> jax.Array:
    """[B] or [B, D...] -> [B]: the mean over the trailing axes."""
    return errors.reshape(errors.shape[0], -1).mean(axis=-1)


def mse(predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Squared error (p - t)^2 for predictions/targets [B] or [B, D]: mean over D, weighted mean over B."""
    errors = optax.squared_error(predictions.astype(jnp.float32), targets.astype(jnp.float32))
    per_example = _per_example_mean(errors)
    return _weighted_mean(per_example, _example_weights(per_example.shape[0], weights))


def huber(
    predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None, delta: float = 1.0
) -> jax.Array:
    """Huber loss (0.5 e^2 for |e| <= delta, else delta (|e| - delta / 2)) for [B] or [B, D] inputs.

    Mean over D, then the weighted mean over examples.
    """
    errors = optax.huber_loss(predictions.astype(jnp.float32), targets.astype(jnp.float32), delta=delta)
    per_example = _per_example_mean(errors)
    return _weighted_mean(per_example, _example_weights(per_example.shape[0], weights))


def multilabel_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """`sigmoid_cross_entropy` of logits [B, K] against multi-hot labels [B, K] where -1 means "not labelled".

    A row of all -1 (an example without multi-label annotation) contributes nothing; more generally every
    entry < 0 is masked out, so partially annotated rows count their labelled entries. Mean over the
    labelled entries (weighted by weights [B], if given); 0 with a finite (zero) gradient when none is.
    """
    valid = labels >= 0
    safe_labels = jnp.where(valid, labels, 0)  # -1 never reaches the cross-entropy
    return sigmoid_cross_entropy(logits, safe_labels, weights, label_mask=valid)


def regression_loss(
    predictions: jax.Array,
    targets: jax.Array,
    kind: str = "mse",
    delta: float = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`mse` or `huber` (kind) for predictions/targets [B] or [B, D] where a NaN target means "not labelled".

    A row counts only when none of its targets is NaN (the same rows `metrics.regression_metrics` scores);
    NaN targets are replaced before the loss, so neither the value nor the gradient is NaN. Weighted mean
    over the labelled rows (times weights [B], if given); 0 when there is none. delta: Huber's threshold.
    """
    if kind not in ("mse", "huber"):
        raise ValueError(f"regression loss kind must be 'mse' or 'huber', got {kind!r}")
    targets = targets.astype(jnp.float32)
    missing = jnp.isnan(targets)
    row_valid = ~missing.reshape(missing.shape[0], -1).any(axis=-1)
    example_weights = _example_weights(row_valid.shape[0], weights) * row_valid
    safe_targets = jnp.where(missing, 0.0, targets)
    if kind == "mse":
        return mse(predictions, safe_targets, example_weights)
    return huber(predictions, safe_targets, example_weights, delta=delta)


def token_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Token classification (tagging): logits [B, L, K] against int labels [B, L].

    Labels < 0 are label padding (e.g. -1 on sub-word continuations) and are ignored, as are positions
    where mask [B, L] is False. Mean over the valid tokens of the whole batch; 0 when none is valid.
    """
    valid = labels >= 0
    if mask is not None:
        valid = valid & mask.astype(bool)
    safe_labels = jnp.maximum(labels, 0).astype(jnp.int32)  # clip before the gather: -1 would wrap around
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe_labels)
    return _weighted_mean(nll, valid)


def span_loss(
    start_logits: jax.Array,
    end_logits: jax.Array,
    starts: jax.Array,
    ends: jax.Array,
    token_mask: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Span extraction: mean of the start and end cross-entropies over positions, weighted over examples.

    start_logits/end_logits [B, L]; starts/ends [B] int token indices; token_mask [B, L] bool (False
    positions get MASK_VALUE, so they drop out of the softmax); weights [B] or None. Examples whose start
    or end is < 0, >= L or on a masked position (unanswerable or truncated) get weight 0.
    """
    token_mask = token_mask.astype(bool)
    length = token_mask.shape[1]

    def nll(logits, positions):
        masked = jnp.where(token_mask, logits.astype(jnp.float32), MASK_VALUE)
        safe = jnp.clip(positions, 0, length - 1).astype(jnp.int32)
        in_range = (positions >= 0) & (positions < length)
        on_token = jnp.take_along_axis(token_mask, safe[:, None], axis=1)[:, 0]
        return optax.softmax_cross_entropy_with_integer_labels(masked, safe), in_range & on_token

    start_nll, start_ok = nll(start_logits, starts)
    end_nll, end_ok = nll(end_logits, ends)
    example_weights = _example_weights(start_nll.shape[0], weights) * (start_ok & end_ok)
    return _weighted_mean((start_nll + end_nll) / 2, example_weights)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| over the last axis in float32; a zero vector stays 0 with a finite gradient."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def positives_from_labels(labels_x: jax.Array, labels_y: jax.Array) -> jax.Array:
    """labels_x [B], labels_y [B] -> positives [B, B] bool: True where labels_x[i] == labels_y[j]."""
    return labels_x[:, None] == labels_y[None, :]


def _pairs(x, y, logit_scale, valid, positives):
    """Scaled cosine similarities [B, B], valid [B] bool, positives [B, B] bool restricted to valid pairs."""
    logits = jnp.exp(jnp.asarray(logit_scale, jnp.float32)) * (_l2_normalize(x) @ _l2_normalize(y).T)
    batch = logits.shape[0]
    valid = jnp.ones((batch,), bool) if valid is None else valid.astype(bool)
    positives = jnp.eye(batch, dtype=bool) if positives is None else positives.astype(bool)
    positives = positives & valid[:, None] & valid[None, :]
    return logits, valid, positives


def info_nce(
    x: jax.Array,
    y: jax.Array,
    logit_scale: jax.Array | float,
    valid: jax.Array | None = None,
    positives: jax.Array | None = None,
) -> jax.Array:
    """Symmetric CLIP-style contrastive loss between embeddings x [B, D] and y [B, D] of two modalities.

    Embeddings are L2-normalised here; logits = exp(logit_scale) x̂ ŷᵀ, with logit_scale a scalar (the
    log of the learnable inverse temperature). valid [B] bool (None: all) drops an example's row AND column
    from both softmaxes and from the means (e.g. a missing modality). positives [B, B] bool (None: the
    diagonal; see `positives_from_labels`) marks positive pairs; a row with several has a uniform target
    over its valid positives, and rows/columns with none are excluded.
    Loss = (mean over rows of the x->y CE + mean over columns of the y->x CE) / 2.

    Written over the GLOBAL batch: under jax.jit with inputs sharded over a mesh ("data" axis), the
    [B, B] similarity spans every device's examples (XLA gathers as needed), so the value equals the
    1-device value.
    """
    logits, valid, positives = _pairs(x, y, logit_scale, valid, positives)

    def directional(logits, valid_candidates, positives):
        """CE of each row of logits against a uniform target over its positives; mean over valid rows."""
        log_probs = jax.nn.log_softmax(jnp.where(valid_candidates[None, :], logits, MASK_VALUE), axis=-1)
        num_positives = positives.sum(axis=-1)
        targets = positives / jnp.maximum(num_positives, 1)[:, None]
        return _weighted_mean(-(targets * log_probs).sum(axis=-1), num_positives > 0)

    x_to_y = directional(logits, valid, positives)
    y_to_x = directional(logits.T, valid, positives.T)
    return (x_to_y + y_to_x) / 2


def siglip_loss(
    x: jax.Array,
    y: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    valid: jax.Array | None = None,
    positives: jax.Array | None = None,
) -> jax.Array:
    """SigLIP pairwise sigmoid loss between embeddings x [B, D] and y [B, D] (L2-normalised here).

    With z_ij = +1 for positives [B, B] (None: the diagonal) and -1 otherwise:
    loss = -sum over valid (i, j) of log_sigmoid(z_ij (exp(logit_scale) x̂_i·ŷ_j + logit_bias)) / #valid rows.
    valid [B] bool (None: all) drops an example's row and column.

    Written over the GLOBAL batch: under jax.jit with inputs sharded over a mesh ("data" axis), the
    [B, B] similarity spans every device's examples, so the value equals the 1-device value.
    """
    logits, valid, positives = _pairs(x, y, logit_scale, valid, positives)
    logits = logits + jnp.asarray(logit_bias, jnp.float32)
    per_pair = optax.sigmoid_binary_cross_entropy(logits, positives.astype(jnp.float32))  # -log_sigmoid(z l)
    pair_valid = valid[:, None] & valid[None, :]
    num_rows = valid.sum()
    total = jnp.where(pair_valid, per_pair, 0.0).sum()
    return jnp.where(num_rows > 0, total / jnp.maximum(num_rows, 1), 0.0)


def retrieval_hits(
    x: jax.Array, y: jax.Array, valid: jax.Array | None = None, positives: jax.Array | None = None
) -> jax.Array:
    """x -> y retrieval: hits [B] bool, True where x_i's most cosine-similar valid y_j is a positive.

    x, y [B, D]; valid [B] bool (None: all); positives [B, B] bool (None: the diagonal). Invalid rows are
    False, so sum(hits) / sum(valid) is the top-1 accuracy. Global batch, like `info_nce`.
    """
    similarity, valid, positives = _pairs(x, y, 0.0, valid, positives)
    nearest = jnp.argmax(jnp.where(valid[None, :], similarity, MASK_VALUE), axis=-1)
    return jnp.take_along_axis(positives, nearest[:, None], axis=1)[:, 0] & valid
