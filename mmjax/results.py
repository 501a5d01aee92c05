"""Reading evaluation results, shared by report and sweep (no training code: numpy and the standard library).

Metric keys (see evaluate.main) are `<task>/<metric>` for a whole split and `<task>/<metric>/<group>` per
group (config.eval.group_by). A run's headline metric is its config.train.best_metric (the metric it ranks
checkpoints by); every task also has a main metric: the first of MAIN_METRICS it reports.
"""

import argparse
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
