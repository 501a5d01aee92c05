"""Train a multimodal model, data-parallel over every device, resuming from the workdir's last checkpoint.

python -m mmjax.train --config experiments/av_digits.py[:arg,...] --workdir DIR [--config.key=value ...]
"""

import argparse
import functools
import pathlib
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mmjax import checkpoint, evaluate, losses, metrics, optim, parallel
from mmjax.config import load_config
from mmjax.data import av_digits, pipeline
from mmjax.model import build_model, dummy_batch, pretrained_params, with_pretrained


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; each step folds in its step number


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the tasks."""


def init_state(model, optimizer, example_batch, seed: int, pretrained: dict | None = None) -> TrainState:
    """A fresh state; `pretrained` ({modality: params}) replaces those encoders' random init."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init({"params": init_rng}, example_batch, train=False)["params"]
    params = with_pretrained(params, pretrained or {})
    step = jnp.zeros((), jnp.int32)
    return TrainState(step=step, params=params, opt_state=optimizer.init(params), rng=train_rng)


def train_step(state: TrainState, batch: dict, *, model, optimizer, task_weights: dict[str, float]):
    """One update on a global batch; returns the new state and scalar metrics."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        outputs, _ = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        total, per_task = losses.multitask_loss(outputs, batch, task_weights)
        return total, (per_task, outputs)

    (loss, (per_task, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scalars = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates)}
    scalars["param_norm"] = optax.tree.norm(params)
    for task, task_loss in per_task.items():
        scalars[f"{task}/loss"] = task_loss
        correct = jnp.argmax(outputs[task], -1) == batch[f"labels/{task}"]
        scalars[f"{task}/accuracy"] = jnp.mean(correct)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, scalars


def make_train_step(model, optimizer, task_weights: dict[str, float], mesh):
    """train_step jitted over the mesh: batch sharded on `data`, state replicated and donated."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, task_weights=task_weights),
        in_shardings=(replicated, parallel.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def _mean_scalars(records: list[dict]) -> dict[str, float]:
    fetched = jax.device_get(records)
    return {key: float(np.mean([r[key] for r in fetched])) for key in fetched[0]}


def _check_finite(records: list[dict], first_step: int) -> None:
    for offset, record in enumerate(jax.device_get(records)):
        if not np.isfinite(record["loss"]):
            bad = sorted(
                k.removesuffix("/loss")
                for k, v in record.items()
                if k.endswith("/loss") and not np.isfinite(v)
            )
            raise NonFiniteLossError(
                f"loss is {record['loss']} at step {first_step + offset + 1} (tasks with a non-finite loss: "
                f"{', '.join(bad) or 'none; the total overflowed'}); stopping. The last checkpoint is intact."
            )


def main(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Train (or resume) in `workdir`; returns the last validation metrics."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_lead = jax.process_index() == 0
    if is_lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    # Mesh.
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.data.batch_size, mesh)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")

    # Data.
    tasks = {task: av_digits.TASKS[task] for task in config.tasks}
    sources = {
        split: av_digits.load(
            split, data_dir=config.data.data_dir or None, tfds_dir=config.data.tfds_dir or None
        )
        for split in ("train", "validation")
    }
    preprocess = evaluate.make_preprocess(config)
    shift = config.data.image_shift
    augment = functools.partial(pipeline.random_shift, max_shift=shift) if shift else None
    train_iter = pipeline.train_iterator(
        sources["train"],
        batch_size=config.data.batch_size,
        seed=config.seed,
        preprocess_fn=preprocess,
        augment_fn=augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.data.workers,
    )
    steps_per_epoch = pipeline.steps_per_epoch(sources["train"], config.data.batch_size)
    total_steps = config.train.steps or int(round(config.train.epochs * steps_per_epoch))

    # Model and optimizer.
    model = build_model(config.model, tasks)
    optimizer = optim.make_optimizer(config.optim, total_steps)
    schedule = optim.learning_rate_schedule(config.optim, total_steps)
    example = dummy_batch(config.model, tasks)

    # State: planned with eval_shape, created replicated, or restored from the latest checkpoint.
    replicated = parallel.replicated(mesh)
    make_state = functools.partial(init_state, model, optimizer, example, config.seed)
    abstract_state = parallel.with_sharding(jax.eval_shape(make_state), replicated)  # same with pretrained
    manager = checkpoint.make_manager(
        workdir / "checkpoints",
        keep=config.train.keep,
        keep_best=config.train.keep_best,
        best_metric=config.train.best_metric,
    )
    latest = manager.latest_step()
    if latest is None:
        state = jax.jit(make_state, out_shardings=replicated)(pretrained_params(config.model))
    else:
        state = checkpoint.restore(manager, latest, abstract_state, train_iter)
        print(f"mmjax: resumed from the checkpoint of step {latest} in {workdir}")
    start_step = int(state.step)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    frozen = sum(x.size for x in jax.tree.leaves(optim.frozen_params(config.optim, abstract_state.params)))
    print(
        f"mmjax: {num_params:,} parameters ({frozen:,} frozen), {mesh.size} devices, "
        f"steps {start_step}->{total_steps}"
    )

    # Step.
    task_weights = {task: float(w) for task, w in config.tasks.items()}
    step_fn = make_train_step(model, optimizer, task_weights, mesh)
    eval_fn = evaluate.make_eval_step(model, mesh)

    # Loop.
    writer = metrics.MetricWriter(workdir, enabled=is_lead)
    bar = tqdm.tqdm(
        total=total_steps, initial=start_step, disable=not is_lead, desc="train", unit="step", mininterval=5
    )
    pending, window_start, window_time = [], start_step, time.perf_counter()
    val_metrics: dict[str, float] = {}
    try:
        for step in range(start_step + 1, total_steps + 1):
            state, scalars = step_fn(state, parallel.to_global(next(train_iter), mesh))
            pending.append(scalars)
            bar.update(1)
            if step % config.train.log_every == 0 or step == total_steps:
                _check_finite(pending, window_start)
                logged = _mean_scalars(pending)
                elapsed = time.perf_counter() - window_time
                logged["examples_per_sec"] = len(pending) * config.data.batch_size / elapsed
                logged["learning_rate"] = float(schedule(step - 1))
                writer.write(step, logged)
                bar.set_postfix(loss=f"{logged['loss']:.3f}")
                pending, window_start, window_time = [], step, time.perf_counter()
            is_eval = step % config.train.eval_every == 0 or step == total_steps
            if is_eval:
                batches = pipeline.eval_batches(
                    sources["validation"], batch_size=config.data.eval_batch_size, preprocess_fn=preprocess
                )
                results = evaluate.predict(
                    state.params, batches, eval_fn, mesh, config.train.eval_max_batches
                )
                val_metrics = evaluate.summarize(results, tasks)
                writer.write(step, {f"val/{k}": v for k, v in val_metrics.items()})
                window_time = time.perf_counter()  # evaluation time is not training throughput
            if is_eval or step % config.train.checkpoint_every == 0:
                checkpoint.save(manager, step, state, train_iter, val_metrics if is_eval else None)
    finally:
        manager.wait_until_finished()
        bar.close()
        writer.close()
    if val_metrics:
        print(f"validation after step {total_steps}:")
        print(evaluate.format_table(val_metrics, tasks))
    return val_metrics


def parse_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.train", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="experiments/NAME.py[:arg,...]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(
                f"unrecognised argument {item!r} (config overrides look like --config.train.steps=100)"
            )
        overrides.append(item.removeprefix("--config."))
    return load_config(args.config, overrides), args.workdir


if __name__ == "__main__":
    main(*parse_command_line(sys.argv[1:]))
