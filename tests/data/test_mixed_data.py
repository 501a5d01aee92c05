"""Several data sets in one run (mixture.combine, data.mix): a digit-image set with captions and a text-only
set with a regression label train together; each example is missing the other set's inputs and labels,
which are masked out of the losses; every set is scored on its own split."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmjax import evaluate, train
from mmjax.config import load_config
from mmjax.data import from_python, mixture
from mmjax.step import task_loss

IMAGES = {"photo": "image", "note": "text", "digit": "classes"}
NOTES = {"remark": "text", "ink": "regression"}


def config_for(labels: str, **overrides):
    values = {"data.image_size": 8, "model.image.patch_size": 4, "train.steps": 4, "train.eval_every": 4}
    spec = f"experiments/folder.py:labels={labels},image_size=8,channels=1,smoke"
    return load_config(spec, [f"{k}={v}" for k, v in (values | overrides).items()])


@pytest.fixture(scope="module")
def members():
    """{name: DataSet}: 96 + 32 captioned digit images (digit), 48 + 16 remarks (ink, another vocabulary)."""
    digits = load_digits()
    images = [
        {"photo": (image * 16).astype(np.uint8), "note": f"scan {k % 3} of digit", "digit": str(target)}
        for k, (image, target) in enumerate(zip(digits.images[:128], digits.target[:128], strict=True))
    ]
    notes = [{"remark": f"pen stroke {k % 4} heavy", "ink": float(k % 9)} for k in range(64)]
    return {
        "scans": from_python.data_set(
            {"train": images[:96], "test": images[96:]}, IMAGES, config_for("digit")
        ),
        "notes": from_python.data_set({"train": notes[:48], "test": notes[48:]}, NOTES, config_for("ink")),
    }


def test_mixed_source_draws_each_source_in_proportion_and_interleaves():
    sources = [[{"i": i} for i in range(10)], [{"i": i} for i in range(3)]]
    mixed = mixture.MixedSource(sources, [0.5, 0.5])  # 3 examples upsampled to the 10 of the other
    assert len(mixed) == 20 and np.bincount(mixed.member).tolist() == [10, 10]
    drawn = [mixed[i] for i in range(len(mixed))]
    assert sorted(e["i"] for e in drawn if e[mixture.MEMBER] == 1) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(e["i"] for e in drawn if e[mixture.MEMBER] == 0) == list(range(10))
    assert mixed.member[:4].tolist() == [0, 1, 0, 1]  # the sources take turns
    concatenated = mixture.MixedSource(sources)
    assert len(concatenated) == 13 and np.bincount(concatenated.member).tolist() == [10, 3]
    assert concatenated.member[:7].tolist() == [0, 1, 0, 1, 0, 1, 0]
    with pytest.raises(IndexError):
        concatenated[13]
    with pytest.raises(ValueError, match="needs examples"):
        mixture.MixedSource([sources[0], []])


def test_a_mixed_example_has_every_field_with_the_other_sets_masked(members):
    probabilities = mixture.sampling_probabilities([96 * 9 // 10, 48 * 9 // 10], "round_robin")
    mixed = mixture.combine(members, probabilities)
    assert mixed.streams == {"image": "image", "text": "text"}
    assert set(mixed.tasks) == {"digit", "ink"} and mixed.name == "scans+notes"
    train_split = mixed.load("train")
    assert np.bincount(train_split.member).tolist() == [86, 86]  # round robin: equal shares
    by_member = {}
    for i in range(len(train_split)):
        by_member.setdefault(int(train_split.member[i]), train_split[i])
    scan, note = (mixed.preprocess(by_member[k]) for k in (0, 1))
    assert scan["present"] == {"image": True, "text": True} and np.isnan(scan["labels/ink"])
    assert note["present"] == {"image": False, "text": True} and note["labels/digit"] == -1
    assert note["image"].shape == scan["image"].shape and not note["image"].any()
    # One vocabulary over both sets' words: each text encodes as the merged tokenizer encodes it.
    for example, text in ((scan, by_member[0]["note"]), (note, by_member[1]["remark"])):
        np.testing.assert_array_equal(example["text"], mixed.tokenizer.encode(text, 16)[0])
    assert {"scan", "pen", "heavy"} <= set(mixed.tokenizer.vocab) and mixed.text_vocab_size > 8
    # The labels a set lacks add nothing to the loss.
    logits = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    assert float(task_loss("classes", logits, np.array([-1, -1]))) == 0.0
    assert float(task_loss("regression:mse", logits[:, :1], np.array([np.nan, np.nan]))) == 0.0


@pytest.mark.slow  # the default run trains a mix in test_folder_train.py (a folder and AV-Digits)
def test_mixed_sets_train_together_and_each_is_scored_on_its_own_split(members, tmp_path):
    probabilities = mixture.sampling_probabilities([86, 43], "proportional")
    mixed = mixture.combine(members, probabilities)
    config = config_for("digit+ink")
    val = train.main(config, tmp_path, data=mixed)
    assert {"digit/accuracy", "ink/r2", "scans/digit/accuracy", "notes/ink/mae"} <= set(val)
    assert not any(key.startswith(("scans/ink", "notes/digit")) for key in val)
    test = evaluate.main(tmp_path, split="test", data=mixed)
    assert test["digit/accuracy"] == pytest.approx(test["scans/digit/accuracy"])  # only scans have digits
    assert test["ink/mae"] == pytest.approx(test["notes/ink/mae"])
    assert 0 <= test["digit/accuracy"] <= 1 and np.isfinite(test["ink/mae"])
    table = evaluate.format_table(test, mixed.tasks).splitlines()
    assert any(line.startswith("scans/digit ") and "accuracy" in line for line in table)
    assert any(line.startswith("notes/ink ") and "mae" in line for line in table)


def test_members_must_agree_on_input_sizes_and_task_classes(members):
    digits = load_digits()
    rows = [
        {"photo": (image * 16).astype(np.uint8), "note": "x", "digit": str(target)}
        for image, target in zip(digits.images[:20], digits.target[:20], strict=True)
    ]
    bigger = from_python.data_set({"train": rows}, IMAGES, config_for("digit", **{"data.image_size": 16}))
    with pytest.raises(ValueError, match=r"'image' is float32\[16, 16, 1\] in big but float32\[8, 8, 1\]"):
        mixture.combine({"scans": members["scans"], "big": bigger}, [0.5, 0.5])
    ones = [dict(row, digit="1") for row in rows]
    fewer = from_python.data_set({"train": ones}, IMAGES, config_for("digit"))
    with pytest.raises(ValueError, match=r"task 'digit' is Task\(kind='classes', classes=\('1',\)"):
        mixture.combine({"scans": members["scans"], "ones": fewer}, [0.5, 0.5])


def test_the_metrics_table_gives_each_member_its_rows_and_groups():
    summary = {
        "answer/accuracy": 0.5,
        "av_digits/audio_digit/accuracy": 0.25,
        "av_digits/answer/accuracy/larger": 0.125,
        "answer/accuracy/same": 0.75,
    }
    lines = evaluate.format_table(summary, ["answer", "audio_digit"]).splitlines()
    assert lines[0].split() == ["answer", "accuracy", "0.5000"]
    assert lines[1].split() == ["av_digits/audio_digit", "accuracy", "0.2500"]
    assert ["group", "av_digits/answer", "accuracy"] in [line.split() for line in lines]
    assert ["larger", "0.1250"] in [line.split() for line in lines]
