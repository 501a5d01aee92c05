"""Classification, multi-label and regression metrics (numpy, on host) and the metric writer: metrics.jsonl +
TensorBoard."""

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in the labels or the predictions."""
    matrix = confusion_matrix(predictions, labels, num_classes)
    true_pos = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(1), matrix.sum(0)
    seen = (support + predicted) > 0
    f1 = 2 * true_pos / np.maximum(support + predicted, 1)
    return float(f1[seen].mean()) if seen.any() else float("nan")


def _nan_scores(*names: str) -> dict:
    return {**{name: float("nan") for name in names}, "count": 0}


def multilabel_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Multi-label scores of probabilities [N, K] against multi-hot labels [N, K] (0/1; -1: not labelled).

    scores are probabilities (the sigmoid of the logits): a class is predicted where score >= 0.5. (mAP only
    ranks, so logits give the same "map", but not the same F1s.) Rows whose labels are all -1 (examples
    without multi-label annotation) are excluded; a row only partly -1 is a ValueError.

    Returns {"map", "micro_f1", "macro_f1", "count"} (scikit-learn):
      map: the mean over the classes with at least one positive among the scored rows of
        average_precision_score (a class without positives has no defined AP); NaN if there is none;
      micro_f1 / macro_f1: f1_score(average="micro" / "macro", zero_division=0). Like scikit-learn, the macro
        mean is over all K classes: a class with neither positives nor predictions scores 0. (This differs
        from `macro_f1` above, which averages the classes that occur in the labels or predictions.)
      count: the number of rows scored. With none, every score is NaN.
    """
    from sklearn.metrics import average_precision_score, f1_score  # lazy: ~1 s to import

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [N, K], got {scores.shape} and {labels.shape}")
    unlabelled = (labels == -1).all(axis=1)
    scores, labels = scores[~unlabelled], labels[~unlabelled]
    if not np.isin(labels, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(labels, (0, 1)).all(axis=1))[0])
        raise ValueError(
            f"multi-label labels must be 0/1, or -1 for a whole unlabelled row; got {labels[row].tolist()}"
        )
    if not len(labels):
        return _nan_scores("map", "micro_f1", "macro_f1")
    labels = labels.astype(np.int64)
    predictions = (scores >= 0.5).astype(np.int64)
    has_positive = labels.sum(axis=0) > 0
    mean_ap = (
        float(average_precision_score(labels[:, has_positive], scores[:, has_positive], average="macro"))
        if has_positive.any()
        else float("nan")
    )
    return {
        "map": mean_ap,
        "micro_f1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "count": len(labels),
    }


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """Regression scores of predictions against targets, both [N] or [N, D]; a NaN target: not labelled.

    Rows with any NaN target are excluded. Returns {"mae", "rmse", "r2", "count"} (scikit-learn:
    mean_absolute_error, the square root of mean_squared_error, r2_score; for [N, D] each the uniform
    average over the D outputs, as scikit-learn's default multioutput). r2 is NaN below 2 rows (undefined);
    a constant target column gets scikit-learn's finite r2 (1 if predicted exactly, else 0). count: the rows
    scored; with none, every score is NaN.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score  # lazy: ~1 s to import

    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    if predictions.shape != targets.shape or targets.ndim not in (1, 2):
        raise ValueError(
            f"predictions and targets must both be [N] or [N, D], got {predictions.shape} and {targets.shape}"
        )
    labelled = ~np.isnan(targets).reshape(len(targets), -1).any(axis=1)
    predictions, targets = predictions[labelled], targets[labelled]
    if not len(targets):
        return _nan_scores("mae", "rmse", "r2")
    return {
        "mae": float(mean_absolute_error(targets, predictions)),
        "rmse": float(np.sqrt(mean_squared_error(targets, predictions))),
        "r2": float(r2_score(targets, predictions)) if len(targets) >= 2 else float("nan"),
        "count": len(targets),
    }


def summary_writer(logdir: pathlib.Path):
    """tensorboardX's SummaryWriter, imported on first use and without torch: where torch is installed,
    tensorboardX imports it only to accept torch tensors, which mmjax never logs; that import costs a
    training process about 200 MB of resident memory and seconds of start-up. A process that has already
    imported torch keeps it."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        import tensorboardX
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    return tensorboardX.SummaryWriter(str(logdir))


class MetricWriter:
    """Appends {"step": s, **scalars} lines to metrics.jsonl and the same scalars to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            workdir = pathlib.Path(workdir)
            self._file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
            self._tb = summary_writer(workdir / "tensorboard")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of metrics.jsonl; a resumed run may repeat steps, the later record is the newer one."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _precision_recall_f1(true_pos, predicted, support) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise precision, recall and F1 of counts, 0 where a denominator is 0."""
    true_pos, predicted, support = (np.asarray(x, np.float64) for x in (true_pos, predicted, support))
    precision = true_pos / np.maximum(predicted, 1)
    recall = true_pos / np.maximum(support, 1)
    f1 = 2 * true_pos / np.maximum(predicted + support, 1)
    return precision, recall, f1


def _row(precision: float, recall: float, f1: float, support: int) -> dict:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def classification_report(predictions: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict:
    """{"classes": {name: {"precision", "recall", "f1", "support"}}, "micro", "macro", "weighted": {...}}.

    Labels are class indices into `names`; a negative prediction means "no prediction" (a miss for its label,
    e.g. a word lost to truncation). Macro averages the classes that occur in the labels or the predictions
    (a class with neither has no defined score); weighted averages by support; micro pools the counts.
    """
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    n = len(names)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"labels must be class indices in [0, {n}), got {labels.min()}..{labels.max()}")
    if predictions.size and predictions.max() >= n:
        raise ValueError(f"predictions must be below the number of classes {n}, got {predictions.max()}")
    support = np.bincount(labels, minlength=n)
    predicted = np.bincount(predictions[predictions >= 0], minlength=n)
    true_pos = np.bincount(labels[predictions == labels], minlength=n)
    precision, recall, f1 = _precision_recall_f1(true_pos, predicted, support)
    micro = _precision_recall_f1(true_pos.sum(), predicted.sum(), support.sum())

    def average(weights: np.ndarray) -> dict:
        if not weights.sum():
            return _row(np.nan, np.nan, np.nan, support.sum())
        return _row(*(np.average(v, weights=weights) for v in (precision, recall, f1)), support.sum())

    scores = zip(names, precision, recall, f1, support, strict=True)
    return {
        "classes": {name: _row(*values) for name, *values in scores},
        "micro": _row(*micro, support.sum()),
        "macro": average(((support + predicted) > 0).astype(np.float64)),
        "weighted": average(support.astype(np.float64)),
    }


def format_classification_report(report: Mapping, digits: int = 3) -> str:
    """`classification_report` as a text table: one row per class, then the micro, macro and weighted rows."""
    width = max([len("weighted avg"), *(len(name) for name in report["classes"])])

    def line(name: str, scores: Mapping) -> str:
        values = "  ".join(f"{scores[k]:>9.{digits}f}" for k in ("precision", "recall", "f1"))
        return f"{name:<{width}}  {values}  {scores['support']:>9d}"

    header = f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}"
    classes = [line(name, scores) for name, scores in report["classes"].items()]
    averages = [line(f"{k} avg", report[k]) for k in ("micro", "macro", "weighted")]
    return "\n".join([header, *classes, "", *averages])
