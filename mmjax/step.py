"""The update step: the objective (tasks, weights, losses), the train state, one update jitted over the
mesh."""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax import losses, multitask, optim, parallel
from mmjax.data import datasets
from mmjax.data.spec import ALIGN, DataSet, align_label_keys
from mmjax.model import align_fields
from mmjax.port.pretrained import with_pretrained

ON_NONFINITE = ("stop", "skip")  # config.train.on_nonfinite: what the loop does after a NaN/Inf step


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    task_state: Any  # the task weighting's state (mmjax.multitask.init_state)
    rng: jax.Array  # base key; each step folds in its step number
    batch_stats: Any = dataclasses.field(default_factory=dict)  # BatchNorm running statistics (ResNet)
    ema_params: Any = dataclasses.field(
        default_factory=dict
    )  # optim.ema_decay > 0: the params' moving average

    def variables(self) -> dict:
        """The model variables that evaluation applies: the params (their moving average when kept), and
        batch_stats when the model has them."""
        params = self.ema_params or self.params
        return {"params": params} | ({"batch_stats": self.batch_stats} if self.batch_stats else {})


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a train step minimises: the tasks (sorted by name), their static weights, the task weighting."""

    tasks: tuple[str, ...]
    weights: tuple[float, ...]
    kinds: tuple[str, ...] = ()  # each task's objective_kind ("": picked from the labels' shape)
    method: str = "static"  # a mmjax.multitask.METHODS entry
    lr: float = 0.01
    alpha: float = 1.5
    temperature: float = 2.0
    period: int = 150
    shared: str = "(image|audio)/encoder/final_ln/.*"  # params whose per-task gradient norms are measured
    grad_norm_every: int = 0  # measure them on every n-th step (0: never); gradnorm measures every step
    align_loss: str = "info_nce"  # the `align` task's contrastive loss: info_nce | siglip
    align_positives: tuple[str, str] | None = None  # the label keys whose equality marks positives
    lr_rules: str = ""  # config.optim.lr_rules: the frozen params' gradients are never computed
    label_smoothing: float = 0.0  # config.train.label_smoothing, on the `classes` tasks
    ema_decay: float = 0.0  # config.optim.ema_decay: > 0 keeps a moving average of the params (evaluated)


def make_objective(config: ml_collections.ConfigDict, data: DataSet | None = None) -> Objective:
    """The objective of an experiment config (config.tasks, config.multitask, config.model.align) on the
    data set's tasks (`data`, else the config's data set)."""
    specs, align_labels = (data.tasks, data.align_labels) if data else datasets.task_specs(config)
    tasks = {task: float(config.tasks[task]) for task in specs}
    align = config.model.get("align", {})
    modalities = align_fields(align).get("align", ())
    if ALIGN in tasks and not modalities:
        raise ValueError("config.tasks.align > 0 needs config.model.align.modalities (e.g. 'image,audio')")
    if modalities and ALIGN not in tasks:
        raise ValueError(
            "config.model.align.modalities is set but config.tasks.align is 0: nothing trains it"
        )
    positives = align_label_keys(align, align_labels)
    on_nonfinite = config.train.get("on_nonfinite", "stop")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"config.train.on_nonfinite={on_nonfinite!r} is not one of {ON_NONFINITE}")
    mt = config.multitask
    if mt.method not in multitask.METHODS:
        raise ValueError(f"config.multitask.method={mt.method!r} is not one of {multitask.METHODS}")
    return Objective(
        tasks=tuple(tasks),
        weights=tuple(tasks.values()),
        kinds=tuple(objective_kind(specs[task]) for task in tasks),
        method=mt.method,
        lr=mt.lr,
        alpha=mt.alpha,
        temperature=mt.temperature,
        period=mt.period,
        shared=mt.shared,
        grad_norm_every=config.train.log_every if mt.grad_norms else 0,
        align_loss=align.get("loss", "info_nce"),
        align_positives=positives,
        lr_rules=config.optim.get("lr_rules", ""),
        label_smoothing=config.train.get("label_smoothing", 0.0),
        ema_decay=config.optim.get("ema_decay", 0.0),
    )


def objective_kind(task) -> str:
    """A task's kind for the objective: its spec kind, with the regression loss as `regression:<loss>`."""
    return f"regression:{task.loss}" if task.kind == "regression" else task.kind


