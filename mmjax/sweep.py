"""Sweep runner: train every point of an experiment grid, test it clean and under corruptions, tabulate, plot.

  python -m mmjax.sweep experiments/fusion_ablation.py[:arg] --workdir DIR [--only REGEX] [--report]
      [--config.key=value ...]
Each run trains in DIR/runs/<name> (name = its grid values, e.g. `fusion=late,seed=1`) and records
DIR/runs/<name>/results.json; DIR gets results.csv, results.md, accuracy.png (the headline metric per run),
curves.png (its validation value during training: learning curves) and robustness.png (if the sweep has
robustness conditions). Any data set: the headline metric is the runs'
config.train.best_metric; the tables show it first, then every other task's main metric. Rerunning
resumes: complete runs are skipped, an interrupted one continues from its checkpoint, failed ones are retried.
`--config.key=value` overrides every run (e.g. a data path); `--report` only rewrites the tables and plots.
Runs share a persistent XLA compilation cache in DIR/jax_cache unless JAX_COMPILATION_CACHE_DIR is set.
In a multi-process run every process trains and evaluates; only process 0 prints and writes files.
"""

import contextlib
import csv
import functools
import itertools
import json
import pathlib
import re
import sys
import traceback
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from mmjax import evaluate, optim, train
from mmjax.config import load_config, load_python
from mmjax.data import datasets
from mmjax.metrics import read_metrics
from mmjax.model import build_model, dummy_batch
from mmjax.results import CommandParser, condition_name, headline_metric
from mmjax.step import make_objective
from mmjax.sweep_report import (
    csv_rows,
    headline,
    markdown_report,
    plot_curves,
    plot_metric,
    plot_robustness,
    validation_curves,
)

SWEEP_KEYS = ("base", "grid", "overrides", "robustness", "split", "eval_max_batches")
OPTIONAL_KEYS = ("references",)  # {row label: {metric key: value}}: known results (a baseline) as table rows


def is_lead() -> bool:
    """Process 0: the one that prints and writes files."""
    return jax.process_index() == 0


def say(message: str, error: bool = False) -> None:
    """Print on process 0 only (stderr if `error`)."""
    if is_lead():
        print(message, file=sys.stderr if error else sys.stdout)


# Sweep definition and grid.


def smoke_sweep(sweep: dict, base: str) -> dict:
    """A sweep's smoke version (seconds per run): the `base` smoke config, seed 0 only, each run evaluated
    once at its end and tested on 2 batches."""
    grid = sweep["grid"] | {"seed": [0]}
    overrides = {"train.eval_every": 1000, "train.checkpoint_every": 1000}
    return sweep | {"base": base, "grid": grid, "overrides": overrides, "eval_max_batches": 2}


def load_sweep(spec: str) -> dict:
    """Load `path/to/sweep.py[:arg]` (its `get_sweep(arg)`) and check the sweep's fields."""
    path, _, arg = spec.partition(":")
    try:
        module = load_python(path, "sweep file", "get_sweep")
    except SyntaxError as e:
        raise ValueError(f"sweep file {path!r} is not valid Python: {e}") from e
    sweep = module.get_sweep(arg or None)
    if not isinstance(sweep, Mapping):
        raise ValueError(f"sweep file {path!r}: get_sweep returned {type(sweep).__name__}, not a dict")
    return check_sweep(dict(sweep), path)


