"""Adaptive task weighting for multitask training: small pure functions usable inside a jitted step.

Tasks are an ordered tuple of names; per-task losses are a vector `losses` [T] in that order, and
`static_weights` [T] are the configured task weights. The weighting state is a dict of jnp arrays, so it
can live in the train state and be checkpointed with Orbax. `method` is a Python string (static under jit):

  static       total = sum_t w_t L_t.
  uncertainty  Kendall et al. 2018, with learned s_t = log sigma_t^2 ("log_vars"):
               total = sum_t 0.5 * exp(-s_t) * w_t * L_t + 0.5 * s_t. For fixed L_t its optimum is
               s_t = log(w_t L_t), i.e. effective weight 0.5 / L_t: large-loss tasks are down-weighted.
               `update_state` takes one plain SGD step (lr) on s of that total.
  gradnorm     Chen et al. 2018: total = sum_t lambda_t L_t with lambda = state["weights"] held constant
               (stop_gradient); lambda starts at the static weights rescaled to sum T and is moved so that the
               weighted gradient norms lambda_t G_t on the shared parameters track mean(lambda G) * r_t^alpha,
               r_t = (L_t / L_t(0)) / mean(L / L(0)): tasks that train slower get larger weights.
               After each step lambda is clipped to >= MIN_WEIGHT and rescaled to sum T.
  pcgrad       Yu et al. 2020 gradient surgery: `pcgrad(task_grads, rng, static_weights)` gives the
               parameter gradient; `weighted_total` is sum_t w_t L_t, for logging only.
  dwa          Liu et al. 2019 dynamic weight average: total = sum_t lambda_t w_t L_t (lambda constant);
               losses are averaged over periods of `period` steps; once two periods are complete,
               lambda = T * softmax(r / temperature), r_t = Lbar_t(k-1) / Lbar_t(k-2); before that lambda = 1.

state["weights"] [T] holds the method's current weights (logged each step); `effective_weights` gives the
multiplier of each L_t in `weighted_total` (equal to state["weights"] except for dwa, where it is
lambda * w).

A train step computes the per-task loss vector, differentiates `weighted_total` (or, for pcgrad, applies
`pcgrad` to `per_task_gradients`), then calls `update_state` with the same losses; gradnorm also needs the
UNWEIGHTED per-task gradient norms on the shared parameters, from `task_gradient_norms` (one backward
pass per task; other methods may pass grad_norms=None):

  losses = per_task_loss_fn(params)                                   # [T]
  grads = jax.grad(lambda p: weighted_total(m, ws, per_task_loss_fn(p), w))(params)
  norms = task_gradient_norms(per_task_loss_fn, params, r"fusion/.*") if m == "gradnorm" else None
  ws = update_state(m, ws, losses, norms, w, lr=..., alpha=..., temperature=..., period=...)
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

METHODS = ("static", "uncertainty", "gradnorm", "pcgrad", "dwa")
MIN_WEIGHT = 1e-3  # gradnorm weights are clipped to at least this before renormalising
_EPS = 1e-12


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown task weighting method {method!r}; expected one of {METHODS}")


def init_state(method: str, static_weights) -> dict:
    """A fresh weighting state for `method`; every entry is a jnp array (Orbax-checkpointable).

    static/pcgrad: {"weights"}. uncertainty: {"weights", "log_vars"}. gradnorm: {"weights",
    "initial_losses", "initialized"}. dwa: {"weights", "history" [2, T] (mean losses of periods k-2, k-1),
    "loss_sum" [T], "count" (steps in the current period), "periods" (complete periods, capped at 2)}.
    """
    _check_method(method)
    w = jnp.asarray(static_weights, jnp.float32)
    num_tasks = w.shape[0]
    if method in ("static", "pcgrad"):
        return {"weights": w}
    if method == "uncertainty":
        log_vars = jnp.zeros_like(w)
        return {"weights": 0.5 * jnp.exp(-log_vars) * w, "log_vars": log_vars}
    if method == "gradnorm":
        return {
            "weights": w * num_tasks / w.sum(),
            "initial_losses": jnp.ones_like(w),
            "initialized": jnp.zeros((), bool),
        }
    return {
        "weights": jnp.ones_like(w),
        "history": jnp.ones((2, num_tasks), jnp.float32),
        "loss_sum": jnp.zeros_like(w),
        "count": jnp.zeros((), jnp.int32),
        "periods": jnp.zeros((), jnp.int32),
    }


def _uncertainty_total(log_vars, losses, static_weights):
    return jnp.sum(0.5 * jnp.exp(-log_vars) * static_weights * losses + 0.5 * log_vars)


def weighted_total(method: str, state: dict, losses: jax.Array, static_weights) -> jax.Array:
    """The scalar loss the model parameters are differentiated through (weighting state held constant)."""
    _check_method(method)
    w = jnp.asarray(static_weights, jnp.float32)
    state = jax.lax.stop_gradient(state)
    if method in ("static", "pcgrad"):
        return jnp.sum(w * losses)
    if method == "uncertainty":
        return _uncertainty_total(state["log_vars"], losses, w)
    if method == "gradnorm":
        return jnp.sum(state["weights"] * losses)
    return jnp.sum(state["weights"] * w * losses)


def effective_weights(method: str, state: dict, static_weights) -> jax.Array:
    """The multiplier of each L_t in `weighted_total` (uncertainty: 0.5 * exp(-s_t) * w_t)."""
    _check_method(method)
    if method == "dwa":
        return state["weights"] * jnp.asarray(static_weights, jnp.float32)
    return state["weights"]


def update_state(
    method: str,
    state: dict,
    losses: jax.Array,
    grad_norms: jax.Array | None,
    static_weights,
    *,
    lr: float = 0.025,
    alpha: float = 1.5,
    temperature: float = 2.0,
    period: int = 1,
) -> dict:
    """The weighting state after one train step with per-task `losses` [T] (call once per step).

    uncertainty: one SGD step of size `lr` on log_vars. gradnorm: needs `grad_norms` [T], the unweighted
    per-task gradient norms on the shared parameters; the first call records initial_losses; step size
    `lr`, restoring strength `alpha`. dwa: `period` steps per averaging period, softmax `temperature`.
    Losses are treated as constants (stop_gradient).
    """
    _check_method(method)
    w = jnp.asarray(static_weights, jnp.float32)
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    num_tasks = w.shape[0]
    if method in ("static", "pcgrad"):
        return {**state, "weights": w}
    if method == "uncertainty":
        grad = jax.grad(_uncertainty_total)(state["log_vars"], losses, w)
        log_vars = state["log_vars"] - lr * grad
        return {**state, "log_vars": log_vars, "weights": 0.5 * jnp.exp(-log_vars) * w}
    if method == "gradnorm":
        if grad_norms is None:
            raise ValueError("gradnorm needs grad_norms: the unweighted per-task gradient norms [T]")
        grad_norms = jax.lax.stop_gradient(jnp.asarray(grad_norms, jnp.float32))
        initial = jnp.where(state["initialized"], state["initial_losses"], losses)
        ratios = losses / jnp.maximum(initial, _EPS)
        relative = ratios / jnp.maximum(jnp.mean(ratios), _EPS)

        def gradnorm_loss(weights):
            weighted_norms = weights * grad_norms
            target = jax.lax.stop_gradient(jnp.mean(weighted_norms) * relative**alpha)
            return jnp.sum(jnp.abs(weighted_norms - target))

        weights = state["weights"] - lr * jax.grad(gradnorm_loss)(state["weights"])
        weights = jnp.maximum(weights, MIN_WEIGHT)
        weights = weights * num_tasks / weights.sum()
        return {
            **state,
            "weights": weights,
            "initial_losses": initial,
            "initialized": jnp.ones((), bool),
        }
    # dwa
    loss_sum = state["loss_sum"] + losses
    count = state["count"] + 1
    period_done = count >= period
    history = jnp.where(period_done, jnp.stack([state["history"][1], loss_sum / count]), state["history"])
    periods = jnp.where(period_done, jnp.minimum(state["periods"] + 1, 2), state["periods"])
    ratios = history[1] / jnp.maximum(history[0], _EPS)
    dwa_weights = num_tasks * jax.nn.softmax(ratios / temperature)
    return {
        "weights": jnp.where(periods >= 2, dwa_weights, jnp.ones_like(w)),
        "history": history,
        "loss_sum": jnp.where(period_done, jnp.zeros_like(loss_sum), loss_sum),
        "count": jnp.where(period_done, 0, count).astype(jnp.int32),
        "periods": periods.astype(jnp.int32),
    }


def _tree_dot(a, b) -> jax.Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, jnp.zeros((), jnp.float32))


def pcgrad(task_grads, rng: jax.Array, static_weights=None):
    """Yu et al. 2020 gradient surgery: the combined gradient sum_i g_i' of conflict-free task gradients.

    `task_grads` is a pytree whose leaves have a leading task axis T (e.g. `per_task_gradients`). Static
    weights scale each g_i before projection. For each task i, g_i' starts at g_i and, for each other task j
    in a random order (drawn from `rng`), if g_i' . g_j < 0 (dot over all leaves), g_i' -= (g_i' . g_j) /
    ||g_j||^2 g_j. Returns a pytree shaped like one task's gradient.
    """
    num_tasks = jax.tree.leaves(task_grads)[0].shape[0]
    if static_weights is not None:
        w = jnp.asarray(static_weights, jnp.float32)
        task_grads = jax.tree.map(
            lambda g: g * w.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), task_grads
        )
    sq_norms = jax.vmap(lambda g: _tree_dot(g, g))(task_grads)

    def project(i, key):
        order = jax.random.permutation(key, num_tasks)

        def body(k, g_i):
            j = order[k]
            g_j = jax.tree.map(lambda g: g[j], task_grads)
            dot = _tree_dot(g_i, g_j)
            coef = jnp.where((dot < 0) & (j != i), dot / jnp.maximum(sq_norms[j], _EPS), 0.0)
            return jax.tree.map(lambda x, y: x - (coef * y).astype(x.dtype), g_i, g_j)

        g_i = jax.tree.map(lambda g: g[i], task_grads)
        return jax.lax.fori_loop(0, num_tasks, body, g_i)

    projected = jax.vmap(project)(jnp.arange(num_tasks), jax.random.split(rng, num_tasks))
    return jax.tree.map(lambda g: g.sum(0), projected)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_path(path) -> str:
    """A jax key path as "fusion/layer_0/mlp/fc1/kernel"."""
    return "/".join(_key_name(k) for k in path)


def per_task_gradients(per_task_loss_fn: Callable, params, has_aux: bool = False):
    """Per-task gradients of `per_task_loss_fn(params) -> [T]` (or ([T], aux) with has_aux): params-shaped
    leaves with a leading T axis (and aux).

    One forward pass, then one backward pass per task through the same vjp, run one after another: unlike
    jax.jacrev (a vmap over the T cotangents), no backward intermediate is held T times at once.
    """
    out = jax.vjp(per_task_loss_fn, params, has_aux=has_aux)
    losses, vjp_fn = out[:2]
    grads = [
        vjp_fn(jax.nn.one_hot(t, losses.shape[0], dtype=losses.dtype))[0] for t in range(losses.shape[0])
    ]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return (stacked, out[2]) if has_aux else stacked


def task_gradient_norms(per_task_loss_fn: Callable, params, shared: str | Callable[[str], bool]) -> jax.Array:
    """Unweighted per-task gradient norms ||dL_t / dW|| [T] over the shared parameters W only.

    W are the params whose path (see `param_path`) fully matches the regex `shared`, or for which the
    predicate `shared(path)` is true; the other params are closed over as constants, so jax.jacrev only
    differentiates W (one backward pass per task).
    """
    matches = (lambda p: re.fullmatch(shared, p) is not None) if isinstance(shared, str) else shared
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in leaves_with_paths]
    selected = [i for i, (path, _) in enumerate(leaves_with_paths) if matches(param_path(path))]
    if not selected:
        paths = [param_path(path) for path, _ in leaves_with_paths]
        raise ValueError(f"no parameter path matches {shared!r}; paths are {paths}")

    def loss_of_shared(shared_leaves):
        full = list(leaves)
        for i, leaf in zip(selected, shared_leaves, strict=True):
            full[i] = leaf
        return per_task_loss_fn(jax.tree_util.tree_unflatten(treedef, full))

    jacobians = jax.jacrev(loss_of_shared)([leaves[i] for i in selected])
    sq = sum(jnp.sum(jnp.square(j.astype(jnp.float32)).reshape(j.shape[0], -1), axis=1) for j in jacobians)
    return jnp.sqrt(sq)
