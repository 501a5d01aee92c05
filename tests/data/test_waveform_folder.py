"""Waveforms (model.audio.frontend="waveform") from own data: a small folder built with waveforms (its own
cache folder, bad files still skipped and named) and a Python source; conditions on the stored waveforms."""

import json

import numpy as np
import pytest
import soundfile

from mmjax.config import load_config
from mmjax.data import audio, datasets, folder, from_python, pipeline, waveform

SAMPLES = 15360  # data.audio_frames=96 frames of 10 ms at 16 kHz


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) + 0.05).astype(np.float32)


# file name -> (wave, sample rate); the silent file is a bad row.
FILES = {
    "a.wav": (tone(0.5, 8000), 8000),
    "b.flac": (tone(1.5, 22050, 300.0), 22050),  # longer than data.max_audio_seconds=1
    "silent.wav": (np.zeros(800, np.float32), 8000),
}
ROWS = [("a.wav", "up"), ("b.flac", "down"), ("silent.wav", "up"), ("", "down")]  # "": no audio


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    (root / "train").mkdir()
    for name, (wave, rate) in FILES.items():
        soundfile.write(root / "train" / name, wave, rate)
    lines = [json.dumps({"voice_file_name": name or None, "y": label}) for name, label in ROWS]
    (root / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def folder_config(root, cache, *overrides: str):
    more = [f"data.tfds_dir={cache}", "data.build_workers=1", "data.max_audio_seconds=1.0"]
    more.append("data.validation_fraction=0.0")
    return load_config(f"experiments/folder.py:dir={root},labels=y,smoke", [*more, *overrides])


@pytest.fixture(scope="module")
def waveform_data(root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return datasets.from_config(folder_config(root, cache, "model.audio.frontend=waveform")), cache


def expected_clip(root, name: str, max_seconds: float = 1.0) -> np.ndarray:
    """The file's first max_seconds, resampled to 16 kHz (what the build stores)."""
    wave, rate = audio.load_wav(root / "train" / name)
    return audio.resample(wave[: int(round(max_seconds * rate))], rate, 16000)


def test_folder_build_stores_waveforms_in_its_own_cache_folder(root, waveform_data):
    data, cache = waveform_data
    config = folder_config(root, cache, "model.audio.frontend=waveform")
    built = datasets.built_folder(config)
    source = data.load("train")
    stored = {int(source[i]["row"]): source[i] for i in range(len(source))}
    assert sorted(stored) == [1, 2, 4]  # row 3 (silent) skipped
    np.testing.assert_array_equal(stored[1]["audio"], expected_clip(root, "a.wav"))
    np.testing.assert_array_equal(stored[2]["audio"], expected_clip(root, "b.flac"))
    assert stored[4]["audio"].shape == (0,) and not stored[4]["present/audio"]
    (bad,) = folder.read_bad_inputs(built)
    assert bad["file"] == "silent.wav" and bad["row"] == 3 and "silent" in bad["problem"]
    log_mel = datasets.built_folder(folder_config(root, cache))
    assert log_mel != built and folder.load(log_mel, "train")[0]["audio"].shape[1] == 64
    assert [b["file"] for b in folder.read_bad_inputs(log_mel)] == ["silent.wav"]


def test_folder_waveform_batches(waveform_data):
    data, _ = waveform_data
    source = data.load("train")
    batch = next(pipeline.eval_batches(source, batch_size=3, preprocess_fn=data.preprocess))
    assert batch["audio"].shape == batch["audio_mask"].shape == (3, SAMPLES)
    rows = batch["index"].tolist()
    lengths = [len(source[i]["audio"]) for i in rows]
    assert batch["audio_mask"].sum(axis=1).tolist() == [min(n, SAMPLES) for n in lengths]
    assert batch["present"]["audio"].tolist() == [n > 0 for n in lengths]
    for row, mask in zip(batch["audio"], batch["audio_mask"], strict=True):
        assert not row[~mask].any()
        if mask.any():
            assert abs(row[mask].mean()) < 1e-5 and row[mask].std() == pytest.approx(1.0, abs=1e-3)
    first = next(i for i, n in enumerate(lengths) if 0 < n < SAMPLES)
    kept = batch["audio"][first][batch["audio_mask"][first]]
    np.testing.assert_allclose(kept, waveform.normalize(source[rows[first]]["audio"]), atol=1e-6)
    wave, rate = FILES["a.wav"]  # a user's input to mmjax.predict
    given = data.preprocess(data.encode_inputs({"audio": (wave, rate)}))
    np.testing.assert_allclose(given["audio"][:8000], waveform.normalize(audio.resample(wave, rate, 16000)))
    assert given["audio_mask"].sum() == 8000


def test_folder_conditions_on_waveforms(root, waveform_data):
    data, cache = waveform_data
    example = data.load("train")[0]
    clean = data.preprocess(example)
    noisy = data.condition(pipeline.Corruption(audio_snr=0.0))(example)
    valid = clean["audio_mask"]
    assert np.abs(noisy["audio"][valid] - clean["audio"][valid]).mean() > 0.3
    np.testing.assert_array_equal(
        data.condition(pipeline.Corruption(audio_snr=0.0))(example)["audio"], noisy["audio"]
    )
    dropped = data.condition(pipeline.Corruption(drop="audio"))(example)
    assert not dropped["present"]["audio"]
    np.testing.assert_array_equal(dropped["audio"], clean["audio"])
    log_mel = datasets.from_config(folder_config(root, cache))
    with pytest.raises(ValueError, match="audio noise needs the waveforms"):
        log_mel.condition(pipeline.Corruption(audio_snr=0.0))


def test_python_source_waveforms():
    wave, rate = FILES["a.wav"]
    rows = [
        {"sound": (wave, rate), "label": "up"},
        {"sound": {"array": tone(2.0, 16000), "sampling_rate": 16000}, "label": "down"},  # a HF audio dict
        {"sound": None, "label": "up"},
    ]
    columns = {"sound": "audio", "label": "classes"}
    spec = "experiments/folder.py:labels=label,smoke"
    splits = {"train": rows, "validation": rows[:1]}
    data = from_python.data_set(splits, columns, load_config(spec, ["model.audio.frontend=waveform"]))
    examples = [data.preprocess(row) for row in rows]
    assert all(e["audio"].shape == e["audio_mask"].shape == (SAMPLES,) for e in examples)
    expected = audio.resample(wave, rate, 16000)
    assert examples[0]["audio_mask"].sum() == len(expected)
    np.testing.assert_allclose(examples[0]["audio"][: len(expected)], waveform.normalize(expected), atol=1e-6)
    assert examples[1]["audio_mask"].all() and abs(examples[1]["audio"].mean()) < 1e-5
    assert not examples[2]["audio_mask"].any() and not examples[2]["present"]["audio"]
    default = from_python.data_set(splits, columns, load_config(spec))
    assert default.preprocess(rows[0])["audio"].shape == (96, 64)  # log-mel features, as before
