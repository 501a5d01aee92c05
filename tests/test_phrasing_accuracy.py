"""scripts/phrasing_accuracy.py: each phrasing of a question file scored alone on a trained run."""

import importlib.util
import json
import pathlib
import shutil

import pytest

from mmjax import evaluate
from mmjax.data.av_digits_questions import PHRASINGS

ROOT = pathlib.Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("phrasing_accuracy", ROOT / "scripts" / "phrasing_accuracy.py")
phrasing_accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(phrasing_accuracy)

pytestmark = pytest.mark.xdist_group("smoke_run")  # the worker that trains the smoke_run fixture


def test_each_phrasing_is_scored_alone_on_its_types_questions(smoke_run, tmp_path):
    run = shutil.copytree(smoke_run, tmp_path / "run")  # its evaluation files stay out of the shared run
    questions = {t: p[:2] for t, p in PHRASINGS.items()} | {"speaker": PHRASINGS["speaker"][:1]}
    file = tmp_path / "two_each.json"
    file.write_text(json.dumps(questions))
    rows = phrasing_accuracy.main([str(run), str(file)])["two_each"]
    assert [(t, p) for t, p, _ in rows] == [(t, p[0]) for t, p in questions.items()] + [
        (t, p[1]) for t, p in questions.items() if len(p) > 1
    ]
    alone = tmp_path / "alone.json"  # the second slot's phrasings as a file of their own
    alone.write_text(json.dumps({t: [p[-1]] for t, p in questions.items()}))
    summary = evaluate.main(run, "test", questions=str(alone))
    second = {t: accuracy for t, p, accuracy in rows[len(questions) :]}
    assert second == {t: summary[f"answer/accuracy/{t}"] for t in second}
    assert (run / "eval_test_questions-two_each-1.json").is_file()
    assert not list(smoke_run.glob("eval_test_questions-*"))


def test_slots_repeat_the_last_phrasing_of_shorter_types():
    slots = phrasing_accuracy.slots({"sum": ["a", "b", "c"], "same": ["x"]})
    assert slots == [{"sum": [p], "same": ["x"]} for p in "abc"]
