"""The raw-waveform audio path (model.audio.frontend="waveform"): clip fitting and normalisation (parity with
Hugging Face's Wav2Vec2FeatureExtractor), the config's settings, and AV-Digits waveform batches from real FSDD
recordings (stored examples made by hand: no data set build)."""

import functools
import pickle

import numpy as np
import pytest

from mmjax.config import load_config
from mmjax.data import audio, datasets, pipeline, waveform
from mmjax.data import av_digits_questions as avq
from mmjax.data import av_digits_sources as avs

RECORDINGS = avs.resolve_data_dir() / "fsdd" / "recordings"
# 10,504 samples at 8 kHz (cropped to 0.96 s), 1,149 (the shortest), and two ordinary ones.
NAMES = ("3_lucas_7.wav", "6_nicolas_7.wav", "0_jackson_0.wav", "5_george_12.wav")
SAMPLES = 15360  # data.audio_frames=96 frames of 10 ms at 16 kHz


def waveform_config(*overrides: str):
    return load_config("experiments/av_digits.py:smoke", ["model.audio.frontend=waveform", *overrides])


def stored(name: str, image_index: int = 0) -> dict:
    """One AV-Digits example as the built data set stores it (a "who is speaking?" question, a blank 1)."""
    digit, speaker, _ = avs.parse_recording(name)
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 13:15] = 255
    return {
        "audio": avs.audio_features(RECORDINGS / name),
        "image": image,
        "question": b"who is speaking?",
        "question_type": avq.QUESTION_TYPES.index("speaker"),
        "answer": avq.answer_index("speaker", 1, digit, speaker),
        "image_digit": 1,
        "audio_digit": digit,
        "speaker": avq.SPEAKERS.index(speaker),
        "match": int(digit == 1),
        "recording": name.encode(),
        "image_index": image_index,
    }


@pytest.fixture(scope="module")
def source() -> list[dict]:
    return [stored(name, k) for k, name in enumerate(NAMES)]


def recording_16k(name: str) -> np.ndarray:
    return audio.resample(avs.read_recording(RECORDINGS / name), avs.FSDD_SAMPLE_RATE, 16000)


# --- Fitting and normalisation ---


def test_fit_clip_pads_crops_masks_and_normalises_over_the_kept_samples():
    wave = np.random.default_rng(0).normal(3.0, 2.0, 100).astype(np.float32)
    padded, mask = waveform.fit_clip(wave, waveform.Waveform(160))
    assert padded.shape == mask.shape == (160,) and padded.dtype == np.float32 and mask.sum() == 100
    assert abs(padded[:100].mean()) < 1e-6 and padded[:100].std() == pytest.approx(1.0, abs=1e-5)
    assert not padded[100:].any()
    cropped, mask = waveform.fit_clip(wave, waveform.Waveform(40))
    assert mask.all() and abs(cropped.mean()) < 1e-6  # the statistics of the 40 kept samples
    raw, _ = waveform.fit_clip(wave, waveform.Waveform(40, normalize=False))
    np.testing.assert_array_equal(raw, wave[:40])
    empty, mask = waveform.fit_clip(np.zeros(0, np.float32), waveform.Waveform(8))
    assert not empty.any() and not mask.any()
    with pytest.raises(ValueError, match="samples=0"):
        waveform.Waveform(0)


