"""Pure per-task losses."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of logits [B, K] against int labels [B], weighted by `weights` [B].

    The weighted mean sum(w * nll) / sum(w): with 0/1 weights, the mean over examples with weight > 0.
    Returns 0 (no NaN) when every weight is 0. Computed in float32.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = jnp.ones_like(nll) if weights is None else weights.astype(jnp.float32)
    total = weights.sum()
    return jnp.where(total > 0, (weights * nll).sum() / jnp.where(total > 0, total, 1.0), 0.0)


def multitask_loss(
    outputs: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    task_weights: Mapping[str, float],
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum over tasks of task_weight * softmax_cross_entropy(outputs[task], batch["labels/<task>"]).

    Tasks with weight 0 are skipped. Returns (total, {task: unweighted loss}).
    """
    total = jnp.zeros((), jnp.float32)
    per_task = {}
    for task, task_weight in task_weights.items():
        if task_weight == 0:
            continue
        if task not in outputs:
            raise ValueError(f"task_weights has task {task!r} but the model outputs only {sorted(outputs)}")
        if f"labels/{task}" not in batch:
            raise ValueError(f"batch has no key 'labels/{task}' for task {task!r}")
        per_task[task] = softmax_cross_entropy(outputs[task], batch[f"labels/{task}"], weights)
        total = total + task_weight * per_task[task]
    return total, per_task
