"""Metrics against hand-computed values, and the metric writer's JSON lines."""

import json

import numpy as np
import pytest

from mmjax import metrics


def test_accuracy_and_confusion_by_hand():
    pred, labels = np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 0])
    assert metrics.accuracy(pred, labels) == pytest.approx(3 / 5)
    matrix = metrics.confusion_matrix(pred, labels, 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 1], [0, 1, 0], [0, 1, 1]])


def test_macro_f1_by_hand():
    pred, labels = np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 0])
    # class 0: P=1, R=1/2 -> 2/3; class 1: P=1/2, R=1 -> 2/3; class 2: P=1/2, R=1/2 -> 1/2.
    assert metrics.macro_f1(pred, labels, 4) == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics.macro_f1(labels, labels, 3) == pytest.approx(1.0)


def test_writer_appends_json_lines(tmp_path):
    writer = metrics.MetricWriter(tmp_path)
    writer.write(1, {"loss": np.float32(2.5)})
    writer.write(2, {"loss": 1.5, "acc": 0.5})
    writer.close()
    writer = metrics.MetricWriter(tmp_path)
    writer.write(2, {"loss": 1.25})
    writer.close()
    assert metrics.read_metrics(tmp_path) == [
        {"step": 1, "loss": 2.5},
        {"step": 2, "loss": 1.5, "acc": 0.5},
        {"step": 2, "loss": 1.25},
    ]
    assert any((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
