"""AV-Digits on the real data: split rules, pairing balance, label consistency, reproducibility, errors."""

import collections
import gzip
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import soundfile

from mmjax.data import av_digits as avd
from mmjax.data import av_digits_questions as avq
from mmjax.data import av_digits_sources as avs

ROOT = pathlib.Path(__file__).parents[2]


@pytest.fixture(scope="module")
def records(av_digits_dir) -> dict[str, list[dict]]:
    """Every built example of every split, without the arrays."""
    out = {}
    for split in avd.SPLITS:
        source = avd.load(split, tfds_dir=av_digits_dir)
        out[split] = [
            {
                k: (v.decode() if isinstance(v, bytes) else v)
                for k, v in source[i].items()
                if k not in ("audio", "image")
            }
            for i in range(len(source))
        ]
    return out


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    images, labels, bad = avs.read_mnist(avs.resolve_data_dir() / "mnist5k" / "mnist_5k.csv.gz")
    assert bad == {}
    return images, labels


def test_split_sizes(records):
    assert {split: len(rows) for split, rows in records.items()} == {
        "train": 9600,
        "validation": 600,
        "test": 1200,
    }


def test_splits_follow_rules_and_never_share_sources(records):
    recordings, images = {}, {}
    for split, rows in records.items():
        recordings[split] = {r["recording"] for r in rows}
        images[split] = {int(r["image_index"]) for r in rows}
        assert all(avs.recording_split(avs.parse_recording(name)[2]) == split for name in recordings[split])
        assert all(avs.image_split(i) == split for i in images[split])
        counts = collections.Counter(r["recording"] for r in rows)
        assert set(counts.values()) == {avd.PAIRS_PER_RECORDING[split]}
    assert (
        len(recordings["train"]) == 2400 and len(recordings["validation"]) == len(recordings["test"]) == 300
    )
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not recordings[a] & recordings[b]
        assert not images[a] & images[b]


@pytest.mark.parametrize("split", avd.SPLITS)
def test_labels_are_consistent(records, mnist, split):
    _, labels = mnist
    for r in records[split]:
        digit, speaker, _ = avs.parse_recording(r["recording"])
        qtype = avq.QUESTION_TYPES[r["question_type"]]
        assert r["audio_digit"] == digit and avq.SPEAKERS[r["speaker"]] == speaker
        assert r["image_digit"] == labels[r["image_index"]]
        assert r["match"] == int(r["image_digit"] == r["audio_digit"])
        assert r["answer"] == avq.answer_index(qtype, r["image_digit"], r["audio_digit"], speaker)
        assert r["question"] in avq.PHRASINGS[qtype]


