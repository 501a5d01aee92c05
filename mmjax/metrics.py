"""Classification metrics (numpy, on host) and the metric writer: metrics.jsonl + TensorBoard."""

import json
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorboardX


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


class MetricWriter:
    """Appends {"step": s, **scalars} lines to metrics.jsonl and the same scalars to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            workdir = pathlib.Path(workdir)
            self._file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
            self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

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