def task_loss(
    kind: str,
    outputs: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    smoothing: float = 0.0,
) -> jax.Array:
    """One task's loss by its kind: cross-entropy per example (classes, -1 unlabelled; label `smoothing`) or
    per token (tokens, span: labels [B, L] or [B, 2], -1 ignored), sigmoid cross-entropy (multilabel, rows
    of -1 unlabelled), MSE or Huber (regression, NaN unlabelled). "" picks by the labels' shape (per token
    if [B, L])."""
    if kind in ("tokens", "span") or (not kind and labels.ndim == 2):
        return losses.token_cross_entropy(outputs, labels)
    if kind == "multilabel":
        return losses.multilabel_loss(outputs, labels, weights)
    if kind.startswith("regression"):
        loss_kind = kind.partition(":")[2] or "mse"
        return losses.regression_loss(outputs[..., 0], labels, loss_kind, weights=weights)
    labelled = labels >= 0
    weights = labelled if weights is None else weights & labelled
    return losses.softmax_cross_entropy(outputs, jnp.maximum(labels, 0), weights, smoothing)


def task_losses(outputs: dict, batch: dict, objective: Objective) -> jax.Array:
    """Per-task losses [T] in objective.tasks order (task_loss by each task's kind, or the contrastive loss
    for `align`). With modality heads, a task's loss is its fused head's plus each stream head's (over the
    examples that have that stream)."""
    values = []
    kinds = objective.kinds or ("",) * len(objective.tasks)
    for task, kind in zip(objective.tasks, kinds, strict=True):
        if task == ALIGN:
            values.append(align_loss(outputs[task], batch, objective))
            continue
        labels = batch[f"labels/{task}"]
        smoothing = objective.label_smoothing
        loss = task_loss(kind, outputs[task], labels, smoothing=smoothing)
        for m, logits in outputs.get("modality_heads", {}).get(task, {}).items():
            loss += task_loss(kind, logits, labels, outputs["present"][m], smoothing)
        values.append(loss)
    return jnp.stack(values)