def check_sweep(sweep: dict, source: str = "sweep") -> dict:
    """The sweep itself, after checking its keys, grid and robustness conditions (errors name them)."""
    if not set(SWEEP_KEYS) <= set(sweep) <= set(SWEEP_KEYS + OPTIONAL_KEYS):
        raise ValueError(
            f"{source}: a sweep has the keys {SWEEP_KEYS} (optional: {OPTIONAL_KEYS}), got {sorted(sweep)}"
        )
    for label, values in sweep.get("references", {}).items():
        if not isinstance(values, Mapping) or not all(isinstance(v, (int, float)) for v in values.values()):
            raise ValueError(f"{source}: reference {label!r} needs {{metric key: number}}, got {values!r}")
    for key, values in sweep["grid"].items():
        if isinstance(values, Mapping):  # a variant axis: {label: {config key: value}}
            bad = [label for label, overrides in values.items() if not isinstance(overrides, Mapping)]
            if not values or bad:
                raise ValueError(
                    f"{source}: variant axis {key!r} needs {{label: {{key: value}}}}, got {values!r}"
                )
        elif isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{source}: grid axis {key!r} needs a non-empty list of values, got {values!r}")
    labels = [axis_label(key) for key in sweep["grid"]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{source}: grid axes {list(sweep['grid'])} give clashing run-name labels {labels}")
    names = [condition_name(condition) for condition in sweep["robustness"]]
    if "clean" in names or len(set(names)) != len(names):
        raise ValueError(f"{source}: robustness conditions must be distinct and not clean, got {names}")
    return sweep


def axis_label(key: str) -> str:
    """The short label of a grid axis in run names: the key's last part (`model.fusion.name` -> `fusion`)."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def format_value(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if re.search(r"[/\\,=\s]", text) or not text:
        raise ValueError(f"grid value {value!r} cannot be part of a run name (no '/', ',', '=' or spaces)")
    return text


def run_name(values: Mapping[str, object]) -> str:
    return ",".join(f"{axis_label(key)}={format_value(value)}" for key, value in values.items())


def expand_grid(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the grid values (a variant axis: its labels), the first axis varying slowest."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def run_overrides(sweep: Mapping, values: Mapping[str, object], extra: Sequence[str] = ()) -> list[str]:
    """`key=value` overrides of one run: the sweep's fixed ones, then `extra`, then the grid values.

    A grid axis whose values are a mapping {label: {config key: value}} (a variant axis, e.g. `variant:
    {"small": {"model.size": "small"}, "wide": {"model.size": "base"}}`) contributes the overrides of the
    run's label.
    """
    fixed = [f"{key}={value}" for key, value in sweep["overrides"].items()]
    grid = []
    for key, value in values.items():
        axis = sweep["grid"][key]
        items = axis[value].items() if isinstance(axis, Mapping) else [(key, value)]
        grid += [f"{k}={v}" for k, v in items]
    return fixed + list(extra) + grid


def run_config(sweep: Mapping, values: Mapping[str, object], extra: Sequence[str] = ()):
    """The experiment config of one run; an unknown key, a bad value or a bad task setup raises naming it."""
    try:
        config = load_config(sweep["base"], run_overrides(sweep, values, extra))
        make_objective(config)
        return config
    except ValueError as e:
        raise ValueError(f"sweep run {run_name(values)} (base {sweep['base']}): {e}") from e


def conditions(sweep: Mapping) -> dict[str, dict]:
    """{condition name: evaluate.main keyword arguments}, the clean test first."""
    return {"clean": {}} | {condition_name(c): dict(c) for c in sweep["robustness"]}


# One run.


def is_complete(record: Mapping | None, condition_names: Sequence[str]) -> bool:
    return bool(record) and record["status"] == "complete" and set(condition_names) <= set(record["metrics"])


def read_record(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rerun that run") from e


def write_record(run_dir: pathlib.Path, record: Mapping) -> None:
    """Written (by process 0) to a temporary file and renamed, so a kill never leaves half a record."""
    if not is_lead():
        return
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(run_dir / "results.json")


def model_cost(config: ml_collections.ConfigDict) -> tuple[int, int, float]:
    """(parameter count, trainable parameter count, FLOPs per example of the eval forward pass (XLA))."""
    data = datasets.from_config(config)
    tasks = data.head_sizes()
    model = build_model(config.model, tasks, data.streams, data.text_vocab_size)
    batch_size = config.data.eval_batch_size
    batch = jax.eval_shape(functools.partial(dummy_batch, config.model, tasks, batch_size, data.streams))
    init = functools.partial(model.init, {"params": jax.random.PRNGKey(0)}, train=False)
    variables = jax.eval_shape(init, batch)
    trainable, num_params = optim.trainable_count(config.optim, variables["params"])

    def forward(variables, batch):
        return model.apply(variables, batch, train=False)[0]

    cost = jax.jit(forward).lower(variables, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost  # a list of one dict on older jax
    return num_params, trainable, float(cost["flops"]) / batch_size


def median_examples_per_sec(run_dir: pathlib.Path) -> float:
    """Median training throughput over the logged windows (the last record of each step)."""
    per_step = {r["step"]: r["examples_per_sec"] for r in read_metrics(run_dir) if "examples_per_sec" in r}
    return float(np.median(list(per_step.values()))) if per_step else float("nan")


def run_one(
    sweep: Mapping, values: Mapping[str, object], run_dir: pathlib.Path, extra: Sequence[str] = ()
) -> dict:
    """Train (or resume) one run and test it under every condition not yet in its record."""
    record = read_record(run_dir) or {}
    done = record.get("metrics", {}) if record.get("status") in ("complete", "evaluating") else {}
    record = dict(name=run_name(values), values=dict(values), status="training", error="", metrics=done)
    try:
        config = run_config(sweep, values, extra)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run_dir, record)
        train.main(config, run_dir)
        record["best_metric"] = read_best_metric(run_dir) or config.train.best_metric
        record["num_params"], record["num_trainable"], record["flops_per_example"] = model_cost(config)
        record["examples_per_sec"] = median_examples_per_sec(run_dir)
        record["status"] = "evaluating"
        for name, kwargs in conditions(sweep).items():
            if name not in record["metrics"]:
                record["metrics"][name] = evaluate.main(
                    run_dir, split=sweep["split"], max_batches=sweep["eval_max_batches"], **kwargs
                )
                write_record(run_dir, record)
        record["status"] = "complete"
    except Exception as e:  # noqa: BLE001 (a failed run is recorded and the sweep goes on)
        record["status"], record["error"] = "failed", f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        say(f"mmjax.sweep: run {record['name']} failed: {record['error']}", error=True)
    if run_dir.is_dir():
        write_record(run_dir, record)
    return record


@contextlib.contextmanager
def compilation_cache(path: pathlib.Path):
    """A persistent XLA cache while the sweep runs: seeds and test conditions compile the same programs.

    A cache the user set (JAX_COMPILATION_CACHE_DIR) is kept; otherwise the setting is undone afterwards.
    """
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    jax_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(path))
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax_cache.reset_cache()


def select(runs: Sequence[Mapping], only: str = "") -> list[Mapping]:
    """The runs whose name matches the regex `only` (all if empty)."""
    return [values for values in runs if re.search(only, run_name(values))] if only else list(runs)


def run_sweep(sweep: Mapping, workdir: str | pathlib.Path, extra: Sequence[str] = (), only: str = "") -> list:
    """Run every selected grid point that is not complete yet; writes the report; returns all records."""
    workdir = pathlib.Path(workdir)
    runs = select(expand_grid(sweep["grid"]), only)
    for values in runs:  # check every run's config before training anything
        run_config(sweep, values, extra)
    names = list(conditions(sweep))
    with compilation_cache(workdir / "jax_cache"):
        for index, values in enumerate(runs):
            run_dir = workdir / "runs" / run_name(values)
            if is_complete(read_record(run_dir), names):
                say(f"mmjax.sweep: [{index + 1}/{len(runs)}] {run_name(values)} is complete, skipped")
                continue
            say(f"mmjax.sweep: [{index + 1}/{len(runs)}] {run_name(values)}")
            run_one(sweep, values, run_dir, extra)
    return write_report(sweep, workdir)


# Collecting the records and writing the report (tables and plots: mmjax.sweep_report).


def read_best_metric(run_dir: pathlib.Path) -> str:
    """config.train.best_metric from the run's config.json ("" without one)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return ""
    try:
        return headline_metric(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError):
        return ""


def collect(sweep: Mapping, workdir: pathlib.Path) -> list[dict]:
    """The records of every grid run that has started (in grid order); a record written before records named
    their headline metric gets it from the run's config.json."""
    records = []
    for values in expand_grid(sweep["grid"]):
        run_dir = workdir / "runs" / run_name(values)
        record = read_record(run_dir)
        if record:
            if not record.get("best_metric"):
                record["best_metric"] = read_best_metric(run_dir)
            records.append(record)
    return records


def write_report(sweep: Mapping, workdir: str | pathlib.Path) -> list[dict]:
    """results.csv, results.md, accuracy.png and robustness.png from the runs' records (written by process 0);
    returns the records."""
    workdir = pathlib.Path(workdir)
    records = collect(sweep, workdir)
    if not is_lead():
        return records
    workdir.mkdir(parents=True, exist_ok=True)
    header, rows = csv_rows(records, list(sweep["grid"]))
    with open(workdir / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    complete = [r for r in records if r["status"] == "complete"]
    key = headline(complete)
    curves = validation_curves(complete, workdir, key)
    (workdir / "results.md").write_text(markdown_report(sweep, records, curves))
    if curves:
        plot_curves(curves, key, workdir / "curves.png")
    plot_metric(complete, key, sweep["split"], workdir / "accuracy.png", sweep.get("references"))
    if sweep["robustness"]:
        plot_robustness(sweep, complete, key, workdir / "robustness.png")
    failed = [r["name"] for r in records if r["status"] == "failed"]
    print(f"mmjax.sweep: {len(complete)} complete runs reported in {workdir / 'results.md'}")
    if failed:
        print(f"mmjax.sweep: {len(failed)} failed: {', '.join(failed)}")
    return records


def main(argv: Sequence[str]) -> list[dict]:
    """The command line: bad input (a missing or bad sweep file, an unknown --config key or bad value, a bad
    grid) exits with status 2 and `mmjax.sweep: error: ...` before anything trains."""
    parser = CommandParser("mmjax.sweep", description=__doc__.strip().splitlines()[0])
    parser.add_argument("sweep", help="experiments/SWEEP.py[:arg,...] defining get_sweep(arg)")
    parser.add_argument("--workdir", required=True, help="runs/<name>/ and the results go here")
    parser.add_argument("--only", default="", help="run only the grid points whose name matches this regex")
    parser.add_argument("--report", action="store_true", help="only rewrite tables and plots from the runs")
    args, rest = parser.parse_known_args(argv)
    extra = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.data.tfds_dir=DIR)")
        extra.append(item.removeprefix("--config."))
    try:
        re.compile(args.only)
    except re.error as e:
        parser.error(f"--only {args.only!r} is not a regular expression: {e}")
    try:
        sweep = load_sweep(args.sweep)
        if args.report:
            if not pathlib.Path(args.workdir).is_dir():
                raise FileNotFoundError(f"--workdir {args.workdir} does not exist: no sweep runs to report")
            return write_report(sweep, args.workdir)
        return run_sweep(sweep, args.workdir, extra, args.only)
    except (ValueError, FileNotFoundError) as err:
        parser.fail(err)


if __name__ == "__main__":
    main(sys.argv[1:])