@pytest.mark.parametrize("split", avd.SPLITS)
def test_pairs_and_questions_are_balanced(records, split):
    rows = records[split]
    assert sum(r["match"] for r in rows) * 2 == len(rows)
    per_type = collections.Counter(r["question_type"] for r in rows)
    assert set(per_type.values()) == {len(rows) // len(avq.QUESTION_TYPES)}
    per_cell = collections.Counter((r["question_type"], r["match"]) for r in rows)
    assert set(per_cell.values()) == {len(rows) // 12}
    phrasings = collections.Counter(r["question"] for r in rows)
    total = sum(len(p) for p in avq.PHRASINGS.values())
    if len(rows) >= 5 * total:  # every phrasing is drawn where each expects 5 draws or more (not validation)
        assert len(phrasings) == total
    mismatched = collections.Counter(r["image_digit"] for r in rows if not r["match"])
    assert len(mismatched) == 10


def test_answers_cover_the_task_classes():
    assert len(avq.ANSWERS) == avd.TASKS["answer"] == 30
    assert avq.answer_index("sum", 9, 9, "theo") == avq.ANSWERS.index("18")
    assert avq.answer_index("larger", 2, 7, 0) == avq.ANSWERS.index("spoken")
    assert avq.answer_index("larger", 7, 2, 0) == avq.ANSWERS.index("written")
    assert avq.answer_index("larger", 4, 4, 0) == avq.ANSWERS.index("equal")
    assert avq.answer_index("same", 4, 4, 0) == avq.ANSWERS.index("yes")
    assert avq.answer_index("speaker", 1, 2, 3) == avq.ANSWERS.index("yweweler")
    with pytest.raises(ValueError, match="colour"):
        avq.answer_index("colour", 1, 2, 3)


def test_build_is_reproducible(records, tmp_path):
    """Regenerating the validation split from the raw data gives exactly the built pairs."""
    builder = avd.AvDigits(data_dir=str(tmp_path), file_format="array_record")
    regenerated = [ex for _, ex in builder._split_generators(None)["validation"]]
    key = lambda r: (r["recording"], int(r["image_index"]), r["question"])  # noqa: E731
    assert sorted(map(key, regenerated)) == sorted(map(key, records["validation"]))
    plan = avd.plan_pairs(np.arange(30) % 10, np.arange(100) % 10, 4, seed=3)
    assert plan == avd.plan_pairs(np.arange(30) % 10, np.arange(100) % 10, 4, seed=3)
    assert plan != avd.plan_pairs(np.arange(30) % 10, np.arange(100) % 10, 4, seed=4)


def test_stored_audio_is_the_frontend_output(av_digits_dir):
    example = avd.load("test", tfds_dir=av_digits_dir)[0]
    path = avs.resolve_data_dir() / "fsdd" / "recordings" / example["recording"].decode()
    np.testing.assert_allclose(example["audio"], avs.audio_features(path), rtol=1e-6, atol=1e-6)
    assert example["audio"].shape[1] == 64 and example["image"].shape == (28, 28)


def _tiny_raw_dir(root: pathlib.Path) -> pathlib.Path:
    """A raw dir with a few real recordings per split and the real MNIST CSV."""
    source = avs.resolve_data_dir()
    (root / "fsdd" / "recordings").mkdir(parents=True)
    (root / "mnist5k").mkdir()
    shutil.copy(source / "mnist5k" / "mnist_5k.csv.gz", root / "mnist5k")
    for name in ["1_theo_0.wav", "2_lucas_1.wav", "3_george_5.wav", "4_jackson_6.wav", "5_nicolas_10.wav"]:
        shutil.copy(source / "fsdd" / "recordings" / name, root / "fsdd" / "recordings")
    return root


def _add_bad_inputs(raw: pathlib.Path) -> dict[str, str]:
    """Writes a bad file of each kind (all training takes) and 3 bad MNIST rows; {what: expected problem}."""
    recordings = raw / "fsdd" / "recordings"
    (recordings / "6_yweweler_11.wav").write_bytes(b"RIFF\x00\x00garbage bytes, not a wave" * 4)
    (recordings / "7_yweweler_12.wav").write_bytes(b"")
    soundfile.write(recordings / "8_theo_13.wav", np.zeros(4000, np.float32), 8000)
    soundfile.write(recordings / "9_theo_14.wav", np.full(4000, 0.1, np.float32), 44100)
    wave = np.full(4000, 0.1, np.float32)
    wave[7] = np.nan
    soundfile.write(recordings / "0_lucas_15.wav", wave, 8000, subtype="FLOAT")
    mnist = raw / "mnist5k" / "mnist_5k.csv.gz"
    with gzip.open(mnist, "rt") as f:
        lines = f.read().splitlines()
    lines[2] = ",".join(["nan"] + lines[2].split(",")[1:])  # rows 3-5 are training images
    lines[3] = ",".join(lines[3].split(",")[:-5])
    lines[4] = ",".join(["300"] + lines[4].split(",")[1:])
    with gzip.open(mnist, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return {
        str(recordings / "6_yweweler_11.wav"): "cannot read audio file",
        str(recordings / "7_yweweler_12.wav"): "the file is empty",
        str(recordings / "8_theo_13.wav"): "silent",
        str(recordings / "9_theo_14.wav"): "sample rate 44100 Hz",
        str(recordings / "0_lucas_15.wav"): "non-finite samples",
        f"{mnist} row 3": "non-integer or non-finite values",
        f"{mnist} row 4": "780 values, expected 784 pixels and a label",
        f"{mnist} row 5": "pixels outside 0..255",
    }


def test_bad_raw_inputs_are_skipped_and_listed(tmp_path, capsys):
    raw = _tiny_raw_dir(tmp_path / "raw")
    expected = _add_bad_inputs(raw)
    train_split = avd.load("train", data_dir=raw, tfds_dir=tmp_path / "tfds")
    # Only the good training recording (5_nicolas_10) is paired; no bad image is drawn.
    assert len(train_split) == avd.PAIRS_PER_RECORDING["train"]
    assert {train_split[i]["recording"].decode() for i in range(len(train_split))} == {"5_nicolas_10.wav"}
    assert not {int(train_split[i]["image_index"]) for i in range(len(train_split))} & {2, 3, 4}
    report = next((tmp_path / "tfds").rglob(avd.BAD_INPUTS))
    listed = json.loads(report.read_text())
    assert sorted(listed) == sorted(expected)
    for what, problem in expected.items():
        assert problem in listed[what], (what, listed[what])
    assert f"skipped {len(expected)} bad raw inputs" in capsys.readouterr().out


def test_a_bad_raw_input_stops_the_build_when_asked(tmp_path):
    raw = _tiny_raw_dir(tmp_path / "raw")
    _add_bad_inputs(raw)
    with pytest.raises(ValueError, match=r"bad input .*mnist_5k.csv.gz row 3: non-integer"):
        avd.load("train", data_dir=raw, tfds_dir=tmp_path / "tfds", on_bad="stop")
    (raw / "mnist5k" / "mnist_5k.csv.gz").unlink()
    shutil.copy(avs.resolve_data_dir() / "mnist5k" / "mnist_5k.csv.gz", raw / "mnist5k")
    with pytest.raises(ValueError, match=r"bad input .*_1[1-5]\.wav: "):
        avd.load("train", data_dir=raw, tfds_dir=tmp_path / "tfds2", on_bad="stop")


def test_tiny_raw_dir_builds(tmp_path):
    raw = _tiny_raw_dir(tmp_path / "raw")
    source = avd.load("validation", data_dir=raw, tfds_dir=tmp_path / "tfds")
    assert len(source) == 2 * avd.PAIRS_PER_RECORDING["validation"]


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MMJAX_DATA_DIR", raising=False)
    assert (avs.resolve_data_dir() / "fsdd" / "recordings").is_dir()
    monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        avs.resolve_data_dir()
    message = str(err.value)
    assert str(tmp_path) in message and "MMJAX_DATA_DIR" in message
    assert "free-spoken-digit-dataset" in message and "mnist_5k.csv.gz" in message
    with pytest.raises(FileNotFoundError, match="nowhere"):
        avs.resolve_data_dir(tmp_path / "nowhere")


def test_resolve_tfds_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MMJAX_TFDS_DIR", raising=False)
    assert avs.resolve_tfds_dir() == pathlib.Path.home() / ".cache" / "mmjax" / "tensorflow_datasets"
    monkeypatch.setenv("MMJAX_TFDS_DIR", str(tmp_path))
    assert avs.resolve_tfds_dir() == tmp_path
    assert avs.resolve_tfds_dir("elsewhere") == pathlib.Path("elsewhere")


def test_load_rejects_unknown_split(av_digits_dir):
    with pytest.raises(ValueError, match="dev"):
        avd.load("dev", tfds_dir=av_digits_dir)


def test_tokenizer_knows_every_training_phrasing():
    tokenizer = avq.make_tokenizer()
    unknown = tokenizer.vocab.index("[UNK]")
    for phrasings in avq.PHRASINGS.values():
        assert len(phrasings) >= 3
        for phrasing in phrasings:
            ids, _ = tokenizer.encode(phrasing, 32)
            assert unknown not in ids


@pytest.mark.parametrize(
    "name",
    [
        "av_digits_paraphrases",
        "av_digits_reworded",
        "av_digits_blind",
        "av_digits_unseen",
        "av_digits_sealed",
    ],
)
def test_paraphrase_files_are_unseen_wordings(name):
    """Every phrasing of a paraphrase file is not a training phrasing and has a word no training phrasing
    has (a new word, not only new order), so the files measure reading questions, not recalling them."""
    words = lambda phrasing: set(re.findall(r"[a-z]+", phrasing.lower()))  # noqa: E731
    seen = set().union(*(words(p) for phrasings in avq.PHRASINGS.values() for p in phrasings))
    questions = avq.load_questions(ROOT / "experiments" / f"{name}.json")
    assert set(questions) == set(avq.QUESTION_TYPES)
    for qtype, phrasings in questions.items():
        for phrasing in phrasings:
            assert phrasing not in avq.PHRASINGS[qtype] and words(phrasing) - seen, phrasing


def test_built_data_loads_without_raw_data(av_digits_dir, tmp_path):
    assert len(avd.load("test", data_dir=tmp_path / "no_raw_data", tfds_dir=av_digits_dir)) == 1200
