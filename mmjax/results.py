"""Reading a run's results (workdir files, eval metrics), shared by report and sweep (no training code:
numpy and the standard library).

Metric keys (see evaluate.main) are `<task>/<metric>` for a whole split and `<task>/<metric>/<group>` per
group (config.eval.group_by). A run's headline metric is its config.train.best_metric (the metric it ranks
checkpoints by); every task also has a main metric: the first of MAIN_METRICS it reports.
"""

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping

CONDITION_KEYS = ("drop", "audio_snr", "image_noise")  # evaluate.main's corruption arguments
MAIN_METRICS = ("accuracy", "map", "f1", "r2")  # a task's main metric: the first of these it reports


def condition_name(condition: Mapping[str, object]) -> str:
    """`clean`, `drop-image`, `snr-10`, `image-noise-0.5`, ... (joined by `+` if several are set)."""
    unknown = set(condition) - set(CONDITION_KEYS)
    if unknown:
        raise ValueError(f"unknown robustness argument(s) {sorted(unknown)}; known: {CONDITION_KEYS}")
    parts = []
    if condition.get("drop"):
        parts.append(f"drop-{condition['drop']}")
    if condition.get("audio_snr") is not None:
        parts.append(f"snr-{condition['audio_snr']:g}")
    if condition.get("image_noise"):
        parts.append(f"image-noise-{condition['image_noise']:g}")
    return "+".join(parts) or "clean"


def task_metrics(keys: Iterable[str]) -> dict[str, list[str]]:
    """{task: [metric, ...]} of the whole-split keys `<task>/<metric>`, in the order of `keys`."""
    tasks: dict[str, list[str]] = {}
    for key in keys:
        task, _, metric = key.partition("/")
        if metric and "/" not in metric:
            tasks.setdefault(task, []).append(metric)
    return tasks


def main_metric_keys(keys: Iterable[str], first: str = "") -> list[str]:
    """`<task>/<main metric>` of every task in `keys` (in their order), `first` (a headline) moved first."""
    main = []
    for task, metrics in task_metrics(keys).items():
        preferred = [m for m in MAIN_METRICS if m in metrics]
        main.append(f"{task}/{(preferred or metrics)[0]}")
    if not first:
        return main
    task = first.partition("/")[0]
    return [first] + [key for key in main if key.partition("/")[0] != task]


def group_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{`<task>/<metric>`: {group: value}} of the per-group keys `<task>/<metric>/<group>`, groups sorted."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/", 2)
        if len(parts) == 3:
            grouped.setdefault("/".join(parts[:2]), {})[parts[2]] = value
    return {key: dict(sorted(groups.items())) for key, groups in grouped.items()}


def headline_metric(config: Mapping, metrics: Iterable[str] = ()) -> str:
    """A run's headline metric: its config's train.best_metric; without one (an older run), the main metric
    of the first task in `metrics` ("" if none)."""
    best = (config.get("train") or {}).get("best_metric", "")
    return best or next(iter(main_metric_keys(metrics)), "")


def class_names(tasks: Mapping, task: str, n: int) -> list[str]:
    """The class names of `task` from an eval file's "tasks" ({task: {"kind", "classes"}}); class indices when
    the file has none (written before evaluate recorded them) or they do not match the n classes."""
    names = list((tasks.get(task) or {}).get("classes", ()))
    return names if len(names) == n else [str(i) for i in range(n)]


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """The resolved workdir; raises if it lacks config.json or metrics.jsonl."""
    path = pathlib.Path(workdir).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a training workdir: no such folder")
    missing = [name for name in ("config.json", "metrics.jsonl") if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a training workdir: it has no {' and no '.join(missing)} "
            "(written by python -m mmjax.train)"
        )
    return path


def read_json(path: pathlib.Path) -> dict:
    """A JSON object from `path`; ValueError naming the file if it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def read_records(path: pathlib.Path) -> list[dict]:
    """The records of a metrics.jsonl (read here, not with mmjax.metrics: that module loads TensorBoard)."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from e
    return records


def last_per_step(records: Iterable[dict]) -> list[dict]:
    """One record per step, the later one where a resumed run repeated a step; sorted by step."""
    by_step = {record["step"]: record for record in records}
    return [by_step[step] for step in sorted(by_step)]


def load_run(workdir: str | os.PathLike, name: str = "") -> dict:
    """A workdir's config, headline metric, training and validation records, eval files {stem: report} and
    attention maps."""
    path = check_workdir(workdir)
    records = [r for r in read_records(path / "metrics.jsonl") if "step" in r]
    config = read_json(path / "config.json")
    evals = {p.stem: read_json(p) for p in sorted(path.glob("eval_*.json"))}
    shares = path / "explain" / "shares.json"
    test_keys = evals.get("eval_test", {}).get("metrics", {})
    val_keys = (key.removeprefix("val/") for r in records for key in r if key.startswith("val/"))
    return {
        "name": name or path.name,
        "path": path,
        "config": config,
        "headline": headline_metric(config, list(test_keys) or list(val_keys)),
        "train": last_per_step(r for r in records if "loss" in r),
        "val": last_per_step(r for r in records if any(key.startswith("val/") for key in r)),
        "evals": evals,
        "maps": sorted((path / "explain").glob("*.png")),
        "shares": read_json(shares) if shares.is_file() else None,
    }


class CommandParser(argparse.ArgumentParser):
    """argparse whose errors print the usage and `<command>: error: ...` and exit with status 2 (`fail`: the
    same without the usage, for bad input found after parsing)."""

    def __init__(self, command: str, **kwargs):
        super().__init__(prog=f"python -m {command}", **kwargs)
        self.command = command

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.fail(message)

    def fail(self, message: object):
        self.exit(2, f"{self.command}: error: {message}\n")
