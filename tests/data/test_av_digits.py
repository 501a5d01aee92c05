"""AV-Digits on the real data: split rules, pairing balance, label consistency, reproducibility, errors."""

import collections
import pathlib
import shutil

import numpy as np
import pytest

from mmjax.data import av_digits as avd


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
    return avd.read_mnist(avd.resolve_data_dir() / "mnist5k" / "mnist_5k.csv.gz")


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
        assert all(avd.recording_split(avd.parse_recording(name)[2]) == split for name in recordings[split])
        assert all(avd.image_split(i) == split for i in images[split])
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
        digit, speaker, _ = avd.parse_recording(r["recording"])
        qtype = avd.QUESTION_TYPES[r["question_type"]]
        assert r["audio_digit"] == digit and avd.SPEAKERS[r["speaker"]] == speaker
        assert r["image_digit"] == labels[r["image_index"]]
        assert r["match"] == int(r["image_digit"] == r["audio_digit"])
        assert r["answer"] == avd.answer_index(qtype, r["image_digit"], r["audio_digit"], speaker)
        assert r["question"] in avd.PHRASINGS[qtype]


@pytest.mark.parametrize("split", avd.SPLITS)
def test_pairs_and_questions_are_balanced(records, split):
    rows = records[split]
    assert sum(r["match"] for r in rows) * 2 == len(rows)
    per_type = collections.Counter(r["question_type"] for r in rows)
    assert set(per_type.values()) == {len(rows) // len(avd.QUESTION_TYPES)}
    per_cell = collections.Counter((r["question_type"], r["match"]) for r in rows)
    assert set(per_cell.values()) == {len(rows) // 12}
    phrasings = collections.Counter(r["question"] for r in rows)
    assert len(phrasings) == sum(len(p) for p in avd.PHRASINGS.values())
    mismatched = collections.Counter(r["image_digit"] for r in rows if not r["match"])
    assert len(mismatched) == 10


def test_answers_cover_the_task_classes():
    assert len(avd.ANSWERS) == avd.TASKS["answer"] == 30
    assert avd.answer_index("sum", 9, 9, "theo") == avd.ANSWERS.index("18")
    assert avd.answer_index("larger", 2, 7, 0) == avd.ANSWERS.index("spoken")
    assert avd.answer_index("larger", 7, 2, 0) == avd.ANSWERS.index("written")
    assert avd.answer_index("larger", 4, 4, 0) == avd.ANSWERS.index("equal")
    assert avd.answer_index("same", 4, 4, 0) == avd.ANSWERS.index("yes")
    assert avd.answer_index("speaker", 1, 2, 3) == avd.ANSWERS.index("yweweler")
    with pytest.raises(ValueError, match="colour"):
        avd.answer_index("colour", 1, 2, 3)


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
    path = avd.resolve_data_dir() / "fsdd" / "recordings" / example["recording"].decode()
    np.testing.assert_allclose(example["audio"], avd.audio_features(path), rtol=1e-6, atol=1e-6)
    assert example["audio"].shape[1] == 64 and example["image"].shape == (28, 28)


def _tiny_raw_dir(root: pathlib.Path) -> pathlib.Path:
    """A raw dir with a few real recordings per split and the real MNIST CSV."""
    source = avd.resolve_data_dir()
    (root / "fsdd" / "recordings").mkdir(parents=True)
    (root / "mnist5k").mkdir()
    shutil.copy(source / "mnist5k" / "mnist_5k.csv.gz", root / "mnist5k")
    for name in ["1_theo_0.wav", "2_lucas_1.wav", "3_george_5.wav", "4_jackson_6.wav", "5_nicolas_10.wav"]:
        shutil.copy(source / "fsdd" / "recordings" / name, root / "fsdd" / "recordings")
    return root


@pytest.mark.parametrize("content", [b"RIFF\x00\x00garbage bytes, not a wave" * 4, b""])
def test_bad_wav_fails_the_build_naming_the_file(tmp_path, content):
    raw = _tiny_raw_dir(tmp_path / "raw")
    (raw / "fsdd" / "recordings" / "6_yweweler_11.wav").write_bytes(content)
    with pytest.raises(ValueError, match="6_yweweler_11.wav"):
        avd.load("train", data_dir=raw, tfds_dir=tmp_path / "tfds")


def test_tiny_raw_dir_builds(tmp_path):
    raw = _tiny_raw_dir(tmp_path / "raw")
    source = avd.load("validation", data_dir=raw, tfds_dir=tmp_path / "tfds")
    assert len(source) == 2 * avd.PAIRS_PER_RECORDING["validation"]


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MMJAX_DATA_DIR", raising=False)
    assert (avd.resolve_data_dir() / "fsdd" / "recordings").is_dir()
    monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        avd.resolve_data_dir()
    message = str(err.value)
    assert str(tmp_path) in message and "MMJAX_DATA_DIR" in message
    assert "free-spoken-digit-dataset" in message and "mnist_5k.csv.gz" in message
    with pytest.raises(FileNotFoundError, match="nowhere"):
        avd.resolve_data_dir(tmp_path / "nowhere")


def test_resolve_tfds_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MMJAX_TFDS_DIR", raising=False)
    assert avd.resolve_tfds_dir() == pathlib.Path.home() / ".cache" / "mmjax" / "tensorflow_datasets"
    monkeypatch.setenv("MMJAX_TFDS_DIR", str(tmp_path))
    assert avd.resolve_tfds_dir() == tmp_path
    assert avd.resolve_tfds_dir("elsewhere") == pathlib.Path("elsewhere")


def test_load_rejects_unknown_split(av_digits_dir):
    with pytest.raises(ValueError, match="dev"):
        avd.load("dev", tfds_dir=av_digits_dir)


def test_tokenizer_knows_every_training_phrasing():
    tokenizer = avd.make_tokenizer()
    unknown = tokenizer.vocab.index("[UNK]")
    for phrasings in avd.PHRASINGS.values():
        assert len(phrasings) >= 3
        for phrasing in phrasings:
            ids, _ = tokenizer.encode(phrasing, 32)
            assert unknown not in ids


def test_built_data_loads_without_raw_data(av_digits_dir, tmp_path):
    assert len(avd.load("test", data_dir=tmp_path / "no_raw_data", tfds_dir=av_digits_dir)) == 1200
