"""The data-set contract: everything train, evaluate, predict, report, sweep and explain read from a data set.

A data set (bundled or a folder of your own) is a `DataSet`: its input streams (each of kind text, image or
audio, named `image`, `image_2`, ...), its tasks (what each label column trains), a random-access source per
split, the per-example preprocessing into the batch contract (DESIGN.md) and the metrics of evaluation
results. The model's encoders and heads follow the streams and tasks; library code names no data set.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mmjax import metrics

STREAM_KINDS = ("text", "image", "audio")
# classes: one class per example (softmax); multilabel: a set of classes (sigmoid); regression: a number;
# tokens: one class per token (tagging); span: start and end positions; align: contrastive, no labels.
TASK_KINDS = ("classes", "multilabel", "regression", "tokens", "span", "align")
REGRESSION_LOSSES = ("mse", "huber")
ALIGN = "align"  # the contrastive alignment task (no labels; see model.align)


@dataclasses.dataclass(frozen=True)
class Task:
    """What one label column trains: its kind, class names (classes, multilabel, tokens) and outputs."""

    kind: str
    classes: tuple[str, ...] = ()
    size: int = 0  # head outputs when there are no class names (span: the sequence length; regression: 1)
    loss: str = "mse"  # regression: mse | huber
    # Regression: the head predicts (target - mean) / std (train statistics), so that every task's loss has
    # a similar scale; metrics and predictions are in the target's own units.
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind {self.kind!r} is not one of {TASK_KINDS}")
        if self.kind == "regression" and self.loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression loss {self.loss!r} is not one of {REGRESSION_LOSSES}")

    @property
    def main_metric(self) -> str:
        """The metric (higher is better) ranking checkpoints when config.train.best_metric is ""."""
        return {"multilabel": "map", "regression": "r2", "span": "f1", "align": "accuracy"}.get(
            self.kind, "accuracy"
        )

    @property
    def outputs(self) -> int:
        """Width of the task's head (logits per class, or 1 for regression)."""
        return self.size or len(self.classes) or 1


def target_scale(values) -> tuple[float, float]:
    """(mean, std) of a regression column's finite train values; std 1 for fewer than two or equal values."""
    column = np.asarray(values, np.float64)
    column = column[np.isfinite(column)]
    std = float(column.std()) if column.size > 1 else 0.0
    return (float(column.mean()) if column.size else 0.0, std if std > 0 else 1.0)


def classes(*names: str) -> Task:
    return Task("classes", tuple(names))


@dataclasses.dataclass(frozen=True)
class DataSet:
    """One experiment's data: streams, tasks, sources and preprocessing, and the metrics of its results.

    `summarize(split, results)` turns evaluation results (evaluate.predict: `pred/<task>`, `labels/<task>`,
    `scores/<task>`, `index` = the example's position in the split's source, ...) into named metrics.
    `groups(split)` gives each example's group name for per-group metrics (eval.group_by), or None.
    `condition(corruption)` returns the preprocessing under a robustness condition (None: not supported).
    """

    name: str
    streams: dict[str, str]  # stream -> kind, in model order
    tasks: dict[str, Task]  # the tasks the experiment trains (weight > 0), sorted by name
    load: Callable[[str], Sequence]  # split -> random-access source
    preprocess: Callable[[Mapping], dict]  # one source example -> one example of the batch contract
    summarize: Callable[[str, Mapping[str, np.ndarray]], dict[str, float]]
    iterator_args: dict = dataclasses.field(default_factory=dict)  # pipeline.train_iterator shape buckets
    groups: Callable[[str], np.ndarray] | None = None
    group_tasks: tuple[str, ...] = ()  # the tasks scored per group
    reports: Callable[[str, Mapping[str, np.ndarray]], dict] | None = None  # per-class tables
    condition: Callable | None = None  # corruption -> preprocess under that robustness condition
    # {stream: file, array or text} -> one source example (mmjax.predict); absent streams are left out
    encode_inputs: Callable[[Mapping[str, object]], dict] | None = None
    kind: str = "multimodal"  # multimodal: encoders -> fusion -> heads; text: token heads on one encoder
    align_labels: dict[str, str] = dataclasses.field(default_factory=dict)  # stream -> its class label key
    primary: str = ""  # the task whose main metric ranks checkpoints when config.train.best_metric is ""
    text_vocab_size: int = 0  # > 0: a scratch text encoder's vocabulary (a word vocabulary from train)
    tokenizer: object = None  # what encodes the text streams (text.WordTokenizer or PretrainedTokenizer)

    def head_sizes(self) -> dict[str, int]:
        """{task: head outputs} of the classification, multi-label and regression tasks (what the model
        builds heads for; align has none)."""
        return {name: task.outputs for name, task in self.tasks.items() if task.kind != "align"}


