"""Adaptive task weighting against hand-computed values and constructed two-task problems."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import multitask as mt

RNG = jax.random.PRNGKey(0)


def test_static_total_is_weighted_sum():
    w, losses = jnp.array([2.0, 0.5, 1.0]), jnp.array([1.0, 4.0, 3.0])
    state = mt.init_state("static", w)
    assert float(mt.weighted_total("static", state, losses, w)) == 2.0 + 2.0 + 3.0
    np.testing.assert_array_equal(mt.update_state("static", state, losses, None, w)["weights"], w)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown task weighting method"):
        mt.init_state("mgda", jnp.ones(2))


def test_pcgrad_conflicting_gradients_hand_computed():
    grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
    # g1 . g2 = -1: g1' = g1 - (-1 / 2) g2 = [0.5, 0.5]; g2' = g2 - (-1 / 1) g1 = [0, 1].
    combined = mt.pcgrad(grads, RNG)
    np.testing.assert_allclose(combined, [0.5, 1.5], atol=1e-6)
    g1_projected = combined - jnp.array([0.0, 1.0])  # minus g2'
    np.testing.assert_allclose(jnp.dot(g1_projected, grads[1]), 0.0, atol=1e-6)
    # With w2 = 0, g2 vanishes and nothing conflicts: g1 passes unchanged.
    np.testing.assert_allclose(mt.pcgrad(grads, RNG, static_weights=[1.0, 0.0]), [1.0, 0.0], atol=1e-6)


def test_pcgrad_static_weights_scale_before_projection():
    grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
    # 2 g1 = [2, 0]; g1' = [2, 0] - (-2 / 2) [-1, 1] = [1, 1]; g2' = [-1, 1] - (-2 / 4) [2, 0] = [0, 1].
    np.testing.assert_allclose(mt.pcgrad(grads, RNG, static_weights=[2.0, 1.0]), [1.0, 2.0], atol=1e-6)


def test_pcgrad_leaves_agreeing_gradients_unchanged():
    grads = jnp.array([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 3.0, 1.0]])
    np.testing.assert_allclose(mt.pcgrad(grads, RNG), grads.sum(0), atol=1e-6)


def test_pcgrad_dot_over_all_leaves_under_jit():
    # Leaf "b" alone agrees (dot 1) but the dot over both leaves is -2 + 1 = -1: a conflict.
    grads = {"a": jnp.array([[1.0], [-2.0]]), "b": jnp.array([[0.0, 1.0], [1.0, 1.0]])}
    # g1 = (1, 0, 1), g2 = (-2, 1, 1); g1.g2 = -1, |g2|^2 = 6, |g1|^2 = 2.
    # g1' = g1 + g2 / 6 = (2/3, 1/6, 7/6); g2' = g2 + g1 / 2 = (-3/2, 1, 3/2).
    combined = jax.jit(mt.pcgrad)(grads, RNG)
    np.testing.assert_allclose(combined["a"], [2 / 3 - 1.5], atol=1e-6)
    np.testing.assert_allclose(combined["b"], [1 / 6 + 1, 7 / 6 + 1.5], atol=1e-6)
    g1_projected = np.array([2 / 3, 1 / 6, 7 / 6])
    np.testing.assert_allclose(g1_projected @ np.array([-2.0, 1.0, 1.0]), 0.0, atol=1e-12)


def test_pcgrad_is_symmetric_in_random_order_for_two_tasks():
    grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
    for seed in range(3):
        np.testing.assert_allclose(mt.pcgrad(grads, jax.random.PRNGKey(seed)), [0.5, 1.5], atol=1e-6)


def test_uncertainty_total_hand_computed():
    w, losses = jnp.array([1.0, 2.0]), jnp.array([4.0, 0.25])
    state = {**mt.init_state("uncertainty", w), "log_vars": jnp.array([1.0, -1.0])}
    expected = 0.5 * math.exp(-1) * 4.0 + 0.5 + 0.5 * math.exp(1) * 2.0 * 0.25 - 0.5
    np.testing.assert_allclose(mt.weighted_total("uncertainty", state, losses, w), expected, rtol=1e-6)


def test_uncertainty_moves_log_vars_towards_log_weighted_loss():
    w, losses = jnp.ones(2), jnp.array([4.0, 0.25])
    state = mt.init_state("uncertainty", w)
    np.testing.assert_allclose(state["weights"], [0.5, 0.5])
    step = jax.jit(lambda s: mt.update_state("uncertainty", s, losses, None, w, lr=0.2))
    first = step(state)
    assert first["log_vars"][0] > 0 > first["log_vars"][1]
    for _ in range(300):
        state = step(state)
    np.testing.assert_allclose(state["log_vars"], np.log([4.0, 0.25]), atol=1e-3)
    # Effective weights 0.5 / L_t: the large-loss task now counts less than the small-loss one.
    np.testing.assert_allclose(state["weights"], [0.125, 2.0], rtol=1e-3)
    assert state["weights"][0] < state["weights"][1]


def test_gradnorm_initial_weights_and_total():
    w = jnp.array([1.0, 3.0])
    state = mt.init_state("gradnorm", w)
    np.testing.assert_allclose(state["weights"], [0.5, 1.5])
    assert not state["initialized"]
    np.testing.assert_allclose(mt.weighted_total("gradnorm", state, jnp.array([2.0, 1.0]), w), 2.5)


def test_gradnorm_downweights_task_with_larger_gradients():
    w, losses, norms = jnp.ones(2), jnp.array([1.0, 1.0]), jnp.array([10.0, 1.0])
    state = mt.init_state("gradnorm", w)
    step = jax.jit(lambda s: mt.update_state("gradnorm", s, losses, norms, w, lr=0.001))
    for _ in range(300):
        state = step(state)
    assert state["initialized"]
    np.testing.assert_allclose(state["initial_losses"], losses)
    assert state["weights"][0] < state["weights"][1]
    np.testing.assert_allclose(state["weights"].sum(), 2.0, rtol=1e-6)
    # Balanced where 10 w1 = w2 and w1 + w2 = 2, up to the sign-gradient step lr * G1 = 0.01.
    np.testing.assert_allclose(state["weights"], [2 / 11, 20 / 11], atol=0.02)


def test_gradnorm_upweights_task_that_trains_slower():
    w, norms = jnp.ones(2), jnp.ones(2)
    state = mt.update_state("gradnorm", mt.init_state("gradnorm", w), jnp.array([2.0, 2.0]), norms, w)
    np.testing.assert_allclose(state["weights"], [1.0, 1.0])  # ratios are all 1 at the first step
    losses = jnp.array([2.0, 1.0])  # task 1 has not improved, task 2 halved
    for _ in range(20):
        state = mt.update_state("gradnorm", state, losses, norms, w, lr=0.01, alpha=1.5)
    np.testing.assert_allclose(state["initial_losses"], [2.0, 2.0])
    assert state["weights"][0] > state["weights"][1]
    np.testing.assert_allclose(state["weights"].sum(), 2.0, rtol=1e-6)


def test_gradnorm_one_step_hand_computed():
    w = jnp.ones(2)
    state = {**mt.init_state("gradnorm", w), "initialized": jnp.array(True)}
    state["initial_losses"] = jnp.array([1.0, 1.0])
    # r = (1, 0.5) / 0.75 = (4/3, 2/3); g = (1, 1), mean 1; targets (4/3)^1.5 > 1 > (2/3)^1.5.
    # d/dw sum |w G - target| = sign(w G - target) * G = (-1, +1) -> w = (1.1, 0.9), already sum 2.
    new = mt.update_state("gradnorm", state, jnp.array([1.0, 0.5]), jnp.ones(2), w, lr=0.1, alpha=1.5)
    np.testing.assert_allclose(new["weights"], [1.1, 0.9], rtol=1e-6)


def test_gradnorm_requires_grad_norms():
    with pytest.raises(ValueError, match="grad_norms"):
        mt.update_state("gradnorm", mt.init_state("gradnorm", jnp.ones(2)), jnp.ones(2), None, jnp.ones(2))


def test_dwa_weights_after_two_periods():
    w, period = jnp.array([1.0, 2.0]), 3
    state = mt.init_state("dwa", w)
    step = jax.jit(
        lambda s, losses: mt.update_state("dwa", s, losses, None, w, temperature=2.0, period=period)
    )
    # Period 1: both tasks at loss 1 (means of [0.5, 1, 1.5] and [1, 1, 1]); period 2: task 2 halves.
    for losses in ([0.5, 1.0], [1.0, 1.0], [1.5, 1.0], [1.0, 0.5], [1.0, 0.5]):
        state = step(state, jnp.array(losses))
        np.testing.assert_allclose(state["weights"], [1.0, 1.0])  # fewer than two complete periods
    state = step(state, jnp.array([1.0, 0.5]))
    # r = (1, 0.5); weights = 2 softmax(r / 2) -> w1 = 2 / (1 + e^(-0.25)).
    w1 = 2 / (1 + math.exp(-0.25))
    np.testing.assert_allclose(state["weights"], [w1, 2 - w1], rtol=1e-6)
    assert state["weights"][0] > state["weights"][1]
    np.testing.assert_allclose(state["weights"].sum(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(state["history"], [[1.0, 1.0], [1.0, 0.5]], rtol=1e-6)
    assert int(state["count"]) == 0 and int(state["periods"]) == 2
    total = mt.weighted_total("dwa", state, jnp.array([1.0, 1.0]), w)
    np.testing.assert_allclose(total, w1 * 1.0 + (2 - w1) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(mt.effective_weights("dwa", state, w), [w1, 2 * (2 - w1)], rtol=1e-6)


@pytest.mark.parametrize("method", mt.METHODS)
def test_every_method_jits_and_keeps_state_structure(method):
    w = jnp.array([1.0, 0.5])
    state = mt.init_state(method, w)

    @jax.jit
    def step(state, losses, norms):
        total = mt.weighted_total(method, state, losses, w)
        return mt.update_state(method, state, losses, norms, w, period=1), total

    new_state, total = step(state, jnp.array([1.0, 2.0]), jnp.array([1.0, 3.0]))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert old.shape == new.shape and old.dtype == new.dtype
    assert np.isfinite(total) and new_state["weights"].shape == (2,)


def test_weighted_total_holds_weighting_state_constant():
    w = jnp.ones(2)
    state = {**mt.init_state("uncertainty", w), "log_vars": jnp.array([0.3, -0.2])}
    grad = jax.grad(lambda s: mt.weighted_total("uncertainty", s, jnp.array([1.0, 2.0]), w))(state)
    np.testing.assert_array_equal(grad["log_vars"], 0.0)
    grad_losses = jax.grad(lambda losses: mt.weighted_total("uncertainty", state, losses, w))(jnp.ones(2))
    np.testing.assert_allclose(grad_losses, 0.5 * np.exp([-0.3, 0.2]), rtol=1e-6)


def _linear_model():
    # Two heads on a shared linear layer: h = x @ shared_kernel; L_t = sum(h * head_t) + head bias.
    params = {
        "encoder": {"kernel": jnp.array([[1.0, 2.0], [3.0, -1.0]])},
        "heads": {"a": jnp.array([1.0, 0.0]), "b": jnp.array([2.0, 2.0])},
    }
    x = jnp.array([1.0, 1.0])

    def per_task_loss(p):
        h = x @ p["encoder"]["kernel"]
        return jnp.stack([h @ p["heads"]["a"], h @ p["heads"]["b"]])

    return params, per_task_loss


def test_task_gradient_norms_hand_computed_on_shared_params_only():
    params, per_task_loss = _linear_model()
    # dL_t/dK = outer(x, head_t): ||outer(x, a)|| = ||x|| ||a|| = sqrt(2) * 1, sqrt(2) * sqrt(8) = 4.
    norms = mt.task_gradient_norms(per_task_loss, params, r"encoder/.*")
    np.testing.assert_allclose(norms, [math.sqrt(2), 4.0], rtol=1e-6)
    by_predicate = jax.jit(lambda p: mt.task_gradient_norms(per_task_loss, p, lambda path: "kernel" in path))
    np.testing.assert_allclose(by_predicate(params), [math.sqrt(2), 4.0], rtol=1e-6)
    # Heads only: dL_a/d(a) = h = (4, 1), dL_a/d(b) = 0 -> both norms sqrt(17).
    np.testing.assert_allclose(
        mt.task_gradient_norms(per_task_loss, params, r"heads/.*"), [math.sqrt(17)] * 2, rtol=1e-6
    )
    with pytest.raises(ValueError, match="no parameter path matches"):
        mt.task_gradient_norms(per_task_loss, params, r"fusion/.*")


def test_per_task_gradients_feed_pcgrad():
    params, per_task_loss = _linear_model()
    grads = mt.per_task_gradients(per_task_loss, params)
    assert grads["encoder"]["kernel"].shape == (2, 2, 2)
    np.testing.assert_allclose(grads["encoder"]["kernel"][1], np.outer([1.0, 1.0], [2.0, 2.0]))
    combined = mt.pcgrad(grads, RNG)
    assert jax.tree.structure(combined) == jax.tree.structure(params)
    # The two tasks' full gradients agree (dot = 1*2*2 + 0 + ...) > 0, so PCGrad is the plain sum.
    plain = jax.grad(lambda p: per_task_loss(p).sum())(params)
    for a, b in zip(jax.tree.leaves(combined), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_param_path():
    params = {"fusion": {"layer_0": {"mlp": {"fc1": {"kernel": jnp.zeros(1)}}}}}
    ((path, _),) = jax.tree_util.tree_flatten_with_path(params)[0]
    assert mt.param_path(path) == "fusion/layer_0/mlp/fc1/kernel"
