"""Audio front end: decoding errors, resampling, log-mel against librosa, normalisation, padding."""

import pathlib

import librosa
import numpy as np
import pytest
import soundfile as sf

from mmjax.data import audio
from mmjax.data.av_digits_sources import resolve_data_dir


@pytest.fixture(scope="module")
def wav_path() -> pathlib.Path:
    return resolve_data_dir() / "fsdd" / "recordings" / "3_theo_7.wav"


def test_load_wav_real_file(wav_path):
    wave, sample_rate = audio.load_wav(wav_path)
    assert sample_rate == 8000
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 1000
    assert np.abs(wave).max() <= 1.0


def test_load_wav_averages_channels(tmp_path):
    left, right = np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wave, _ = audio.load_wav(path)
    np.testing.assert_allclose(wave, np.full(100, 0.125), atol=1e-6)


def test_load_wav_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(ValueError, match="broken.wav"):
        audio.load_wav(path)


def test_load_wav_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav.*empty"):
        audio.load_wav(path)


def test_load_wav_zero_samples_names_it(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, np.float32), 8000)
    with pytest.raises(ValueError, match="silent.wav.*zero samples"):
        audio.load_wav(path)


def test_load_wav_missing_file_names_it(tmp_path):
    with pytest.raises(ValueError, match="missing.wav"):
        audio.load_wav(tmp_path / "missing.wav")


def test_resample_doubles_length(wav_path):
    wave, sample_rate = audio.load_wav(wav_path)
    up = audio.resample(wave, sample_rate, 16000)
    assert up.dtype == np.float32 and up.shape == (2 * wave.size,)
    np.testing.assert_array_equal(audio.resample(wave, 8000, 8000), wave)


def test_log_mel_matches_librosa(wav_path):
    wave, sample_rate = audio.load_wav(wav_path)
    wave = audio.resample(wave, sample_rate, 16000)
    features = audio.log_mel(wave)
    assert features.shape == (1 + wave.size // 160, 64) and features.dtype == np.float32
    mel = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, center=True
    )
    np.testing.assert_allclose(features, np.log(mel + 1e-6).T, rtol=1e-5, atol=1e-5)


def test_normalize_zero_mean_unit_variance():
    features = np.random.default_rng(0).normal(3.0, 5.0, size=(40, 64)).astype(np.float32)
    out = audio.normalize(features)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1.0) < 1e-4


def test_pad_or_crop_pads_with_zeros_and_masks():
    features = np.ones((3, 4), np.float32)
    out, mask = audio.pad_or_crop(features, 5)
    assert out.shape == (5, 4) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    np.testing.assert_array_equal(out[3:], 0.0)
    np.testing.assert_array_equal(out[:3], 1.0)


def test_pad_or_crop_keeps_the_start():
    features = np.arange(20, dtype=np.float32).reshape(10, 2)
    out, mask = audio.pad_or_crop(features, 4)
    np.testing.assert_array_equal(out, features[:4])
    assert mask.all() and mask.shape == (4,)


def test_mfcc_from_log_mel_is_librosas_mfcc_and_ignores_padding(wav_path):
    wave, rate = audio.load_wav(wav_path)
    mel = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=256, hop_length=80, n_mels=40, power=2.0)
    log_mel = np.log(mel + 1e-6).T  # [frames, mels]
    frames = len(log_mel)
    padded, mask = audio.pad_or_crop(log_mel, frames + 7)
    padded[frames:] = 3.0  # padding content must not show
    ours = audio.mfcc_from_log_mel(padded, mask, 13)
    assert ours.shape == (frames + 7, 13) and np.all(ours[frames:] == 0.0)
    # librosa's MFCC of the same log-mel in dB (10 / ln 10 times ours).
    theirs = librosa.feature.mfcc(S=10 * np.log10(mel + 1e-6), n_mfcc=13).T
    np.testing.assert_allclose(
        ours[:frames] * 10 / np.log(10), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
    )
