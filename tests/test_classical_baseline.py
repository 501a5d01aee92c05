"""scripts/classical_baseline.py: SVCs on the project's own splits and answers by rule on the real test pairs;
the answers it scores are the ones mmjax.data.av_digits_questions.answer_index gives for its predictions."""

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import classical_baseline  # noqa: E402
import vs_baseline  # noqa: E402

from mmjax.data.av_digits_questions import QUESTION_TYPES  # noqa: E402


def test_baseline_scores_every_question_type_of_the_test_pairs(av_digits_dir, tmp_path):
    out = tmp_path / "baseline.json"
    result = classical_baseline.main(["--tfds-dir", str(av_digits_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["test_pairs"] == 1200 and set(result["answer_by_question_type"]) == set(QUESTION_TYPES)
    for component in ("image_digit", "audio_digit", "speaker"):  # far above chance (0.1, 0.1, 0.17)
        assert 0.9 < result[component] <= 1.0, component
    per_type = result["answer_by_question_type"]
    assert result["answer"] == pytest.approx(np.mean(list(per_type.values())))  # 200 pairs per type
    assert per_type["written_digit"] < per_type["spoken_digit"]  # pixels are the weaker input


def test_mfcc_statistics_are_four_summaries_of_twenty_coefficients():
    wave = np.sin(np.linspace(0, 400 * np.pi, 8000)).astype(np.float32) * 0.3
    features = classical_baseline.mfcc_statistics(wave)
    assert features.shape == (80,) and np.isfinite(features).all()
    np.testing.assert_allclose((features[40:60] + features[60:80]) / 2, features[:20], rtol=0.05, atol=0.5)


def test_a_run_is_printed_beside_the_committed_baseline_with_a_verdict_per_row(tmp_path, capsys):
    baseline = json.loads(vs_baseline.BASELINE.read_text())
    per_type = baseline["answer_by_question_type"]
    run = {"answer/accuracy": baseline["answer"] + 0.01}
    run |= {f"answer/accuracy/{q}": min(v + 0.01, 1.0) for q, v in per_type.items()}
    run["answer/accuracy/sum"] = per_type["sum"] - 0.02
    (tmp_path / "eval_test.json").write_text(json.dumps({"metrics": run}))
    vs_baseline.main([str(tmp_path)])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:] if line[0] != "a")
    assert lines["sum"].endswith("BELOW") and lines["spoken_digit"].endswith("above")
    assert lines["speaker"].endswith("level (both perfect)") == (per_type["speaker"] == 1.0)
    (tmp_path / "eval_test.json").write_text(json.dumps({"metrics": {"answer/accuracy": 0.5}}))
    with pytest.raises(ValueError, match="answer/accuracy/spoken_digit"):
        vs_baseline.main([str(tmp_path)])
