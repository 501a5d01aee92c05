"""Train a multimodal model, data-parallel over every device, resuming from the workdir's last checkpoint.

python -m mmjax.train --config experiments/NAME.py[:arg,...] --workdir DIR [--config.key=value ...]
"""

import argparse
import contextlib
import dataclasses
import functools
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mmjax import checkpoint, evaluate, losses, metrics, multitask, optim, parallel
from mmjax.config import load_config
from mmjax.data import datasets, pipeline
from mmjax.data.augment import augment_settings, make_augment
from mmjax.data.spec import ALIGN, DataSet, align_label_keys
from mmjax.model import align_fields, build_model, dummy_batch, pretrained_params
from mmjax.nn import lora
from mmjax.port.pretrained import with_pretrained


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


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the tasks."""


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


def check_config(config: ml_collections.ConfigDict) -> None:
    """Cross-field rules no single builder sees, checked before any data loading or compilation."""
    for task, weight in config.tasks.items():
        if weight < 0:
            raise ValueError(f"config.tasks.{task}={weight} is negative (0 turns the task off)")
    metric_task = config.train.best_metric.split("/")[0]
    if config.train.best_metric and config.tasks.get(metric_task, 0) <= 0:
        raise ValueError(
            f"config.train.best_metric={config.train.best_metric!r} needs config.tasks.{metric_task} > 0"
        )
    for name, value in (
        ("train.label_smoothing", config.train.get("label_smoothing", 0.0)),
        ("optim.ema_decay", config.optim.get("ema_decay", 0.0)),
    ):
        if not 0 <= value < 1:
            raise ValueError(f"config.{name}={value} must be in [0, 1) (0: off)")
    if "audio" not in config.model:
        return
    frames, model_frames = config.data.audio_frames, config.model.audio.frames
    patch = config.model.audio.patch_time
    if frames > model_frames or frames % patch:
        raise ValueError(
            f"config.data.audio_frames={frames} must be a multiple of config.model.audio.patch_time={patch} "
            f"and at most config.model.audio.frames={model_frames} (the encoder's position table)"
        )


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


def _mean_scalars(records: list[dict]) -> dict[str, float]:
    """The mean of each scalar over the window's applied steps (all steps if none was applied); per-task grad
    norms are NaN on steps that do not measure them."""
    fetched = jax.device_get(records)
    fetched = [r for r in fetched if not r["skipped"]] or fetched
    means = {}
    for key in fetched[0]:
        values = np.asarray([r[key] for r in fetched], np.float64)
        if not key.endswith("/grad_norm"):
            means[key] = float(np.mean(values))
        elif not np.isnan(values).all():
            means[key] = float(np.nanmean(values))
    return means


ON_NONFINITE = ("stop", "skip")


def check_finite(
    records: list[dict], first_step: int, on_nonfinite: str = "stop", batches=(), workdir=None
) -> int:
    """Handles a logging window's steps whose loss or gradient was NaN/Inf (their updates were not applied).

    "stop": raise NonFiniteLossError naming the first bad step and its tasks, after saving that step's host
    batch (if `batches` holds the window's batches) to workdir/nonfinite_batch_step<N>.npz. "skip": print
    one warning per bad step and return how many there were.
    """
    bad = []
    for offset, record in enumerate(records):
        if record["skipped"]:
            tasks = sorted(
                k.removesuffix("/loss")
                for k, v in record.items()
                if k.endswith("/loss") and not np.isfinite(v)
            )
            bad.append((first_step + offset + 1, offset, record["loss"], tasks))
    for step, offset, loss, tasks in bad:
        culprits = ", ".join(tasks) or "none; the gradient or the total overflowed"
        what = f"loss {loss} at step {step} (tasks with a non-finite loss: {culprits})"
        if on_nonfinite == "skip":
            print(f"mmjax: skipped the update of step {step}: {what}")
            continue
        saved = ""
        if batches and workdir is not None:
            path = pathlib.Path(workdir) / f"nonfinite_batch_step{step}.npz"
            np.savez(path, **flatten_batch(batches[offset]))
            saved = f"; its batch is saved in {path}"
        raise NonFiniteLossError(
            f"{what}; stopping, the update was not applied{saved}. The last checkpoint is intact."
        )
    return len(bad)


def flatten_batch(batch: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested batch as {"present/text": array, ...} for np.savez."""
    flat = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            flat.update(flatten_batch(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


class Preempted(SystemExit):
    """SIGTERM arrived: the run logged its metrics and saved a checkpoint of its last step, then exits 143."""


@contextlib.contextmanager
def sigterm_flag():
    """Yields an Event that SIGTERM sets while the context is open. Off the main thread (where Python cannot
    install signal handlers) SIGTERM keeps its handler and the Event stays clear."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    data: DataSet | None = None,
    print_sharding: bool = False,
) -> dict[str, float]:
    """Train (or resume) in `workdir` on `data` (default: the config's data set, config.data.dataset);
    returns the last validation metrics. On SIGTERM it logs, saves a checkpoint of the current step and
    raises Preempted (exit status 143); rerunning resumes there. `print_sharding`: print how the train
    state would be laid out on the mesh (each leaf's shape, spec and bytes per device) and return {}
    before allocating it."""
    check_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_lead = jax.process_index() == 0

    # Mesh.
    mesh = parallel.make_mesh(spec=parallel.mesh_spec(config))
    parallel.check_batch_size(config.data.batch_size, mesh)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")

    # Data.
    data = data or datasets.from_config(config)
    if not config.train.best_metric:  # the main metric of the data set's primary task
        primary = data.primary or next(iter(data.tasks))
        config.train.best_metric = f"{primary}/{data.tasks[primary].main_metric}"
    if is_lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    sources = {split: data.load(split) for split in ("train", "validation")}
    for split, source in sources.items():
        if len(source) < (config.data.batch_size if split == "train" else 1):
            raise ValueError(
                f"the {split} split of the {data.name} data set has {len(source)} examples"
                + (f", fewer than data.batch_size={config.data.batch_size}" if split == "train" else "")
            )
    preprocess = data.preprocess
    waveform = datasets.audio_frontend(config) == "waveform"
    augment = make_augment(augment_settings(config), data.streams, waveform)
    train_iter = pipeline.train_iterator(
        sources["train"],
        batch_size=config.data.batch_size,
        seed=config.seed,
        preprocess_fn=preprocess,
        augment_fn=augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.data.workers,
        shards=config.data.shards,
        **data.iterator_args,
    )
    steps_per_epoch = pipeline.steps_per_epoch(sources["train"], config.data.batch_size)
    total_steps = config.train.steps or int(round(config.train.epochs * steps_per_epoch))

    # Model and optimizer.
    model = build_model(config.model, data.head_sizes(), data.streams, data.text_vocab_size)
    optimizer = optim.make_optimizer(config.optim, total_steps)
    schedule = optim.learning_rate_schedule(config.optim, total_steps)
    example = dummy_batch(config.model, data.head_sizes(), streams=data.streams)

    # State: planned with eval_shape and laid out on the mesh by config.parallel (nothing is materialised
    # replicated first), created there, or restored onto it from the latest checkpoint.
    objective = make_objective(config, data)
    make_state = functools.partial(init_state, model, optimizer, objective, example, config.seed)
    planned = jax.eval_shape(make_state)  # the same with pretrained params
    shardings = parallel.tree_shardings(planned, mesh, config)
    abstract_state = parallel.with_sharding(planned, shardings)
    if print_sharding:
        print(parallel.sharding_table(planned, shardings, mesh))
        return {}
    manager = checkpoint.make_manager(
        workdir / "checkpoints",
        keep=config.train.keep,
        keep_best=config.train.keep_best,
        best_metric=config.train.best_metric,
    )
    latest = manager.latest_step()
    if latest is None:
        state = jax.jit(make_state, out_shardings=shardings)(pretrained_params(config.model, data.streams))
    else:
        state = checkpoint.restore(manager, latest, abstract_state, train_iter)
        print(f"mmjax: resumed from the checkpoint of step {latest} in {workdir}")
    start_step = int(state.step)
    peft = config.model.get("peft", {})
    if peft.get("lora") or peft.get("adapters"):
        lora.check_targets(abstract_state.params, peft["lora"], peft["adapters"])
    trainable, total = optim.trainable_count(config.optim, abstract_state.params)
    print(
        f"mmjax: {trainable:,} trainable / {total:,} parameters ({trainable / total:.1%}), "
        f"{mesh.size} devices (mesh {parallel.describe(mesh)}), steps {start_step}->{total_steps}"
    )

    # Step.
    step_fn = make_train_step(model, optimizer, objective, mesh, shardings)
    variable_shardings = parallel.tree_shardings(abstract_state.variables(), mesh, config)
    eval_fn = evaluate.make_eval_step(model, mesh, data, objective.align_positives, variable_shardings)

    def validate(variables) -> dict[str, float]:
        batches = evaluate.split_batches(config, sources["validation"], preprocess)
        results = evaluate.predict(variables, batches, eval_fn, mesh, config.train.eval_max_batches)
        return data.summarize("validation", results)

    # Loop.
    writer = metrics.MetricWriter(workdir, enabled=is_lead)
    bar = tqdm.tqdm(
        total=total_steps, initial=start_step, disable=not is_lead, desc="train", unit="step", mininterval=5
    )
    pending, window_batches, window_start, window_time = [], [], start_step, time.perf_counter()
    on_nonfinite = config.train.get("on_nonfinite", "stop")
    skipped = skipped_so_far(workdir, start_step)
    val_metrics: dict[str, float] = {}
    history = validation_history(workdir, config.train.best_metric, start_step)
    patience, min_delta = config.train.early_stop_patience, config.train.early_stop_min_delta
    with sigterm_flag() as sigterm:
        try:
            for step in range(start_step + 1, total_steps + 1):
                if patience and evaluations_since_best(history, min_delta) >= patience:
                    print(
                        f"mmjax: early stop after step {step - 1}: {patience} evaluations without a better "
                        f"{config.train.best_metric} than {max(history):.4f}"
                    )
                    break
                batch = next(train_iter)
                state, scalars = step_fn(state, parallel.to_global(batch, mesh))
                pending.append(scalars)
                if on_nonfinite == "stop":
                    window_batches.append(batch)  # saved for debugging if its step goes bad
                bar.update(1)
                if step % config.train.log_every == 0 or step == total_steps or sigterm.is_set():
                    pending = jax.device_get(pending)
                    skipped += check_finite(pending, window_start, on_nonfinite, window_batches, workdir)
                    logged = _mean_scalars(pending) | {"skipped_steps": skipped}
                    elapsed = time.perf_counter() - window_time
                    logged["examples_per_sec"] = len(pending) * config.data.batch_size / elapsed
                    logged["learning_rate"] = float(schedule(step - 1))
                    writer.write(step, logged)
                    bar.set_postfix(loss=f"{logged['loss']:.3f}")
                    pending, window_batches, window_start, window_time = [], [], step, time.perf_counter()
                is_eval = step % config.train.eval_every == 0 or step == total_steps
                if is_eval:
                    val_metrics = validate(state.variables())
                    writer.write(step, {f"val/{k}": v for k, v in val_metrics.items()})
                    history.append(val_metrics[config.train.best_metric])
                    window_time = time.perf_counter()  # evaluation time is not training throughput
                if is_eval or step % config.train.checkpoint_every == 0 or sigterm.is_set():
                    checkpoint.save(manager, step, state, train_iter, val_metrics if is_eval else None)
                if sigterm.is_set() and step < total_steps:
                    print(
                        f"mmjax: SIGTERM: saved the checkpoint of step {step} in {workdir}; rerun to resume"
                    )
                    raise Preempted(128 + signal.SIGTERM)
        finally:
            manager.wait_until_finished()
            bar.close()
            writer.close()
    best = manager.best_step()
    if best is None:
        return val_metrics
    if best != int(state.step) or not val_metrics:  # the best is an earlier checkpoint: evaluate it
        variables = checkpoint.restore_variables(
            manager, best, abstract_state.variables(), checkpoint.params_key(config)
        )
        val_metrics = validate(variables)
    print(f"validation of the best checkpoint (step {best} of {int(state.step)}):")
    print(evaluate.format_table(val_metrics, data.tasks))
    return val_metrics


def skipped_so_far(workdir: pathlib.Path, up_to_step: int) -> int:
    """The `skipped_steps` count logged last at or before `up_to_step` (0 for a new run)."""
    if not (workdir / "metrics.jsonl").is_file():
        return 0
    logged = [r for r in metrics.read_metrics(workdir) if "skipped_steps" in r and r["step"] <= up_to_step]
    return int(logged[-1]["skipped_steps"]) if logged else 0


def validation_history(workdir: pathlib.Path, metric: str, up_to_step: int) -> list[float]:
    """The logged validation values of `metric` up to `up_to_step` (a resumed run continues its history)."""
    if not (workdir / "metrics.jsonl").is_file():
        return []
    per_step = {r["step"]: r[f"val/{metric}"] for r in metrics.read_metrics(workdir) if f"val/{metric}" in r}
    return [value for step, value in sorted(per_step.items()) if step <= up_to_step]


def evaluations_since_best(history: list[float], min_delta: float = 0.0) -> int:
    """Evaluations since the last that beat all earlier ones by more than `min_delta` (higher is better)."""
    best, since = -np.inf, 0
    for value in history:
        best, since = (value, 0) if value > best + min_delta else (best, since + 1)
    return since


def init_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a multi-process run (jax.distributed; CPU collectives over gloo). coordinator: "" for a single
    process, "auto" to detect the cluster (Slurm, Open MPI, Cloud TPU, ...), else process 0's HOST:PORT."""
    if not coordinator:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, num_processes, process_id)


def parse_command_line(
    argv: list[str],
) -> tuple[ml_collections.ConfigDict, str, tuple[str, int, int], bool]:
    """(config, workdir, (coordinator, num_processes, process_id), print_sharding) from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.train", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="experiments/NAME.py[:arg,...]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    env = os.environ
    parser.add_argument(
        "--coordinator",
        default=env.get("JAX_COORDINATOR_ADDRESS", ""),
        help="multi-process runs: process 0 HOST:PORT (default $JAX_COORDINATOR_ADDRESS), or auto (cluster)",
    )
    parser.add_argument(
        "--print-sharding",
        action="store_true",
        help="print each parameter's shape, mesh spec and bytes per device, then exit without training",
    )
    parser.add_argument(
        "--num-processes", type=int, default=int(env.get("JAX_NUM_PROCESSES", 1)), help="($JAX_NUM_PROCESSES)"
    )
    parser.add_argument(
        "--process-id", type=int, default=int(env.get("JAX_PROCESS_ID", 0)), help="($JAX_PROCESS_ID)"
    )
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(
                f"unrecognised argument {item!r} (config overrides look like --config.train.steps=100)"
            )
        overrides.append(item.removeprefix("--config."))
    distributed = (args.coordinator, args.num_processes, args.process_id)
    return load_config(args.config, overrides), args.workdir, distributed, args.print_sharding


def run_command_line(argv: list[str]) -> None:
    """`python -m mmjax.train ...`: bad input (an unknown config key, a bad value, a missing or empty data
    set) ends with `mmjax.train: error: ...` and exit status 2; only process 0 writes to stdout."""
    try:
        config, workdir, distributed, print_sharding = parse_command_line(argv)
        init_distributed(*distributed)
        if jax.process_index() != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the whole process)
        main(config, workdir, print_sharding=print_sharding)
    except (ValueError, FileNotFoundError) as err:
        print(f"mmjax.train: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_command_line(sys.argv[1:])