def task_scalars(kind: str, outputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Training-batch scalars of one task: accuracy over labelled examples or tokens (classes, tokens,
    span), the mean absolute error (regression) or the share of right label decisions (multilabel)."""
    if kind.startswith("regression"):
        labelled = jnp.isfinite(labels)
        errors = jnp.where(labelled, jnp.abs(outputs[..., 0] - jnp.where(labelled, labels, 0.0)), 0.0)
        return {"mae": jnp.sum(errors) / jnp.maximum(jnp.sum(labelled), 1)}
    if kind == "multilabel":
        labelled = labels >= 0
        hits = ((outputs > 0) == (labels > 0.5)) & labelled
        return {"accuracy": jnp.sum(hits) / jnp.maximum(jnp.sum(labelled), 1)}
    hits = (jnp.argmax(outputs, -1) == labels) & (labels >= 0)
    return {"accuracy": jnp.sum(hits) / jnp.maximum(jnp.sum(labels >= 0), 1)}


def align_positives(batch: dict, objective: Objective) -> jax.Array | None:
    """[B, B] positives of the align task (equal labels), or None (each example with itself)."""
    if objective.align_positives is None:
        return None
    key_x, key_y = objective.align_positives
    return losses.positives_from_labels(batch[key_x], batch[key_y])


def align_loss(out: dict, batch: dict, objective: Objective) -> jax.Array:
    positives = align_positives(batch, objective)
    if objective.align_loss == "siglip":
        return losses.siglip_loss(out["x"], out["y"], out["scale"], out["bias"], out["valid"], positives)
    return losses.info_nce(out["x"], out["y"], out["scale"], out["valid"], positives)


def init_state(
    model, optimizer, objective: Objective, example_batch, seed: int, pretrained: dict | None = None
) -> TrainState:
    """A fresh state; `pretrained` ({modality: params, or variables with batch_stats}) replaces those
    encoders' random init."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init({"params": init_rng}, example_batch, train=False)
    pretrained = pretrained or {}
    with_stats = {m: tree for m, tree in pretrained.items() if "batch_stats" in tree}
    params = with_pretrained(
        variables["params"],
        {m: tree.get("params", tree) if m in with_stats else tree for m, tree in pretrained.items()},
    )
    batch_stats = with_pretrained(
        dict(variables.get("batch_stats", {})), {m: tree["batch_stats"] for m, tree in with_stats.items()}
    )
    step = jnp.zeros((), jnp.int32)
    task_state = multitask.init_state(objective.method, jnp.asarray(objective.weights, jnp.float32))
    return TrainState(
        step=step,
        params=params,
        opt_state=optimizer.init(params),
        task_state=task_state,
        rng=train_rng,
        batch_stats=batch_stats,
        ema_params=jax.tree.map(jnp.copy, params) if objective.ema_decay else {},  # own buffers: donated
    )


def train_step(state: TrainState, batch: dict, *, model, optimizer, objective: Objective):
    """One update on a global batch with the objective's task weighting; returns the new state and scalars."""
    rng = jax.random.fold_in(state.rng, state.step)
    weights = jnp.asarray(objective.weights, jnp.float32)
    method = objective.method

    def losses_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (outputs, _), updated = model.apply(
            variables, batch, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        per_task = task_losses(outputs, batch, objective)
        return per_task, (per_task, outputs, updated.get("batch_stats", {}))

    def shared_norms(params):
        return multitask.task_gradient_norms(lambda p: losses_fn(p)[0], params, objective.shared)

    frozen = optim.frozen_mask(objective.lr_rules, state.params)
    if method == "pcgrad":
        task_grads, (per_task, outputs, batch_stats) = multitask.per_task_gradients(
            losses_fn, state.params, has_aux=True
        )
        task_grads = optim.zero_frozen(task_grads, frozen)  # conflicts are measured on trainable params
        grads = multitask.pcgrad(task_grads, jax.random.fold_in(rng, 1), weights)
    else:

        def total_fn(params):
            per_task, aux = losses_fn(params)
            return multitask.weighted_total(method, state.task_state, per_task, weights), aux

        (_, (per_task, outputs, batch_stats)), grads = jax.value_and_grad(total_fn, has_aux=True)(
            state.params
        )
        grads = optim.zero_frozen(grads, frozen)
    num_tasks = len(objective.tasks)
    if method == "gradnorm":
        norms = shared_norms(state.params)
    elif objective.grad_norm_every:
        due = (state.step + 1) % objective.grad_norm_every == 0
        skipped = jnp.full((num_tasks,), jnp.nan, jnp.float32)
        norms = jax.lax.cond(due, shared_norms, lambda _: skipped, state.params)
    else:
        norms = None
    loss = multitask.weighted_total(method, state.task_state, per_task, weights)
    task_state = multitask.update_state(
        method,
        state.task_state,
        per_task,
        norms,
        weights,
        lr=objective.lr,
        alpha=objective.alpha,
        temperature=objective.temperature,
        period=objective.period,
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scalars = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates)}
    scalars["param_norm"] = optax.tree.norm(params)
    task_weights = multitask.effective_weights(method, state.task_state, weights)
    for i, task in enumerate(objective.tasks):
        scalars[f"{task}/loss"] = per_task[i]
        scalars[f"{task}/weight"] = task_weights[i]
        if norms is not None:
            scalars[f"{task}/grad_norm"] = norms[i]
        if task == ALIGN:
            out = outputs[task]
            hits = losses.retrieval_hits(out["x"], out["y"], out["valid"], align_positives(batch, objective))
            scalars[f"{task}/accuracy"] = jnp.sum(hits) / jnp.maximum(jnp.sum(out["valid"]), 1)
        else:
            kind = objective.kinds[i] if objective.kinds else ""
            for name, value in task_scalars(kind, outputs[task], batch[f"labels/{task}"]).items():
                scalars[f"{task}/{name}"] = value
    # A non-finite loss or gradient leaves the state as it was (the host then stops or skips, by config).
    finite = jnp.isfinite(loss) & jnp.isfinite(scalars["grad_norm"])
    scalars["skipped"] = (~finite).astype(jnp.float32)
    kept = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state, task_state, batch_stats),
        (state.params, state.opt_state, state.task_state, state.batch_stats),
    )
    new_state = state.replace(
        step=state.step + 1,
        params=kept[0],
        opt_state=kept[1],
        task_state=kept[2],
        batch_stats=kept[3],
        ema_params=moving_average(state.ema_params, kept[0], state.step, objective.ema_decay),
    )
    return new_state, scalars


def moving_average(average, params, step: jax.Array, decay: float):
    """The params' exponential moving average after one more step (`average` unchanged when decay is 0).
    The decay warms up as min(decay, (1 + step) / (10 + step)), so early averages do not hold on to the
    random init."""
    if not decay:
        return average
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return optax.incremental_update(params, average, 1.0 - rate)


def make_train_step(model, optimizer, objective: Objective, mesh, state_shardings=None):
    """train_step jitted over the mesh: batch split over `data` and `fsdp`, state laid out by
    `state_shardings` (a tree from parallel.tree_shardings; default replicated) and donated."""
    replicated = parallel.replicated(mesh)
    state_shardings = replicated if state_shardings is None else state_shardings
    return jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, objective=objective),
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
