"""Own data end to end: a folder data set (RGB JPEGs of another size, 44.1 kHz FLAC, a CSV train split and a
JSONL test split, rows missing a modality, a corrupt file, a path escaping the folder) trains on 8 devices
and on 1 with equal losses, evaluates, and lists its bad rows by name; data sets of two modalities build
models without the third."""

import csv
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import evaluate, predict, train
from mmjax.config import load_config
from mmjax.data import datasets, folder
from mmjax.metrics import read_metrics
from mmjax.model import build_model, dummy_batch

ROOT = pathlib.Path(__file__).parents[1]
LABELS = "same+digits+total"


def _script():
    path = ROOT / "scripts" / "make_example_folder.py"
    spec = importlib.util.spec_from_file_location("make_example_folder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(the example folder with faults, the build cache): 64 train rows (CSV), 24 test rows (JSONL)."""
    base = tmp_path_factory.mktemp("own_data")
    root = _script().make_folder(base / "digits", 64, 24, faults=True)
    return root, base / "cache"


def folder_overrides(cache, **more) -> list[str]:
    values = {"data.tfds_dir": str(cache), "data.ignore": "speaker", "data.build_workers": 1} | more
    return [f"{key}={value}" for key, value in values.items()]


def folder_config(root, cache, labels=LABELS, **more):
    spec = f"{ROOT}/experiments/folder.py:dir={root},labels={labels},group_by=speaker,smoke"
    return load_config(spec, folder_overrides(cache, **more))


def losses_per_step(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_own_folder_trains_on_8_and_1_devices_alike_evaluates_and_lists_bad_rows(example, tmp_path):
    root, cache = example
    assert jax.device_count() == 8
    config = folder_config(root, cache)
    val = train.main(config, tmp_path / "eight")
    assert {"same/accuracy", "digits/map", "digits/micro_f1", "total/mae", "total/r2"} <= set(val)
    written = json.loads((tmp_path / "eight" / "config.json").read_text())
    assert written["train"]["best_metric"] == "same/accuracy"  # the first label's main metric

    command = [sys.executable, "-m", "mmjax.train", "--config"]
    command += [f"experiments/folder.py:dir={root},labels={LABELS},group_by=speaker,smoke"]
    command += ["--workdir", str(tmp_path / "one")] + [f"--config.{o}" for o in folder_overrides(cache)]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert ", 1 devices (mesh data:1)," in finished.stdout
    eight, one = losses_per_step(tmp_path / "eight"), losses_per_step(tmp_path / "one")
    assert sorted(eight) == sorted(one) == list(range(2, config.train.steps + 1, 2))
    np.testing.assert_allclose([one[s] for s in one], [eight[s] for s in one], rtol=1e-5, atol=1e-6)

    summary = evaluate.main(tmp_path / "eight", split="test")
    report = json.loads((tmp_path / "eight" / "eval_test.json").read_text())
    assert report["metrics"] == pytest.approx(summary, nan_ok=True)
    assert len(report["confusion"]["same"]) == 2  # yes / no
    speakers = {key.rsplit("/", 1)[1] for key in summary if key.startswith("same/accuracy/")}
    assert len(speakers) >= 2  # per-group (speaker) accuracy

    built = datasets.built_folder(config)
    bad = {(r["split"], r["row"]): r for r in folder.read_bad_inputs(built)}
    problems = " | ".join(f"{r.get('file', '')} {r['problem']}" for r in bad.values())
    assert ("train", 7) in bad and bad[("train", 7)]["file"].endswith(".flac"), problems  # the corrupt FLAC
    assert ("train", 8) in bad and "outside.jpg" in bad[("train", 8)]["file"], problems  # escaping path
    assert ("test", 3) in bad and "maybe" in bad[("test", 3)]["problem"], problems  # unknown label
    # Predictions from the raw files equal the model's on the built example of the same test row.
    predictor = predict.Predictor.from_workdir(tmp_path / "eight")
    stored = folder.load(built, "test")[0]
    line = (root / "test" / "metadata.jsonl").read_text().splitlines()[int(stored["row"]) - 1]
    raw = json.loads(line)
    given = {"image": root / "test" / raw["image_file_name"], "audio": root / "test" / raw["audio_file_name"]}
    result = predictor(**given, text=raw["caption"])
    batch = jax.tree.map(lambda x: np.asarray(x)[None], predictor.run.data.preprocess(stored))
    outputs, _ = predictor.run.model.apply(predictor.run.variables, batch, train=False)
    same = dict(result["tasks"]["same"]["top"])
    np.testing.assert_allclose(
        [same[name] for name in ("no", "yes")], jax.nn.softmax(outputs["same"][0]), rtol=1e-5, atol=1e-6
    )
    total = predictor.run.data.tasks["total"]
    expected_total = float(outputs["total"][0, 0]) * total.std + total.mean
    assert result["tasks"]["total"]["value"] == pytest.approx(expected_total, rel=1e-5)
    assert set(dict(result["tasks"]["digits"]["top"])) <= set(predictor.run.data.tasks["digits"].classes)
    # Rows missing a modality are kept, marked absent.
    train_source = folder.load(built, "train")
    rows = {int(train_source[i]["row"]): train_source[i] for i in range(len(train_source))}
    if 3 in rows:  # row 3 may have been carved off into validation
        assert not rows[3]["present/image"] and rows[3]["present/audio"]


def _without_column(root, out, column):
    """A copy of the example folder without `column` in its metadata (symlinks to the files would be refused:
    they resolve outside the split folder)."""
    for split in ("train", "test"):
        shutil.copytree(root / split, out / split, ignore=shutil.ignore_patterns("metadata.*"))
    lines = (root / "train" / "metadata.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != column]

    rows = list(csv.reader(lines))
    with open(out / "train" / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([[row[i] for i in keep] for row in rows])
    with open(out / "test" / "metadata.jsonl", "w") as f:
        for line in (root / "test" / "metadata.jsonl").read_text().splitlines():
            row = json.loads(line)
            row.pop(column)
            f.write(json.dumps(row) + "\n")
    return out


@pytest.mark.parametrize("missing", ["audio", "image"])
def test_a_two_modality_folder_has_no_parameters_for_the_third(example, tmp_path, missing):
    root, cache = example
    two = _without_column(root, tmp_path / "two", f"{missing}_file_name")
    config = folder_config(two, cache, **{"train.steps": 2, "train.eval_every": 2})
    data = datasets.from_config(config)
    assert set(data.streams.values()) == {"text", "image", "audio"} - {missing}
    model = build_model(config.model, data.head_sizes(), data.streams, data.text_vocab_size)
    batch = dummy_batch(config.model, data.head_sizes(), streams=data.streams)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
    assert missing not in params and not any(key.startswith(f"{missing}_") for key in params["fusion"])
    val = train.main(config, tmp_path / "run")
    assert np.isfinite(val["total/mae"])


FOLDER_CONFIG = f"{ROOT}/experiments/folder.py"
BAD_COMMANDS = {  # run in tmp_path: workdir "run" does not exist
    "no such folder": (["train", "--config", f"{FOLDER_CONFIG}:dir=/nonexistent,labels=x"], "/nonexistent"),
    "unknown key": (["train", "--config", FOLDER_CONFIG, "--config.data.colour=1"], "'data.colour'"),
    "no run": (["evaluate", "--workdir", "run"], "run/config.json not found"),
    "no checkpoint folder": (["port", "--hf", "/nonexistent", "--out", "ported"], "no such checkpoint"),
}


@pytest.mark.parametrize("case", BAD_COMMANDS)
def test_command_line_errors_name_the_problem_and_exit_2(case, tmp_path):
    (command, *args), named = BAD_COMMANDS[case]
    if command == "train":
        args += ["--workdir", "run"]
    done = subprocess.run(
        [sys.executable, "-m", f"mmjax.{command}", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"mmjax.{command}: error:" in done.stderr and named in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_and_av_digits_train_as_one_mix_and_are_scored_apart(example, av_digits_dir, tmp_path):
    root, cache = example
    folder_member = (
        f"experiments/folder.py:dir={root},labels={LABELS},image_size=28,channels=1,smoke "
        + " ".join(f"--config.{o}" for o in folder_overrides(cache))
    )
    av_member = (  # the members' text streams must have one length: the folder's 16 tokens
        f"experiments/av_digits.py:smoke --config.data.tfds_dir={av_digits_dir} "
        "--config.data.text_len=16 --config.model.text.max_len=16"
    )
    config = load_config(
        f"{ROOT}/experiments/mix.py:{av_member};{folder_member}", ["data.mix_method=round_robin"]
    )
    assert set(config.tasks) == {"answer", "image_digit", "audio_digit", "speaker", "match", "align"} | set(
        LABELS.split("+")
    )
    val = train.main(config, tmp_path)
    assert {"answer/accuracy", "same/accuracy", "av_digits/answer/accuracy", "digits/same/accuracy"} <= set(
        val
    )
    test = evaluate.main(tmp_path, split="test")
    assert test["same/accuracy"] == pytest.approx(test["digits/same/accuracy"])
    assert np.isfinite(test["digits/total/mae"]) and 0 <= test["av_digits/answer/accuracy"] <= 1
    assert not any(key.startswith(("av_digits/same", "digits/answer")) for key in test)
