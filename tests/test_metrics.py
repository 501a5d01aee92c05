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


def test_classification_report_by_hand():
    labels, pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    report = metrics.classification_report(pred, labels, ["a", "b", "c", "d"])
    # a: P=1/2, R=1/2; b: P=1/2, R=1; c: P=1, R=2/3; d: never true nor predicted (out of the macro mean).
    expected = {
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (1 / 2, 1, 2 / 3, 1),
        "c": (1, 2 / 3, 4 / 5, 3),
        "d": (0, 0, 0, 0),
    }
    for name, (p, r, f, s) in expected.items():
        assert report["classes"][name] == pytest.approx({"precision": p, "recall": r, "f1": f, "support": s})
    assert report["micro"] == pytest.approx({"precision": 4 / 6, "recall": 4 / 6, "f1": 4 / 6, "support": 6})
    assert report["macro"] == pytest.approx(
        {"precision": 2 / 3, "recall": 13 / 18, "f1": 59 / 90, "support": 6}
    )
    assert report["weighted"] == pytest.approx(
        {"precision": 3 / 4, "recall": 2 / 3, "f1": 61 / 90, "support": 6}
    )
    assert report["macro"]["f1"] == pytest.approx(metrics.macro_f1(pred, labels, 4))


def test_classification_report_counts_missing_predictions_as_misses():
    # -1: no prediction (e.g. a word lost to truncation). c is predicted but never true: in the macro mean.
    report = metrics.classification_report(np.array([0, -1, 2]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert report["classes"]["a"] == pytest.approx(
        {"precision": 1, "recall": 1 / 2, "f1": 2 / 3, "support": 2}
    )
    assert report["classes"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["micro"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5, "support": 3})
    assert report["macro"]["f1"] == pytest.approx(2 / 9)
    assert report["weighted"]["f1"] == pytest.approx(4 / 9)


def test_classification_report_rejects_bad_indices():
    with pytest.raises(ValueError, match="labels must be class indices in"):
        metrics.classification_report(np.array([0, 1]), np.array([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="predictions must be below the number of classes 2"):
        metrics.classification_report(np.array([0, 2]), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.classification_report(np.array([0, 1, 1]), np.array([0, 1]), ["a", "b"])


def test_format_classification_report_table():
    report = metrics.classification_report(np.array([0, 1, 1]), np.array([0, 1, 0]), ["cat", "a-long-name"])
    lines = metrics.format_classification_report(report, digits=2).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1", "support"]
    assert lines[1].split() == ["cat", "1.00", "0.50", "0.67", "2"]
    assert lines[2].split() == ["a-long-name", "0.50", "1.00", "0.67", "1"]
    assert lines[3] == ""
    assert [line.rsplit(maxsplit=4)[0] for line in lines[4:]] == ["micro avg", "macro avg", "weighted avg"]
    assert lines[4].split()[2:] == ["0.67", "0.67", "0.67", "3"]
    assert len({len(line) for line in lines if line}) == 1  # aligned columns
