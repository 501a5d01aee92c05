"""Robustness conditions for evaluation: a dropped modality, white noise at an SNR, image noise."""

import numpy as np
import pytest

from mmjax.data import audio, av_digits, av_digits_questions, av_digits_sources, pipeline


def test_white_noise_has_the_requested_snr():
    wave = np.sin(np.linspace(0, 2000, 80_000)).astype(np.float32)
    for snr_db in (20.0, 0.0):
        noisy = audio.add_white_noise(wave, snr_db, np.random.default_rng(0))
        measured = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
        assert noisy.dtype == wave.dtype and abs(measured - snr_db) < 0.1


@pytest.fixture(scope="module")
def raw_example(av_digits_dir):
    return av_digits.load("test", tfds_dir=av_digits_dir)[7]


def _preprocess(raw, corruption=None, seed=0):
    return av_digits.preprocess(
        raw,
        tokenizer=av_digits_questions.make_tokenizer(),
        text_len=16,
        audio_frames=96,
        seed=seed,
        corruption=corruption,
    )


def test_conditions_change_only_their_modality_and_repeat_exactly(raw_example):
    recordings = str(av_digits_sources.resolve_data_dir() / "fsdd" / "recordings")
    clean = _preprocess(raw_example)
    condition = pipeline.Corruption(drop="text", audio_snr=0.0, image_noise=0.5, recordings_dir=recordings)
    noisy = _preprocess(raw_example, condition)
    assert noisy["present"] == {"text": False, "image": True, "audio": True} and all(
        clean["present"].values()
    )
    np.testing.assert_array_equal(noisy["text"], clean["text"])
    assert np.std(noisy["image"] - clean["image"]) == pytest.approx(0.5, rel=0.15)
    valid = clean["audio_mask"]
    np.testing.assert_array_equal(noisy["audio_mask"], valid)
    assert np.abs(noisy["audio"][valid] - clean["audio"][valid]).mean() > 0.1  # 0 dB: a lot of noise
    again = _preprocess(raw_example, condition)
    for key in ("audio", "image"):
        np.testing.assert_array_equal(again[key], noisy[key])  # seeded by (seed, recording, image)
    assert not np.array_equal(_preprocess(raw_example, condition, seed=1)["image"], noisy["image"])
    # Re-reading the recording without noise gives the stored features: noisy = the clean path + noise.
    np.testing.assert_allclose(
        av_digits_sources.audio_features(f"{recordings}/{raw_example['recording'].decode()}")[:96],
        clean["audio"][: valid.sum()],
        rtol=1e-5,
        atol=1e-5,
    )


def test_condition_names_and_errors():
    assert pipeline.Corruption().suffix == ""
    named = pipeline.Corruption(drop="image", audio_snr=10.0, image_noise=0.5, recordings_dir="r")
    assert named.suffix == "_drop-image_snr-10_image-noise-0.5"
    with pytest.raises(ValueError, match="image_noise=-1"):
        pipeline.Corruption(image_noise=-1)