def test_normalisation_matches_wav2vec2_feature_extractor():
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(1)
    clips = [recording_16k(name) for name in NAMES[:2]] + [rng.normal(0.3, 0.05, 900).astype(np.float32)]
    extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True)
    length = 12000  # crops the first clip, pads the others
    theirs = extractor(
        clips,
        sampling_rate=16000,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_tensors="np",
    )
    settings = waveform.Waveform(length)
    ours = [waveform.fit_clip(clip, settings) for clip in clips]
    np.testing.assert_allclose(np.stack([w for w, _ in ours]), theirs["input_values"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.stack([m for _, m in ours]), theirs["attention_mask"].astype(bool))
    single = extractor(clips[1], sampling_rate=16000, return_tensors="np")["input_values"][0]  # no padding
    np.testing.assert_allclose(waveform.normalize(clips[1]), single, rtol=1e-6, atol=1e-6)


# --- Config ---


def test_the_config_chooses_the_frontend_and_the_clip_length():
    assert datasets.waveform_settings(load_config("experiments/av_digits.py:smoke")) is None
    assert datasets.waveform_settings(waveform_config()) == waveform.Waveform(SAMPLES, 16000, True)
    changed = waveform_config(
        "data.sample_rate=8000", "data.audio_frames=48", "data.waveform_normalize=False"
    )
    assert datasets.waveform_settings(changed) == waveform.Waveform(3840, 8000, False)
    with pytest.raises(ValueError, match="frontend='mfcc' is not one of"):
        datasets.waveform_settings(waveform_config("model.audio.frontend=mfcc"))


# --- AV-Digits ---


def test_av_digits_waveform_batches(source):
    data = datasets.from_config(waveform_config())
    batch = next(pipeline.eval_batches(source, batch_size=4, preprocess_fn=data.preprocess))
    assert batch["audio"].shape == batch["audio_mask"].shape == (4, SAMPLES)
    assert batch["audio"].dtype == np.float32 and batch["audio_mask"].dtype == np.bool_
    assert batch["image"].shape == (4, 28, 28, 1) and batch["text"].shape == (4, 24)
    lengths = [min(len(recording_16k(name)), SAMPLES) for name in NAMES]
    assert batch["audio_mask"].sum(axis=1).tolist() == lengths and lengths[0] == SAMPLES
    for row, length in zip(batch["audio"], lengths, strict=True):
        assert abs(row[:length].mean()) < 1e-5 and row[:length].std() == pytest.approx(1.0, abs=1e-3)
        assert not row[length:].any()
    np.testing.assert_allclose(batch["audio"][1, : lengths[1]], waveform.normalize(recording_16k(NAMES[1])))
    assert batch["labels/speaker"].tolist() == [avq.SPEAKERS.index(n.split("_")[1]) for n in NAMES]
    again = pickle.loads(pickle.dumps(data.preprocess))(source[2])  # what grain workers receive
    np.testing.assert_array_equal(again["audio"], batch["audio"][2])


def test_av_digits_log_mel_default_is_unchanged(source):
    data = datasets.from_config(load_config("experiments/av_digits.py:smoke"))
    example = data.preprocess(source[0])
    expected, mask = audio.pad_or_crop(source[0]["audio"], 96)
    np.testing.assert_array_equal(example["audio"], expected)
    np.testing.assert_array_equal(example["audio_mask"], mask)


def test_av_digits_waveform_options(source):
    raw = datasets.from_config(waveform_config("data.waveform_normalize=False", "data.sample_rate=8000"))
    example = raw.preprocess(source[1])
    wave = avs.read_recording(RECORDINGS / NAMES[1])
    assert example["audio"].shape == (7680,)
    np.testing.assert_array_equal(example["audio"][: len(wave)], wave)
    with pytest.raises(ValueError, match="data.n_mfcc=32 needs log-mel audio"):
        datasets.from_config(waveform_config("data.n_mfcc=32"))


def test_av_digits_conditions_apply_to_waveforms(source):
    data = datasets.from_config(waveform_config())
    clean = data.preprocess(source[3])
    condition = data.condition(pipeline.Corruption(drop="image", audio_snr=0.0, image_noise=0.5))
    noisy = condition(source[3])
    assert noisy["present"] == {"text": True, "image": False, "audio": True}
    valid = clean["audio_mask"]
    np.testing.assert_array_equal(noisy["audio_mask"], valid)
    assert not noisy["audio"][~valid].any()
    assert np.abs(noisy["audio"][valid] - clean["audio"][valid]).mean() > 0.3  # 0 dB: half of it is noise
    assert abs(noisy["audio"][valid].mean()) < 1e-5  # normalised after the noise
    np.testing.assert_array_equal(condition(source[3])["audio"], noisy["audio"])  # seeded
    assert np.std(noisy["image"] - clean["image"]) == pytest.approx(0.5, rel=0.15)


def test_av_digits_predict_inputs_as_waveforms():
    data = datasets.from_config(waveform_config())
    wave = avs.read_recording(RECORDINGS / NAMES[2])
    example = data.preprocess(data.encode_inputs({"audio": (wave, 8000), "text": "who is speaking?"}))
    np.testing.assert_allclose(
        example["audio"][example["audio_mask"]], waveform.normalize(recording_16k(NAMES[2]))
    )
    silent = data.preprocess(data.encode_inputs({"text": "who is speaking?"}))
    assert silent["audio"].shape == (SAMPLES,) and not silent["audio_mask"].any()


# --- Pipeline ---


def test_waveform_buckets_count_samples(source):
    settings = waveform.Waveform(SAMPLES)
    assert pipeline.parse_buckets("8000, 15360", 96, 8, settings) == (8000, 15360)
    with pytest.raises(ValueError, match="buckets count samples: each positive, the largest 15360"):
        pipeline.parse_buckets("48,96", 96, 8, settings)
    data = datasets.from_config(waveform_config("data.audio_buckets=4000,8000,15360"))
    assert data.iterator_args["audio_buckets"] == (4000, 8000, 15360)
    short = [source[1], source[1]]  # 2,298 samples at 16 kHz
    batch = next(
        pipeline.train_iterator(
            short, batch_size=2, seed=0, preprocess_fn=data.preprocess, **data.iterator_args
        )
    )
    assert batch["audio"].shape == batch["audio_mask"].shape == (2, 4000) and batch["audio_mask"].any()


@pytest.mark.slow
def test_waveform_batches_from_worker_processes(source):
    make = functools.partial(
        pipeline.train_iterator,
        source,
        batch_size=2,
        seed=3,
        preprocess_fn=datasets.from_config(waveform_config()).preprocess,
    )
    inline, workers = make(), make(worker_count=2)
    for _ in range(2):
        np.testing.assert_array_equal(next(inline)["audio"], next(workers)["audio"])
