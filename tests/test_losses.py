"""Losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.losses import (
    huber,
    info_nce,
    mse,
    multilabel_loss,
    positives_from_labels,
    regression_loss,
    retrieval_hits,
    siglip_loss,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
    span_loss,
    token_cross_entropy,
)

LOGITS = jnp.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
LABELS = jnp.array([0, 1])
# -log softmax by hand: both rows have logsumexp = max + log(1 + e^-1 + e^-2).
TAIL = math.log(1 + math.exp(-1) + math.exp(-2))
NLL = (2.0 + TAIL, 1.0 + TAIL)


def test_cross_entropy_matches_hand_computed_values():
    np.testing.assert_allclose(softmax_cross_entropy(LOGITS, LABELS), (NLL[0] + NLL[1]) / 2, rtol=1e-6)


def test_cross_entropy_weights():
    np.testing.assert_allclose(
        softmax_cross_entropy(LOGITS, LABELS, jnp.array([1.0, 0.0])), NLL[0], rtol=1e-6
    )
    np.testing.assert_allclose(
        softmax_cross_entropy(LOGITS, LABELS, jnp.array([False, True])), NLL[1], rtol=1e-6
    )
    weighted = softmax_cross_entropy(LOGITS, LABELS, jnp.array([3.0, 1.0]))
    np.testing.assert_allclose(weighted, (3 * NLL[0] + NLL[1]) / 4, rtol=1e-6)


def test_label_smoothing_matches_hand_computed_values():
    # targets: 1 - 0.3 + 0.3 / 3 on the label, 0.3 / 3 elsewhere; -log softmax of row 0 is (2, 1, 0) + TAIL
    row0 = 0.8 * (2.0 + TAIL) + 0.1 * (1.0 + TAIL) + 0.1 * (0.0 + TAIL)
    row1 = 0.1 * (0.0 + TAIL) + 0.8 * (1.0 + TAIL) + 0.1 * (2.0 + TAIL)
    smoothed = softmax_cross_entropy(LOGITS, LABELS, jnp.array([1.0, 3.0]), smoothing=0.3)
    np.testing.assert_allclose(smoothed, (row0 + 3 * row1) / 4, rtol=1e-6)


def test_cross_entropy_all_weights_zero_is_zero_with_finite_grad():
    zeros = jnp.zeros(2)
    assert softmax_cross_entropy(LOGITS, LABELS, zeros) == 0.0
    grad = jax.grad(lambda x: softmax_cross_entropy(x, LABELS, zeros))(LOGITS)
    np.testing.assert_array_equal(grad, 0.0)


def test_cross_entropy_is_float32_for_bfloat16_logits():
    loss = softmax_cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS)
    assert loss.dtype == jnp.float32


# ---------------------------------------------------------------- multi-label, regression, tagging, spans


def softplus(v: float) -> float:
    """log(1 + e^v): the binary cross-entropy of logit -v against label 1."""
    return math.log1p(math.exp(v))


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def assert_zero_with_finite_grad(loss_fn, *args):
    assert loss_fn(*args) == 0.0
    for grad in jax.tree.leaves(jax.grad(loss_fn)(*args)):
        assert np.all(np.isfinite(grad))


ML_LOGITS = jnp.array([[0.0, 2.0], [-1.0, 3.0]])
ML_LABELS = jnp.array([[1, 0], [0, 1]])
# bce(l, y) = log(1 + e^l) - y l: entries (0, 1), (2, 0), (-1, 0), (3, 1).
BCE = np.array([[math.log(2), softplus(2.0)], [softplus(-1.0), softplus(-3.0)]])


def test_sigmoid_cross_entropy_hand_computed():
    np.testing.assert_allclose(sigmoid_cross_entropy(ML_LOGITS, ML_LABELS), BCE.mean(), rtol=1e-6)
    float_labels = sigmoid_cross_entropy(ML_LOGITS, ML_LABELS.astype(jnp.float32))
    np.testing.assert_allclose(float_labels, BCE.mean(), rtol=1e-6)
    row0 = sigmoid_cross_entropy(ML_LOGITS, ML_LABELS, weights=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(row0, BCE[0].mean(), rtol=1e-6)
    label_mask = jnp.array([[True, False], [True, True]])
    masked = sigmoid_cross_entropy(ML_LOGITS, ML_LABELS, label_mask=label_mask)
    np.testing.assert_allclose(masked, (BCE[0, 0] + BCE[1, 0] + BCE[1, 1]) / 3, rtol=1e-6)
    both = sigmoid_cross_entropy(ML_LOGITS, ML_LABELS, jnp.array([2.0, 1.0]), label_mask)
    np.testing.assert_allclose(both, (2 * BCE[0, 0] + BCE[1, 0] + BCE[1, 1]) / 4, rtol=1e-6)
    assert sigmoid_cross_entropy(ML_LOGITS.astype(jnp.bfloat16), ML_LABELS).dtype == jnp.float32


def test_sigmoid_cross_entropy_nothing_valid():
    assert_zero_with_finite_grad(lambda x: sigmoid_cross_entropy(x, ML_LABELS, jnp.zeros(2)), ML_LOGITS)
    no_labels = jnp.zeros((2, 2), bool)
    assert_zero_with_finite_grad(lambda x: sigmoid_cross_entropy(x, ML_LABELS, None, no_labels), ML_LOGITS)


def test_mse_hand_computed():
    np.testing.assert_allclose(mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])), (1 + 4) / 2, rtol=1e-6)
    weighted = mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]), jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(weighted, (1 + 3 * 4) / 4, rtol=1e-6)
    # [B, D]: per example the mean over D, (1 + 4) / 2 and (9 + 1) / 2.
    preds, targets = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [3.0, 1.0]])
    np.testing.assert_allclose(mse(preds, targets), (2.5 + 5.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(mse(preds, targets, jnp.array([0.0, 1.0])), 5.0, rtol=1e-6)
    assert_zero_with_finite_grad(lambda p: mse(p, targets, jnp.zeros(2)), preds)


def test_huber_hand_computed():
    preds, targets = jnp.array([0.5, -3.0]), jnp.zeros(2)
    # |e| <= delta: e^2 / 2; else delta * (|e| - delta / 2).
    np.testing.assert_allclose(huber(preds, targets), (0.125 + 2.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(huber(preds, targets, delta=2.0), (0.125 + 2 * (3 - 1)) / 2, rtol=1e-6)
    np.testing.assert_allclose(huber(preds, targets, jnp.array([0.0, 1.0])), 2.5, rtol=1e-6)
    preds2, targets2 = jnp.array([[0.5, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(huber(preds2, targets2), ((0.125 + 1.5) / 2 + 0.5 / 2) / 2, rtol=1e-6)
    assert_zero_with_finite_grad(lambda p: huber(p, targets, jnp.zeros(2)), preds)


def test_multilabel_loss_skips_unlabelled_rows_and_entries():
    # Row 2 is all -1 (not labelled): the loss is the 2x2 example's mean, whatever row 2's logits are.
    logits = jnp.concatenate([ML_LOGITS, jnp.array([[50.0, -50.0]])])
    labels = jnp.concatenate([ML_LABELS, jnp.array([[-1, -1]])])
    np.testing.assert_allclose(multilabel_loss(logits, labels), BCE.mean(), rtol=1e-6)
    np.testing.assert_allclose(multilabel_loss(logits, labels.astype(jnp.float32)), BCE.mean(), rtol=1e-6)
    weighted = multilabel_loss(logits, labels, jnp.array([2.0, 1.0, 5.0]))
    np.testing.assert_allclose(weighted, (2 * BCE[0].sum() + BCE[1].sum()) / (2 * 2 + 2), rtol=1e-6)
    # A single -1 entry is masked too: (0, 1) and (1, *) count.
    partial = multilabel_loss(ML_LOGITS, jnp.array([[-1, 0], [0, 1]]))
    np.testing.assert_allclose(partial, (BCE[0, 1] + BCE[1, 0] + BCE[1, 1]) / 3, rtol=1e-6)
    grad = jax.grad(lambda x: multilabel_loss(x, labels))(logits)
    assert np.all(np.isfinite(grad)) and np.all(grad[2] == 0.0)
    # d bce / d l = sigmoid(l) - y, over the 4 labelled entries: [[1/2 - 1, sigmoid(2)], ...] / 4.
    sigmoid = 1 / (1 + np.exp(-np.array([[0.0, 2.0], [-1.0, 3.0]])))
    np.testing.assert_allclose(grad[:2], (sigmoid - np.array([[1, 0], [0, 1]])) / 4, rtol=1e-5)
    assert_zero_with_finite_grad(lambda x: multilabel_loss(x, -jnp.ones((2, 2), jnp.int32)), ML_LOGITS)


REG_PREDS, REG_TARGETS = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, jnp.nan, 5.0])


def test_regression_loss_skips_nan_targets():
    # Labelled rows 0 and 2: errors 1 and -2.
    np.testing.assert_allclose(regression_loss(REG_PREDS, REG_TARGETS), (1 + 4) / 2, rtol=1e-6)
    weighted = regression_loss(REG_PREDS, REG_TARGETS, weights=jnp.array([3.0, 1.0, 1.0]))
    np.testing.assert_allclose(weighted, (3 * 1 + 4) / 4, rtol=1e-6)
    # Huber, delta 1: 1^2 / 2 = 0.5 and 1 * (2 - 1/2) = 1.5; delta 2: 0.5 and 2^2 / 2 = 2.
    np.testing.assert_allclose(regression_loss(REG_PREDS, REG_TARGETS, "huber"), (0.5 + 1.5) / 2, rtol=1e-6)
    huber2 = regression_loss(REG_PREDS, REG_TARGETS, "huber", delta=2.0)
    np.testing.assert_allclose(huber2, (0.5 + 2.0) / 2, rtol=1e-6)
    # Without NaN it is the plain loss.
    np.testing.assert_allclose(regression_loss(REG_PREDS, jnp.array([0.0, 2.0, 5.0])), 5 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="'mse' or 'huber', got 'mae'"):
        regression_loss(REG_PREDS, REG_TARGETS, "mae")


def test_regression_loss_gradient_is_finite_with_nan_targets():
    # d/dp of ((1 - 0)^2 + (3 - 5)^2) / 2 = (p - t) for the labelled rows, 0 for the NaN row.
    for kind in ("mse", "huber"):
        grad = jax.grad(lambda p, kind=kind: regression_loss(p, REG_TARGETS, kind))(REG_PREDS)
        expected = [1.0, 0.0, -2.0] if kind == "mse" else [0.5, 0.0, -0.5]  # huber: clip(e, -1, 1) / 2 rows
        np.testing.assert_allclose(grad, expected, rtol=1e-6)
    # [B, D]: a row with any NaN target drops out; row 1 = ((0 - 3)^2 + (0 - 1)^2) / 2 = 5.
    preds, targets = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, jnp.nan], [3.0, 1.0]])
    np.testing.assert_allclose(regression_loss(preds, targets), 5.0, rtol=1e-6)
    grad = jax.grad(lambda p: regression_loss(p, targets))(preds)
    np.testing.assert_allclose(grad, [[0.0, 0.0], [-3.0, -1.0]], rtol=1e-6)  # 2 (p - t) / D, 1 labelled row
    all_nan = jnp.full((2,), jnp.nan)
    assert_zero_with_finite_grad(lambda p: regression_loss(p, all_nan), jnp.array([1.0, 2.0]))
    assert_zero_with_finite_grad(lambda p: regression_loss(p, all_nan, "huber"), jnp.array([1.0, 2.0]))
    assert jax.jit(regression_loss, static_argnames="kind")(REG_PREDS, REG_TARGETS, "huber") == 1.0


TOK_LOGITS = jnp.array([[[0.0, 1.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 3.0]]])
TOK_LABELS = jnp.array([[1, -1], [0, 1]])  # -1: a sub-word continuation
TOK_MASK = jnp.array([[True, True], [True, False]])


def test_token_cross_entropy_hand_computed():
    nll_00 = lse(0.0, 1.0) - 1.0
    nll_10 = math.log(2)
    nll_11 = lse(0.0, 3.0) - 3.0
    loss = token_cross_entropy(TOK_LOGITS, TOK_LABELS, TOK_MASK)
    np.testing.assert_allclose(loss, (nll_00 + nll_10) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        token_cross_entropy(TOK_LOGITS, TOK_LABELS), (nll_00 + nll_10 + nll_11) / 3, rtol=1e-6
    )
    # The -1 position has no influence: zero gradient there.
    grad = jax.grad(lambda x: token_cross_entropy(x, TOK_LABELS, TOK_MASK))(TOK_LOGITS)
    np.testing.assert_array_equal(grad[0, 1], 0.0)
    np.testing.assert_array_equal(grad[1, 1], 0.0)
    assert np.all(np.isfinite(grad))


def test_token_cross_entropy_nothing_valid():
    all_padding = -jnp.ones((2, 2), jnp.int32)
    assert_zero_with_finite_grad(lambda x: token_cross_entropy(x, all_padding), TOK_LOGITS)
    no_tokens = jnp.zeros((2, 2), bool)
    assert_zero_with_finite_grad(lambda x: token_cross_entropy(x, TOK_LABELS, no_tokens), TOK_LOGITS)


SPAN_START = jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
SPAN_END = jnp.array([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0]])
SPAN_MASK = jnp.array([[True, True, True], [True, True, False]])
# Example 0: start 1, end 2 over all 3 positions; example 1: start 0, end 0, position 2 is masked out.
SPAN_0 = ((lse(1.0, 2.0, 0.0) - 2.0) + (lse(0.0, 1.0, 3.0) - 3.0)) / 2
SPAN_1 = (math.log(2) + (lse(2.0, 0.0) - 2.0)) / 2


def test_span_loss_hand_computed():
    starts, ends = jnp.array([1, 0]), jnp.array([2, 0])
    np.testing.assert_allclose(
        span_loss(SPAN_START, SPAN_END, starts, ends, SPAN_MASK), (SPAN_0 + SPAN_1) / 2, rtol=1e-6
    )
    weighted = span_loss(SPAN_START, SPAN_END, starts, ends, SPAN_MASK, jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(weighted, (SPAN_0 + 3 * SPAN_1) / 4, rtol=1e-6)
    # A masked logit does not matter, whatever its value.
    changed = span_loss(SPAN_START.at[1, 2].set(100.0), SPAN_END, starts, ends, SPAN_MASK)
    np.testing.assert_allclose(changed, (SPAN_0 + SPAN_1) / 2, rtol=1e-6)


def test_span_loss_drops_unanswerable_and_truncated_examples():
    unanswerable = span_loss(SPAN_START, SPAN_END, jnp.array([-1, 0]), jnp.array([-1, 0]), SPAN_MASK)
    np.testing.assert_allclose(unanswerable, SPAN_1, rtol=1e-6)
    truncated = span_loss(SPAN_START, SPAN_END, jnp.array([1, 0]), jnp.array([2, 2]), SPAN_MASK)  # end masked
    np.testing.assert_allclose(truncated, SPAN_0, rtol=1e-6)
    past_end = span_loss(SPAN_START, SPAN_END, jnp.array([1, 0]), jnp.array([2, 3]), SPAN_MASK)
    np.testing.assert_allclose(past_end, SPAN_0, rtol=1e-6)
    none = (jnp.array([-1, 2]), jnp.array([-1, 0]))
    assert_zero_with_finite_grad(lambda s, e: span_loss(s, e, *none, SPAN_MASK), SPAN_START, SPAN_END)


# ---------------------------------------------------------------- contrastive

# x̂ = e1, e2; ŷ = e1, (0.6, 0.8): cosine similarities [[1, 0.6], [0, 0.8]].
CX = jnp.array([[3.0, 0.0], [0.0, 2.0]])
CY = jnp.array([[5.0, 0.0], [3.0, 4.0]])


def test_info_nce_hand_computed_two_examples():
    # logit_scale = log 2: logits [[2, 1.2], [0, 1.6]]; diagonal positives.
    rows = (lse(2.0, 1.2) - 2.0) + (lse(0.0, 1.6) - 1.6)
    cols = (lse(2.0, 0.0) - 2.0) + (lse(1.2, 1.6) - 1.6)
    expected = (rows / 2 + cols / 2) / 2
    np.testing.assert_allclose(info_nce(CX, CY, math.log(2)), expected, rtol=1e-6)
    grad = jax.grad(info_nce, argnums=2)(CX, CY, jnp.float32(math.log(2)))
    assert np.isfinite(grad) and grad != 0


def np_info_nce(sim: np.ndarray, scale: float, pos: np.ndarray) -> float:
    """Reference with loops: rows/columns with a positive, CE against a uniform target over positives."""
    logits = scale * sim
    row_ce = [
        np.log(np.exp(logits[i]).sum()) - logits[i][pos[i]].mean() for i in range(len(pos)) if pos[i].any()
    ]
    col_ce = [
        np.log(np.exp(logits[:, j]).sum()) - logits[:, j][pos[:, j]].mean()
        for j in range(len(pos))
        if pos[:, j].any()
    ]
    return (np.mean(row_ce) + np.mean(col_ce)) / 2


def test_info_nce_multi_positive():
    x = jnp.eye(3)
    y = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # x_i · y_j = y_j[i]
    labels = jnp.array([0, 0, 1])
    positives = positives_from_labels(labels, labels)
    np.testing.assert_array_equal(positives, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    # Similarities [[1, 0.6, 0], [0, 0.8, 0], [0, 0, 1]], scale 1; uniform targets over each row's positives.
    rows = [
        lse(1.0, 0.6, 0.0) - (1.0 + 0.6) / 2,
        lse(0.0, 0.8, 0.0) - (0.0 + 0.8) / 2,
        lse(0.0, 0.0, 1.0) - 1.0,
    ]
    cols = [
        lse(1.0, 0.0, 0.0) - (1.0 + 0.0) / 2,
        lse(0.6, 0.8, 0.0) - (0.6 + 0.8) / 2,
        lse(0.0, 0.0, 1.0) - 1.0,
    ]
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    np.testing.assert_allclose(info_nce(x, y, 0.0, positives=positives), expected, rtol=1e-6)
    # Row 2 and column 2 have no positive (label 2 vs 3): out of the means, still negatives in the softmaxes.
    no_pos = positives_from_labels(jnp.array([0, 1, 2]), jnp.array([0, 1, 3]))
    rows = [lse(1.0, 0.6, 0.0) - 1.0, lse(0.0, 0.8, 0.0) - 0.8]
    cols = [lse(1.0, 0.0, 0.0) - 1.0, lse(0.6, 0.8, 0.0) - 0.8]
    np.testing.assert_allclose(
        info_nce(x, y, 0.0, positives=no_pos), (sum(rows) / 2 + sum(cols) / 2) / 2, rtol=1e-6
    )


def test_info_nce_invalid_example_equals_sub_batch():
    x, y = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
    valid = jnp.array([True, False, True])
    keep = jnp.array([0, 2])
    np.testing.assert_allclose(info_nce(x, y, 1.5, valid), info_nce(x[keep], y[keep], 1.5), rtol=1e-6)
    labels = jnp.array([0, 1, 0])
    positives = positives_from_labels(labels, labels)
    np.testing.assert_allclose(
        info_nce(x, y, 1.5, valid, positives),
        info_nce(x[keep], y[keep], 1.5, positives=positives[keep][:, keep]),
        rtol=1e-6,
    )
    # Each of the 3 rows and 3 columns by the loop reference, with example 1 dropped.
    sim = np.array(
        x / jnp.linalg.norm(x, axis=-1, keepdims=True) @ (y / jnp.linalg.norm(y, axis=-1, keepdims=True)).T
    )
    sub = np.ix_([0, 2], [0, 2])
    expected = np_info_nce(sim[sub], math.exp(1.5), np.eye(2, dtype=bool))
    np.testing.assert_allclose(info_nce(x, y, 1.5, valid), expected, rtol=1e-5)
    assert_zero_with_finite_grad(lambda s: info_nce(x, y, s, jnp.zeros(3, bool)), jnp.float32(1.0))
    grad = jax.grad(info_nce, argnums=2)(x, y, jnp.float32(1.5), valid)
    assert np.isfinite(grad)


def test_info_nce_zero_embedding_is_finite():
    x = jnp.zeros((2, 2))
    loss, grads = jax.value_and_grad(info_nce, argnums=(0, 1, 2))(x, CY, jnp.float32(1.0))
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)  # all logits 0: uniform over 2
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_siglip_loss_hand_computed():
    # logit_scale = log 2, bias -1: logits [[1, 0.2], [-1, 0.6]]; -log_sigmoid(z l) = softplus(-z l).
    expected = (softplus(-1.0) + softplus(0.2) + softplus(-1.0) + softplus(-0.6)) / 2
    np.testing.assert_allclose(siglip_loss(CX, CY, math.log(2), -1.0), expected, rtol=1e-6)
    # Multi-positive: (0, 1) is also a positive.
    positives = jnp.array([[True, True], [False, True]])
    expected_multi = (softplus(-1.0) + softplus(-0.2) + softplus(-1.0) + softplus(-0.6)) / 2
    np.testing.assert_allclose(
        siglip_loss(CX, CY, math.log(2), -1.0, positives=positives), expected_multi, rtol=1e-6
    )
    grads = jax.grad(siglip_loss, argnums=(2, 3))(CX, CY, jnp.float32(math.log(2)), jnp.float32(-1.0))
    assert all(np.isfinite(g) and g != 0 for g in grads)


def test_siglip_loss_invalid_example_equals_sub_batch():
    x, y = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
    valid = jnp.array([False, True, True])
    keep = jnp.array([1, 2])
    np.testing.assert_allclose(
        siglip_loss(x, y, 2.0, -3.0, valid), siglip_loss(x[keep], y[keep], 2.0, -3.0), rtol=1e-6
    )
    sim = np.array(
        x / jnp.linalg.norm(x, axis=-1, keepdims=True) @ (y / jnp.linalg.norm(y, axis=-1, keepdims=True)).T
    )
    logits = math.exp(2.0) * sim[1:, 1:] - 3.0
    z = 2 * np.eye(2) - 1
    expected = np.log1p(np.exp(-z * logits)).sum() / 2
    np.testing.assert_allclose(siglip_loss(x, y, 2.0, -3.0, valid), expected, rtol=1e-5)
    none = jnp.zeros(3, bool)
    assert_zero_with_finite_grad(
        lambda s, b: siglip_loss(x, y, s, b, none), jnp.float32(1.0), jnp.float32(-1.0)
    )


def test_retrieval_hits():
    x = jnp.eye(3)
    y = jnp.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    # Cosines x_i · ŷ_j = ŷ_j[i], ŷ_1 = (0.994, 0.110, 0): rows [1, .994, 0], [0, .110, 0], [0, 0, 1].
    np.testing.assert_array_equal(retrieval_hits(x, y), [True, True, True])
    y_wrong = y.at[1].set(jnp.array([0.0, 0.0, -5.0]))  # row 1 becomes [0, 0, 0]: argmax column 0, a miss
    np.testing.assert_array_equal(retrieval_hits(x, y_wrong), [True, False, True])
    np.testing.assert_array_equal(retrieval_hits(x, y, jnp.array([False, True, True])), [False, True, True])
    # x_0 = e2: row 0 is [0, .110, 0], nearest y_1, a miss with diagonal positives ...
    x_far = x.at[0].set(jnp.array([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(retrieval_hits(x_far, y), [False, True, True])
    # ... a hit when equal labels make (0, 1) a positive ...
    positives = positives_from_labels(jnp.array([0, 0, 1]), jnp.array([0, 0, 1]))
    np.testing.assert_array_equal(retrieval_hits(x_far, y, positives=positives), [True, True, True])
    # ... and a hit when column 1 is invalid (row 0 becomes [0, -, 0]: argmax column 0); row 1 is False.
    np.testing.assert_array_equal(
        retrieval_hits(x_far, y, jnp.array([True, False, True])), [True, False, True]
    )


@pytest.mark.parametrize("loss_name", ["info_nce", "siglip_loss"])
def test_contrastive_sharded_over_8_devices_equals_one_device(loss_name):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 16, 8)).astype(np.float32)
    valid = np.arange(16) % 5 != 3
    labels = rng.integers(0, 4, 16)
    positives = labels[:, None] == labels[None, :]
    if loss_name == "info_nce":
        loss_fn = info_nce
    else:

        def loss_fn(x, y, logit_scale, valid=None, positives=None):
            return siglip_loss(x, y, logit_scale, -2.0, valid, positives)

    scale = np.float32(math.log(10))
    one_device = jax.devices()[0]
    for extra in [(), (valid, positives)]:
        single = jax.jit(loss_fn)(*jax.device_put((x, y, scale, *extra), one_device))
        sharded_args = jax.device_put((x, y, *extra), NamedSharding(mesh, P("data")))
        sharded = jax.jit(loss_fn)(sharded_args[0], sharded_args[1], scale, *sharded_args[2:])
        assert len(sharded_args[0].sharding.device_set) == 8
        np.testing.assert_allclose(sharded, single, rtol=1e-6)
