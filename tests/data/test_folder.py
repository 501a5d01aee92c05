"""Own data in a folder (mmjax.data.folder): schema inference, stored examples, bad rows, carved validation,
caching, resuming, and jsonl/csv/parquet metadata, on the example folder script's real FSDD/MNIST rows and on
small hand-made folders."""

import csv
import dataclasses
import importlib.util
import json
import math
import os
import pathlib

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmjax.data import audio, folder, folder_decode, folder_schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
LABELS = ("same", "digits", "total")


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_example_folder", ROOT / "scripts" / "make_example_folder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


@pytest.fixture(scope="module", autouse=True)
def small_shards():
    """Shards of 16 rows: the example's 60 train rows make several shards (and as many carved ones)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(folder, "SHARD_ROWS", 16)
        yield


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> pathlib.Path:
    """The example folder with faults: 60 train rows (CSV), 20 test rows (jsonl), and a real image where the
    escaping path points."""
    base = tmp_path_factory.mktemp("own")
    root = script.make_folder(base / "digits", 60, 20, faults=True)
    outside = (root / "train" / script.ESCAPING_PATH).resolve()
    assert outside.parent == base
    Image.new("RGB", (8, 8), (255, 0, 0)).save(outside)
    return root


def _config(root, **overrides) -> folder.FolderConfig:
    settings = dict(root=str(root), labels=LABELS, ignore=("speaker",), image_size=(32, 32))
    return folder.FolderConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def built(example, tmp_path_factory):
    """(built folder, files PIL opened while building) of the example folder, decoded in this process."""
    opened = []
    real_open = Image.open

    def recording_open(path, *args, **kwargs):
        opened.append(pathlib.Path(path).resolve())
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "open", recording_open)
        out = folder.build(_config(example), tmp_path_factory.mktemp("cache"), workers=1)
    return out, opened


def _metadata(root: pathlib.Path, split: str) -> dict[int, dict]:
    """{row number: row} of the example's train CSV or test jsonl."""
    if split == "train":
        with open(root / "train" / "metadata.csv", newline="") as f:
            return dict(enumerate(csv.DictReader(f), start=1))
    lines = (root / "test" / "metadata.jsonl").read_text().splitlines()
    return {i: json.loads(line) for i, line in enumerate(lines, start=1)}


def _by_row(out: pathlib.Path, *splits: str) -> dict[int, dict]:
    examples = {}
    for split in splits:
        source = folder.load(out, split)
        for i in range(len(source)):
            example = source[i]
            assert example["row"] not in examples
            examples[example["row"]] = example
    return examples


def test_schema(example, built):
    out, _ = built
    schema = folder.read_schema(out)
    assert schema.streams == {
        "image": {"kind": "image", "column": "image_file_name"},
        "audio": {"kind": "audio", "column": "audio_file_name"},
        "text": {"kind": "text", "column": "caption"},
    }
    assert list(schema.streams) == ["image", "audio", "text"]
    assert schema.tasks["same"] == {"kind": "classes", "classes": ["no", "yes"]}
    assert schema.tasks["total"] == {"kind": "regression", "classes": []}
    train = _metadata(example, "train").values()
    names = sorted({d for row in train if row["digits"] for d in json.loads(row["digits"])})
    assert schema.tasks["digits"] == {"kind": "multilabel", "classes": names}
    assert schema.meta == ("speaker",)
    assert schema.validation == {"from": "train", "fraction": 0.1, "seed": 0}
    bad = folder.read_bad_inputs(out)
    assert schema.splits["train"] + schema.splits["validation"] + sum(b["split"] != "test" for b in bad) == 60
    assert schema.splits["test"] + sum(b["split"] == "test" for b in bad) == 20
    assert schema.splits["validation"] > 0
    assert folder.Schema.from_json(schema.to_json()) == schema
    assert folder_schema.scan(_config(example)) == folder.Schema(**{**schema.__dict__, "splits": {}})