def align_label_keys(align: Mapping, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """The label keys whose equality marks positive pairs of `model.align` (None: an example with itself);
    `labels`: {stream: its class label key} (DataSet.align_labels)."""
    streams = [m.strip() for m in align.get("modalities", "").split(",") if m.strip()]
    if not streams or align["positives"] == "pairs":
        return None
    if align["positives"] != "labels":
        raise ValueError(f"model.align.positives={align['positives']!r} must be 'labels' or 'pairs'")
    if not set(streams) <= set(labels):
        raise ValueError(
            f"model.align.positives='labels' needs streams with class labels {sorted(labels)}, "
            f"got model.align.modalities={align['modalities']!r}"
        )
    return tuple(labels[m] for m in streams)


def check_streams(streams: Mapping[str, str]) -> None:
    """Stream names are `<kind>` or `<kind>_<n>` with a known kind."""
    for name, kind in streams.items():
        if kind not in STREAM_KINDS:
            raise ValueError(f"stream {name!r} has kind {kind!r}; kinds are {STREAM_KINDS}")
        base, _, number = name.partition("_")
        if base != kind or (number and not number.isdigit()):
            raise ValueError(f"stream {name!r} of kind {kind!r} must be named {kind!r} or {kind}_<n>")


def trained_tasks(
    weights: Mapping[str, float], available: Mapping[str, Task], dataset: str
) -> dict[str, Task]:
    """The tasks `weights` (config.tasks) trains (weight > 0), sorted by name; a weight for a task the data
    set lacks raises ValueError naming it."""
    unknown = sorted(set(weights) - set(available))
    if unknown:
        raise ValueError(f"config.tasks has unknown task(s) {unknown}; {dataset} has {sorted(available)}")
    return {name: available[name] for name in sorted(weights) if weights[name] > 0}


def task_metrics(results: Mapping[str, np.ndarray], tasks: Mapping[str, Task]) -> dict[str, float]:
    """Metrics of every task in evaluation results: accuracy and macro-F1 (classes), mAP and micro/macro F1
    (multilabel), MAE, RMSE and R^2 (regression), top-1 retrieval accuracy (align); modality heads
    (`pred/<task>@<stream>`, -1 where absent) get their accuracy over the examples that have the stream.
    Unlabelled examples (class -1, a multi-hot row of -1, a NaN target) are left out."""
    summary = {}
    for name, task in tasks.items():
        if task.kind == "classes":
            pred, labels = results[f"pred/{name}"], results[f"labels/{name}"]
            labelled = labels >= 0
            summary[f"{name}/accuracy"] = metrics.accuracy(pred[labelled], labels[labelled])
            summary[f"{name}/macro_f1"] = metrics.macro_f1(pred[labelled], labels[labelled], task.outputs)
        elif task.kind == "multilabel":
            scored = metrics.multilabel_metrics(results[f"scores/{name}"], results[f"labels/{name}"])
            summary |= {f"{name}/{k}": v for k, v in scored.items() if k != "count"}
        elif task.kind == "regression":
            scored = metrics.regression_metrics(*task_units(task, results, name))
            summary |= {f"{name}/{k}": v for k, v in scored.items() if k != "count"}
        elif task.kind == "align":
            hits = results["hits/align"][results["valid/align"].astype(bool)]
            summary["align/accuracy"] = float(hits.mean()) if hits.size else float("nan")
    for key in [k for k in results if k.startswith("pred/") and "@" in k]:
        task = key.removeprefix("pred/").split("@")[0]
        scored = results[key] >= 0
        summary[f"{key.removeprefix('pred/')}/accuracy"] = metrics.accuracy(
            results[key][scored], results[f"labels/{task}"][scored]
        )
    return summary


def task_units(task: Task, results: Mapping[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """A regression task's (predictions, targets) in the target's own units (undoing the mean/std scaling)."""
    return tuple(results[f"{key}/{name}"] * task.std + task.mean for key in ("pred", "labels"))


def group_metrics(
    results: Mapping[str, np.ndarray], tasks: Mapping[str, Task], names: np.ndarray, scored: Sequence[str]
) -> dict[str, float]:
    """`<task>/accuracy/<group>` (classes) or `<task>/mae/<group>` (regression) of each task in `scored`,
    per group; `names` holds each result row's group name (in the order of results)."""
    summary = {}
    for group in sorted(set(names.tolist())):
        rows = names == group
        for name in scored:
            subset = {k: v[rows] for k, v in results.items() if k.endswith(f"/{name}")}
            kind = tasks[name].kind
            if kind == "classes":
                labelled = subset[f"labels/{name}"] >= 0
                summary[f"{name}/accuracy/{group}"] = metrics.accuracy(
                    subset[f"pred/{name}"][labelled], subset[f"labels/{name}"][labelled]
                )
            elif kind == "regression":
                mae = metrics.regression_metrics(*task_units(tasks[name], subset, name))["mae"]
                summary[f"{name}/mae/{group}"] = mae
            elif kind == "multilabel":
                scores = metrics.multilabel_metrics(subset[f"scores/{name}"], subset[f"labels/{name}"])
                summary[f"{name}/micro_f1/{group}"] = scores["micro_f1"]
    return summary


def summarizer(
    tasks: Mapping[str, Task],
    groups: Callable[[str], np.ndarray] | None = None,
    group_tasks: Sequence[str] = (),
) -> Callable[[str, Mapping[str, np.ndarray]], dict[str, float]]:
    """summarize(split, results): task_metrics, plus group_metrics of `group_tasks` when `groups` is given."""

    def summarize(split: str, results: Mapping[str, np.ndarray]) -> dict[str, float]:
        summary = task_metrics(results, tasks)
        if groups is not None and group_tasks:
            names = np.asarray(groups(split))[results["index"]]
            summary |= group_metrics(results, tasks, names, [t for t in group_tasks if t in tasks])
        return summary

    return summarize
