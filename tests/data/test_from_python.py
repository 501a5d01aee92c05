"""A data set from Python sources (lists of dicts, as a grain source or a Hugging Face Dataset would give):
real scikit-learn digit images with a text column and three label kinds train, evaluate and predict."""

import numpy as np
import PIL.Image
import pytest
from sklearn.datasets import load_digits

from mmjax import evaluate, predict, train
from mmjax.config import load_config
from mmjax.data import from_python

COLUMNS = {"photo": "image", "note": "text", "digit": "classes", "tags": "multilabel", "ink": "regression"}


def rows(images, targets) -> list[dict]:
    """One row per image: the 8x8 digit as a PIL image (0..255), a note, and its labels."""
    out = []
    for k, (image, digit) in enumerate(zip(images, targets, strict=True)):
        picture = PIL.Image.fromarray((image * 16).clip(0, 255).astype(np.uint8))
        tags = ["even" if digit % 2 == 0 else "odd"] + (["big"] if digit > 4 else [])
        out.append(
            {
                "photo": None if k % 7 == 3 else picture,  # some rows have no image
                "note": f"scan number {k % 5}",
                "digit": str(digit),
                "tags": tags,
                "ink": float(image.sum() / 64),
            }
        )
    return out


@pytest.fixture(scope="module")
def splits():
    digits = load_digits()
    images, targets = digits.images, digits.target
    return {"train": rows(images[:160], targets[:160]), "test": rows(images[160:208], targets[160:208])}


def config_for(**overrides):
    values = {"data.image_size": 8, "model.image.patch_size": 4, "train.steps": 4, "train.eval_every": 4}
    values |= overrides
    spec = "experiments/folder.py:labels=digit+tags+ink,image_size=8,channels=1,smoke"
    return load_config(spec, [f"{k}={v}" for k, v in values.items()])


def test_python_rows_train_evaluate_and_predict_with_no_audio_parameters(splits, tmp_path):
    config = config_for()
    data = from_python.data_set(splits, COLUMNS, config)
    assert data.streams == {"image": "image", "text": "text"}
    assert data.tasks["digit"].classes == tuple(str(d) for d in range(10))  # numeric order, not "10" < "2"
    assert data.tasks["tags"].classes == ("big", "even", "odd")
    train_rows = data.load("train")
    assert len(train_rows) + len(data.load("validation")) == 160  # validation carved from train
    ink = np.asarray([train_rows[i]["ink"] for i in range(len(train_rows))])
    assert (data.tasks["ink"].mean, data.tasks["ink"].std) == pytest.approx((ink.mean(), ink.std()))
    row = splits["train"][3]  # no image; the digit 3: odd, not big
    example = data.preprocess(row)
    assert not example["present"]["image"] and example["present"]["text"]
    assert example["labels/tags"].tolist() == [0, 0, 1] and example["labels/digit"] == 3
    assert example["labels/ink"] == pytest.approx((row["ink"] - ink.mean()) / ink.std(), rel=1e-5)
    val = train.main(config, tmp_path, data=data)
    assert {"digit/accuracy", "tags/map", "ink/r2"} <= set(val)
    assert "audio" not in evaluate.restore_run(tmp_path, data=data).variables["params"]
    test = evaluate.main(tmp_path, split="test", data=data)
    assert 0 <= test["digit/accuracy"] <= 1 and np.isfinite(test["ink/mae"])
    predictor = predict.Predictor.from_workdir(tmp_path, data=data)
    result = predictor(image=np.asarray(splits["test"][0]["photo"]), text="scan number 0")
    assert result["present"] == ["image", "text"] and np.isfinite(result["tasks"]["ink"]["value"])
    assert {name for name, _ in result["tasks"]["digit"]["top"]} <= set(data.tasks["digit"].classes)


def test_a_test_label_unseen_in_train_is_named(splits):
    bad = dict(splits, test=[*splits["test"][:5], dict(splits["test"][5], digit="eleven")])
    with pytest.raises(ValueError, match=r"test row 5: label 'eleven' in column 'digit'"):
        from_python.data_set(bad, COLUMNS, config_for())


def test_unknown_column_kinds_and_a_missing_train_split_are_errors(splits):
    with pytest.raises(ValueError, match="column kinds {'photo': 'video'}"):
        from_python.data_set(splits, {**COLUMNS, "photo": "video"}, config_for())
    with pytest.raises(ValueError, match="needs a non-empty 'train' split"):
        from_python.data_set({"test": splits["test"]}, COLUMNS, config_for())