def test_examples_shapes_and_values(example, built):
    out, _ = built
    examples = _by_row(out, "train", "validation")
    rows = _metadata(example, "train")
    schema = folder.read_schema(out)
    row = next(n for n in (1, 2, 10, 11) if n in examples)
    ex, meta = examples[row], rows[row]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    with Image.open(example / "train" / meta["image_file_name"]) as image:
        expected = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(ex["image"], expected)
    assert ex["audio"].dtype == np.float32 and ex["audio"].shape[1] == 64
    wave, rate = audio.load_wav(example / "train" / meta["audio_file_name"])
    assert rate == 44100
    features = audio.normalize(audio.log_mel(audio.resample(wave, rate, 16000), 16000))
    np.testing.assert_allclose(ex["audio"], features, rtol=1e-5, atol=1e-5)
    assert ex["audio"].shape[0] == 1 + math.ceil(len(wave) * 16000 / rate) // 160
    assert ex["text"].decode() == meta["caption"]
    assert ex["meta/speaker"].decode() == meta["speaker"]
    assert ex["source_split"].decode() == "train"
    assert all(ex[f"present/{s}"] for s in ("image", "audio", "text"))
    assert ex["labels/same"] == ["no", "yes"].index(meta["same"])
    names = schema.tasks["digits"]["classes"]
    hot = ex["labels/digits"]
    assert hot.dtype == np.int8 and hot.shape == (len(names),)
    assert {names[i] for i in np.flatnonzero(hot)} == set(json.loads(meta["digits"]))
    assert isinstance(ex["labels/total"], float) and ex["labels/total"] == float(meta["total"])


def test_missing_modalities_and_unlabelled_rows(built):
    out, _ = built
    train = _by_row(out, "train", "validation")
    faults = script.FAULT_ROWS["train"]
    for row in faults["missing_image"]:
        assert train[row]["present/image"] is False and train[row]["present/audio"] is True
        assert train[row]["image"].shape == (32, 32, 3) and not train[row]["image"].any()
    for row in faults["missing_audio"]:
        assert train[row]["present/audio"] is False and train[row]["present/image"] is True
        assert train[row]["audio"].shape == (0, 64)
    test = _by_row(out, "test")
    for examples, row in (
        (train, faults["unlabelled"][0]),
        (test, script.FAULT_ROWS["test"]["unlabelled"][0]),
    ):
        ex = examples[row]
        assert ex["labels/same"] == -1
        assert (ex["labels/digits"] == -1).all()
        assert math.isnan(ex["labels/total"])
        assert ex["present/image"] and ex["present/audio"] and ex["present/text"]
    row = script.FAULT_ROWS["test"]["missing_image"][0]
    assert test[row]["present/image"] is False and test[row]["source_split"] == b"test"


def test_carved_validation_is_recorded_and_disjoint(example, built):
    out, _ = built
    bad_rows = {b["row"] for b in folder.read_bad_inputs(out) if b["split"] != "test"}
    train, validation = (set(_by_row(out, split)) for split in ("train", "validation"))
    assert train and validation and not train & validation
    assert train | validation | bad_rows == set(range(1, 61))
    config = _config(example)
    assert validation == {r for r in range(1, 61) if folder._carved(config, r)} - bad_rows
    assert all(ex["source_split"] == b"train" for ex in _by_row(out, "validation").values())
    assert len(folder.load(out, "validation")) == folder.read_schema(out).splits["validation"]


def test_bad_inputs_are_listed_and_escaping_path_never_opened(example, built):
    out, opened = built
    bad = {(b["split"], b["row"]): b for b in folder.read_bad_inputs(out)}
    train_csv, test_jsonl = str(example / "train" / "metadata.csv"), str(example / "test" / "metadata.jsonl")
    corrupt = bad.pop(("train", script.FAULT_ROWS["train"]["corrupt_audio"][0]))
    assert corrupt["metadata"] == train_csv and corrupt["column"] == "audio_file_name"
    assert corrupt["file"] == "audio/00007.flac" and "cannot decode audio" in corrupt["problem"]
    escaping = bad.pop(("train", script.FAULT_ROWS["train"]["escaping_path"][0]))
    assert escaping["column"] == "image_file_name" and escaping["file"] == script.ESCAPING_PATH
    assert escaping["problem"].startswith("refused")
    unknown = bad.pop(("test", script.FAULT_ROWS["test"]["unknown_label"][0]))
    assert unknown["metadata"] == test_jsonl and unknown["column"] == "same"
    assert unknown["problem"] == "unknown label 'maybe' in column same"
    assert bad == {}
    outside = (example / "train" / script.ESCAPING_PATH).resolve()
    assert outside.is_file() and outside not in opened
    assert len(opened) > 50  # every other image was decoded through the recorded Image.open


