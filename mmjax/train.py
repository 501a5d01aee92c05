"""Train a multimodal model over the device mesh, resuming from the workdir's last checkpoint; the update
itself is mmjax.step.train_step.

python -m mmjax.train --config experiments/NAME.py[:arg,...] --workdir DIR [--config.key=value ...]
"""

import argparse
import contextlib
import functools
import os
import pathlib
import signal
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import tqdm

from mmjax import checkpoint, evaluate, host, metrics, optim, parallel
from mmjax.config import load_config
from mmjax.data import datasets, pipeline
from mmjax.data.augment import augment_settings, make_augment
from mmjax.data.spec import DataSet
from mmjax.model import build_model, dummy_batch, pretrained_params
from mmjax.nn import lora
from mmjax.step import init_state, make_objective, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the tasks."""


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
    host.release_freed_memory()  # what building the state compiled and loaded
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
                if step == start_step + 1:
                    host.release_freed_memory()  # the step is compiled: hand back the compiler's memory
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
                    host.release_freed_memory()
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
