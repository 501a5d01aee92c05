"""Metrics against hand-computed values, and the metric writer's JSON lines."""

import json
import math
import struct
import subprocess
import sys

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


def event_scalars(logdir) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the TensorBoard event files of `logdir` (TFRecord framing:
    8-byte length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = []
    for path in sorted(logdir.iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def test_a_training_process_logs_to_tensorboard_without_importing_torch(tmp_path):
    code = (
        "import sys, mmjax.train\n"
        "from mmjax.metrics import MetricWriter\n"
        f"writer = MetricWriter({str(tmp_path)!r})\n"
        "writer.write(3, {'loss': 0.5, 'answer/accuracy': 0.75})\n"
        "writer.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert event_scalars(tmp_path / "tensorboard") == [(3, "loss", 0.5), (3, "answer/accuracy", 0.75)]


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


# 4 labelled rows x 3 classes, then a 5th row of -1: not labelled, so never scored.
ML_SCORES = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.8, 0.7, 0.1],
        [0.3, 0.4, 0.2],
        [0.1, 0.6, 0.7],
        [0.05, 0.95, 0.5],
    ]
)
ML_LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [-1, -1, -1]])


def test_multilabel_metrics_by_hand():
    # AP = sum over the ranked positives of (recall step) x (precision there).
    # class 0: scores 0.9 (+), 0.8 (-), 0.3 (+), 0.1 (-): 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # class 1: scores 0.7 (+), 0.6 (+), 0.4 (-), 0.2 (-): 1.
    # class 2: no positive, out of the mean. map = (5/6 + 1) / 2 = 11/12.
    # F1 at score >= 0.5: class 0 predicts rows 0, 1: TP 1, FP 1, FN 1 -> 2/4 = 1/2;
    # class 1 predicts rows 1, 3: TP 2 -> 1; class 2 predicts rows 0, 3: FP 2 -> 0.
    # macro over all 3 classes = (1/2 + 1 + 0) / 3 = 1/2; micro: TP 3, FP 3, FN 1 -> 6 / 10.
    result = metrics.multilabel_metrics(ML_SCORES, ML_LABELS)
    assert result == pytest.approx({"map": 11 / 12, "micro_f1": 3 / 5, "macro_f1": 1 / 2, "count": 4})
    assert isinstance(result["count"], int)
    assert all(isinstance(v, float) for k, v in result.items() if k != "count")


def test_multilabel_metrics_unlabelled_rows_change_nothing():
    expected = metrics.multilabel_metrics(ML_SCORES[:4], ML_LABELS[:4])
    for masked_scores in ([0.99, 0.01, 0.99], [0.0, 0.0, 0.0]):
        scores = ML_SCORES.copy()
        scores[4] = masked_scores
        assert metrics.multilabel_metrics(scores, ML_LABELS) == expected


def test_multilabel_macro_f1_counts_a_class_with_neither_positives_nor_predictions_as_0():
    # class 0: one positive, predicted -> F1 1 and AP 1; class 1: no positive, no prediction -> F1 0.
    result = metrics.multilabel_metrics(np.array([[0.9, 0.1], [0.2, 0.3]]), np.array([[1, 0], [0, 0]]))
    assert result == pytest.approx({"map": 1.0, "micro_f1": 1.0, "macro_f1": 0.5, "count": 2})


def test_multilabel_metrics_nothing_scored_is_nan():
    for scores, labels in ((ML_SCORES[4:], ML_LABELS[4:]), (np.zeros((0, 3)), np.zeros((0, 3), int))):
        result = metrics.multilabel_metrics(scores, labels)
        assert result["count"] == 0
        assert all(np.isnan(result[k]) for k in ("map", "micro_f1", "macro_f1"))
    # Rows labelled, but no class has a positive: no mAP; the F1s are defined (0, nothing to find).
    result = metrics.multilabel_metrics(np.array([[0.9, 0.1]]), np.array([[0, 0]]))
    assert np.isnan(result["map"]) and result["micro_f1"] == 0.0 and result["count"] == 1


def test_multilabel_metrics_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"0/1, or -1 for a whole unlabelled row; got \[1, -1, 0\]"):
        metrics.multilabel_metrics(ML_SCORES[:2], np.array([[1, -1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="must both be"):
        metrics.multilabel_metrics(ML_SCORES, ML_LABELS[:4])


def test_regression_metrics_by_hand():
    # Errors 1, 0, -2, 1 (the NaN row is skipped): MAE = 4/4 = 1, MSE = 6/4 -> RMSE sqrt(1.5).
    # Targets 1, 0, 5, 4 have mean 2.5: SS_tot = 2.25 + 6.25 + 6.25 + 2.25 = 17, so r2 = 1 - 6/17 = 11/17.
    predictions = np.array([2.0, 0.0, 3.0, 100.0, 5.0])
    targets = np.array([1.0, 0.0, 5.0, np.nan, 4.0])
    result = metrics.regression_metrics(predictions, targets)
    assert result == pytest.approx({"mae": 1.0, "rmse": math.sqrt(1.5), "r2": 11 / 17, "count": 4})
    predictions[3] = -7.0  # the unlabelled row's prediction does not matter
    assert metrics.regression_metrics(predictions, targets) == result


def test_regression_metrics_two_outputs_by_hand():
    # Output 0: targets 0, 2, 4 vs 1, 2, 3: |e| sum 2, e^2 sum 2, SS_tot 8 -> r2 3/4.
    # Output 1: targets 1, 1, 4 vs 1, 3, 4: |e| sum 2, e^2 sum 4, mean 2, SS_tot 6 -> r2 1/3.
    # MAE = 4/6, MSE = 6/6 -> RMSE 1, r2 = uniform mean (3/4 + 1/3) / 2 = 13/24. Row 3 (one NaN) is skipped.
    predictions = np.array([[1.0, 1.0], [2.0, 3.0], [3.0, 4.0], [9.0, 9.0]])
    targets = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0], [np.nan, 0.0]])
    result = metrics.regression_metrics(predictions, targets)
    assert result == pytest.approx({"mae": 2 / 3, "rmse": 1.0, "r2": 13 / 24, "count": 3})


def test_regression_metrics_few_rows():
    one = metrics.regression_metrics(np.array([3.0, 1.0]), np.array([1.0, np.nan]))
    assert (one["mae"], one["rmse"], one["count"]) == (2.0, 2.0, 1) and np.isnan(one["r2"])
    none = metrics.regression_metrics(np.array([3.0]), np.array([np.nan]))
    assert none["count"] == 0 and all(np.isnan(none[k]) for k in ("mae", "rmse", "r2"))
    with pytest.raises(ValueError, match="must both be"):
        metrics.regression_metrics(np.zeros(3), np.zeros(2))