def test_on_bad_stop_raises_at_the_first_bad_row(example, tmp_path):
    with pytest.raises(
        ValueError, match=r"metadata\.csv row 7, column 'audio_file_name', file 'audio/00007\.flac'"
    ):
        folder.build(_config(example, on_bad="stop"), tmp_path, workers=1)
    (partial,) = tmp_path.iterdir()
    assert not (partial / folder.COMPLETE).exists()


def test_second_build_returns_the_same_folder_without_work(example, built, monkeypatch):
    out, _ = built

    def fail(*args, **kwargs):
        raise AssertionError("a complete build must not be scanned or decoded again")

    monkeypatch.setattr(folder, "scan_files", fail)
    monkeypatch.setattr(folder, "_run_shard", fail)
    monkeypatch.setattr(folder_decode, "decode_image", fail)
    assert folder.build(_config(example), out.parent, workers=1) == out


def test_grey_images_of_another_size_build_elsewhere(example, built):
    out, _ = built
    grey = folder.build(_config(example, image_channels=1, image_size=(24, 20)), out.parent, workers=1)
    assert grey != out and (grey / folder.COMPLETE).is_file() and (out / folder.COMPLETE).is_file()
    ex = folder.load(grey, "test")[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (24, 20, 1)
    meta = _metadata(example, "test")[ex["row"]]
    with Image.open(example / "test" / meta["image_file_name"]) as image:
        expected = np.asarray(image.convert("L").resize((20, 24), Image.BILINEAR))
    np.testing.assert_array_equal(ex["image"][..., 0], expected)


def _png(path: pathlib.Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def _wav(path: pathlib.Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, 8000)


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_csv_parquet_jsonl_splits_and_every_kind_of_bad_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mixed"
    outside = tmp_path / "outside.png"
    _png(outside, 9)
    tone = (0.3 * np.sin(np.arange(2400) / 5)).astype(np.float32)
    for i in range(1, 7):
        _png(root / "train" / "images" / f"{i}.png", 20 * i)
        _wav(root / "train" / "voice" / f"{i}.wav", tone * i / 6)
    _wav(root / "train" / "voice" / "silent.wav", np.zeros(800, np.float32))
    (root / "train" / "voice" / "empty.wav").write_bytes(b"")
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "train" / "images" / "link.png").symlink_to(outside)
    normal = [
        {"file_name": f"images/{i}.png", "voice_file_name": f"voice/{i}.wav", "note": f"note {i}"}
        for i in range(1, 7)
    ]
    for i, row in enumerate(normal, start=1):
        row.update(
            label=[10, 9, 2][i % 3], score=f"{i / 2}", tags=json.dumps(["a", "b"][: 1 + i % 2]), size=i
        )
    faulty = [
        {"file_name": str(outside)},  # 7: absolute path
        {"file_name": "images/link.png"},  # 8: symlink out of the folder
        {"file_name": "notes.txt"},  # 9: unsupported extension
        {"file_name": "images/none.png"},  # 10: missing file
        {"voice_file_name": "voice/silent.wav"},  # 11
        {"voice_file_name": "voice/empty.wav"},  # 12
        {"score": "inf"},  # 13: non-finite regression value
        {"score": "abc"},  # 14: non-numeric regression value
        {"file_name": "", "note": "", "label": ""},  # 15: no image, no text, unlabelled: kept
    ]
    rows = normal + [{**normal[0], **fault} for fault in faulty]
    _write_csv(root / "train" / "metadata.csv", rows)
    validation = [
        {**normal[0], "label": 9, "score": 1.5, "tags": ["b"]},
        {**normal[1], "label": 7, "score": 2.0, "tags": ["a"]},  # unknown label
        {**normal[2], "label": None, "score": None, "tags": None},
    ]
    (root / "validation").mkdir()
    pq.write_table(pa.Table.from_pylist(validation), root / "validation" / "metadata.parquet")
    (root / "test").mkdir()
    test_rows = [json.dumps({**normal[3], "label": 2, "score": 0.5, "tags": ["a"]}), "{not json", ""]
    test_rows.append(json.dumps({**normal[4], "label": 10, "score": 3.0, "tags": ["a", "b"]}))
    (root / "test" / "metadata.jsonl").write_text("\n".join(test_rows) + "\n")
    for split in ("validation", "test"):
        for i in range(1, 7):
            _png(root / split / "images" / f"{i}.png", 20 * i)
            _wav(root / split / "voice" / f"{i}.wav", tone)

    config = folder.FolderConfig(
        root=str(root), labels=("label", "score", "tags"), label_kinds=(("score", "regression"),)
    )
    out = folder.build(config, tmp_path / "cache", workers=1)
    schema = folder.read_schema(out)
    assert schema.streams == {
        "image": {"kind": "image", "column": "file_name"},
        "audio": {"kind": "audio", "column": "voice_file_name"},
        "text": {"kind": "text", "column": "note"},
    }
    assert schema.tasks == {
        "label": {"kind": "classes", "classes": ["2", "9", "10"]},
        "score": {"kind": "regression", "classes": []},
        "tags": {"kind": "multilabel", "classes": ["a", "b"]},
    }
    assert schema.meta == ("size",)
    assert schema.validation == {"from": "folder"}
    assert schema.splits == {"train": 7, "validation": 2, "test": 2}
    problems = {(b["split"], b["row"]): (b["column"], b["problem"]) for b in folder.read_bad_inputs(out)}
    assert problems.pop(("train", 7)) == ("file_name", "refused: an absolute path escapes its split folder")
    column, problem = problems.pop(("train", 8))
    assert column == "file_name" and problem.startswith("refused: the path resolves outside its split folder")
    column, problem = problems.pop(("train", 9))
    assert column == "file_name" and problem.startswith("unsupported extension 'txt' for an image column")
    assert problems.pop(("train", 10)) == ("file_name", "missing file")
    assert problems.pop(("train", 11)) == ("voice_file_name", "silent audio (every sample is 0)")
    column, problem = problems.pop(("train", 12))
    assert column == "voice_file_name" and "empty" in problem
    assert problems.pop(("train", 13)) == ("score", "non-finite regression value 'inf' in column score")
    assert problems.pop(("train", 14)) == ("score", "non-numeric regression value 'abc' in column score")
    assert problems.pop(("validation", 2)) == ("label", "unknown label '7' in column label")
    assert problems.pop(("test", 2)) == ("", "the line is not a JSON object")
    assert problems == {}

    train = _by_row(out, "train")
    assert train[1]["labels/label"] == 1 and train[1]["labels/score"] == 0.5 and train[1]["meta/size"] == b"1"
    assert train[2]["labels/label"] == 0 and list(train[2]["labels/tags"]) == [1, 0]
    assert list(train[1]["labels/tags"]) == [1, 1]
    assert train[1]["image"].shape == (64, 64, 3) and (train[1]["image"] == 20).all()
    assert train[15]["present/image"] is False and train[15]["present/text"] is False
    assert train[15]["text"] == b"" and train[15]["labels/label"] == -1 and train[15]["present/audio"] is True
    validation = _by_row(out, "validation")
    assert validation[1]["labels/label"] == 1 and list(validation[1]["labels/tags"]) == [0, 1]
    assert validation[3]["labels/label"] == -1 and list(validation[3]["labels/tags"]) == [-1, -1]
    assert math.isnan(validation[3]["labels/score"]) and validation[1]["source_split"] == b"validation"
    test = _by_row(out, "test")
    assert sorted(test) == [1, 4]  # jsonl rows are line numbers (line 3 is blank)
    assert test[4]["labels/label"] == 2 and test[4]["labels/score"] == 3.0

    # A change to the metadata builds another folder; the first stays complete.
    rows[0]["note"] = "an edited note"
    _write_csv(root / "train" / "metadata.csv", rows)
    edited = folder.build(config, tmp_path / "cache", workers=1)
    assert edited != out and (out / folder.COMPLETE).is_file()
    assert _by_row(edited, "train")[1]["text"] == b"an edited note"


def test_resume_redoes_only_the_missing_shard(tmp_path):
    """Built by 2 worker processes, then a shard, its sidecar and the complete-marker are deleted: the next
    build decodes that shard alone."""
    root = tmp_path / "images"
    rows = []
    for i in range(40):
        _png(root / "train" / f"{i}.png", i)
        rows.append({"file_name": f"{i}.png", "kind": ["cat", "dog"][i % 2]})
    _write_csv(root / "train" / "metadata.csv", rows)
    config = folder.FolderConfig(
        root=str(root), labels=("kind",), image_size=(8, 8), validation_fraction=0.25
    )
    out = folder.build(config, tmp_path / "cache", workers=2)
    first = _by_row(out, "train", "validation")
    shards = sorted(out.glob("folder-*.array_record-*"))
    assert len(shards) == 6  # 40 rows in shards of 16: 3 train + 3 carved validation
    sidecars = [json.loads(p.read_text()) for p in sorted((out / folder.WORK).glob("*-0000?.json"))]
    assert len(sidecars) == 6 and os.getpid() not in {s["pid"] for s in sidecars}  # decoded by the workers
    stamps = {p.name: os.stat(p).st_mtime_ns for p in shards}
    lost = out / "folder-train.array_record-00001-of-00003"
    lost.unlink()
    (out / folder.WORK / "train-00001.json").unlink()
    (out / folder.COMPLETE).unlink()

    assert folder.build(config, tmp_path / "cache", workers=2) == out
    assert (out / folder.COMPLETE).is_file() and lost.is_file()
    assert (
        json.loads((out / folder.WORK / "train-00001.json").read_text())["pid"] == os.getpid()
    )  # 1 shard: inline
    for path in sorted(out.glob("folder-*.array_record-*")):
        assert (os.stat(path).st_mtime_ns == stamps[path.name]) == (path != lost), path.name
    again = _by_row(out, "train", "validation")
    assert sorted(again) == sorted(first) == list(range(1, 41))
    for row, ex in again.items():
        np.testing.assert_array_equal(ex["image"], first[row]["image"])
        assert ex["labels/kind"] == first[row]["labels/kind"] == (row - 1) % 2


def test_folder_errors(tmp_path):
    root = tmp_path / "two"
    _write_csv(root / "train" / "metadata.csv", [{"file_name": "a.png", "y": 1}])
    (root / "train" / "metadata.jsonl").write_text('{"file_name": "a.png", "y": 1}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl.*metadata\.csv|metadata\.csv.*metadata\.jsonl"):
        folder_schema.scan(folder.FolderConfig(root=str(root), labels=("y",)))
    root = tmp_path / "lists"
    _write_csv(root / "train" / "metadata.csv", [{"frames_file_names": '["a.png"]', "y": 1}])
    with pytest.raises(ValueError, match="labels names column 'z'"):
        folder_schema.scan(folder.FolderConfig(root=str(root), labels=("z",)))
    with pytest.raises(ValueError, match="no train/ folder"):
        folder_schema.scan(folder.FolderConfig(root=str(tmp_path), labels=()))
    with pytest.raises(ValueError, match="on_bad"):
        folder.FolderConfig(root=str(root), labels=(), on_bad="ignore")
    config = folder.FolderConfig(
        root=str(root), labels=["y"], label_kinds={"y": "regression"}, image_size=[8, 8]
    )
    assert (
        config.labels == ("y",)
        and config.label_kinds == (("y", "regression"),)
        and config.image_size == (8, 8)
    )
    assert folder.FolderConfig.from_json(config.to_json()) == config


def test_a_split_of_only_bad_rows_is_empty_and_no_usable_train_row_raises(tmp_path):
    root = tmp_path / "few"
    _png(root / "train" / "a.png", 1)
    _write_csv(root / "train" / "metadata.csv", [{"file_name": "a.png", "y": "cat"}])
    _write_csv(root / "test" / "metadata.csv", [{"file_name": "gone.png", "y": "cat"}])
    config = folder.FolderConfig(root=str(root), labels=("y",), validation_fraction=0.0)
    out = folder.build(config, tmp_path / "cache", workers=1)
    assert folder.read_schema(out).splits == {"train": 1, "test": 0}
    assert len(folder.load(out, "test")) == 0 and len(folder.load(out, "train")) == 1
    with pytest.raises(ValueError, match="no split 'validation'"):
        folder.load(out, "validation")
    _write_csv(root / "train" / "metadata.csv", [{"file_name": "gone.png", "y": "cat"}])
    with pytest.raises(ValueError, match="no train row .* is usable"):
        folder.build(config, tmp_path / "cache", workers=1)


def test_a_list_of_files_gives_one_stream_per_position(tmp_path):
    root = tmp_path / "views"
    for i in range(1, 5):
        _png(root / "train" / "views" / f"{i}.png", 50 * i)
        _wav(
            root / "train" / "clips" / f"{i}.wav", (0.1 * i * np.sin(np.arange(1600) / 3)).astype(np.float32)
        )
    rows = [
        {"views_file_names": json.dumps(["views/1.png", "views/2.png", "views/3.png"]), "clip_file_names": ""}
        | {"y": "a"},
        {"views_file_names": json.dumps(["views/4.png"]), "clip_file_names": '["clips/1.wav"]', "y": "b"},
        {"views_file_names": "[]", "clip_file_names": '["clips/2.wav", "clips/3.wav"]', "y": "a"},
        {"views_file_names": json.dumps(["views/2.png", "../outside.png"]), "y": "b"},  # escapes: a bad row
        {"views_file_names": "views/3.png", "y": "b"},  # one path without a list
    ]
    _write_csv(root / "train" / "metadata.csv", rows)
    config = folder.FolderConfig(root=str(root), labels=("y",), image_size=(8, 8), validation_fraction=0.0)
    schema = folder_schema.scan(config)
    assert {s: (i["kind"], i["column"], i.get("position")) for s, i in schema.streams.items()} == {
        "image": ("image", "views_file_names", 0),
        "image_2": ("image", "views_file_names", 1),
        "image_3": ("image", "views_file_names", 2),
        "audio": ("audio", "clip_file_names", 0),
        "audio_2": ("audio", "clip_file_names", 1),
    }
    built = folder.build(config, tmp_path / "cache", workers=1)
    source = folder.load(built, "train")
    stored = {int(source[i]["row"]): source[i] for i in range(len(source))}
    assert sorted(stored) == [1, 2, 3, 5]
    present = {row: [bool(e[f"present/{s}"]) for s in schema.streams] for row, e in stored.items()}
    assert present == {
        1: [True, True, True, False, False],
        2: [True, False, False, True, False],
        3: [False, False, False, True, True],
        5: [True, False, False, False, False],
    }
    for k, stream in enumerate(("image", "image_2", "image_3"), start=1):  # each position its own file
        np.testing.assert_array_equal(
            stored[1][stream], folder_decode.decode_image(root / "train" / "views" / f"{k}.png", (8, 8), 3)
        )
    (bad,) = folder.read_bad_inputs(built)
    assert bad["row"] == 4 and bad["column"] == "views_file_names[1]" and "escapes" in bad["problem"]
    capped = folder_schema.scan(dataclasses.replace(config, max_files=1))
    assert list(capped.streams) == ["image", "audio"]
