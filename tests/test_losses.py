"""Losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import multitask_loss, softmax_cross_entropy

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


def test_cross_entropy_all_weights_zero_is_zero_with_finite_grad():
    zeros = jnp.zeros(2)
    assert softmax_cross_entropy(LOGITS, LABELS, zeros) == 0.0
    grad = jax.grad(lambda x: softmax_cross_entropy(x, LABELS, zeros))(LOGITS)
    np.testing.assert_array_equal(grad, 0.0)


def test_cross_entropy_is_float32_for_bfloat16_logits():
    loss = softmax_cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS)
    assert loss.dtype == jnp.float32


def test_multitask_loss_weights_and_skips_tasks():
    outputs = {"a": LOGITS, "b": LOGITS[:, ::-1], "c": LOGITS}
    batch = {"labels/a": LABELS, "labels/b": jnp.array([2, 2]), "text": jnp.zeros((2, 3))}  # no labels/c
    total, per_task = multitask_loss(outputs, batch, {"a": 1.0, "b": 0.5, "c": 0.0})
    assert set(per_task) == {"a", "b"}
    loss_b = (TAIL + 2.0 + TAIL) / 2  # reversed rows: label 2 is the max (first row) and the min (second row)
    np.testing.assert_allclose(per_task["a"], sum(NLL) / 2, rtol=1e-6)
    np.testing.assert_allclose(per_task["b"], loss_b, rtol=1e-6)
    np.testing.assert_allclose(total, sum(NLL) / 2 + 0.5 * loss_b, rtol=1e-6)
    total_w, _ = multitask_loss(outputs, batch, {"a": 1.0}, weights=jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(total_w, NLL[1], rtol=1e-6)


def test_multitask_loss_missing_labels_or_outputs():
    with pytest.raises(ValueError, match="labels/a"):
        multitask_loss({"a": LOGITS}, {}, {"a": 1.0})
    with pytest.raises(ValueError, match="'b'"):
        multitask_loss({"a": LOGITS}, {"labels/b": LABELS}, {"b": 1.0})
