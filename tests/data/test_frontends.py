"""Parity of the jitted frontends: Whisper and AST against Hugging Face's feature extractors at 1e-5, log-mel
and MFCC against librosa at 1e-4; and a smoke run of scripts/bench_data.py."""

import json
import pathlib
import subprocess
import sys

import librosa
import numpy as np
import pytest
import transformers

from mmjax.data import audio
from mmjax.data.av_digits_sources import resolve_data_dir

SAMPLE_RATE = 16000
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")  # HF's AST bank


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.1, 1.0) * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def _zero_pad(waves: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """Stacks waveforms zero-padded (as Whisper pads them) or truncated to length (default: the longest)."""
    batch = np.zeros((len(waves), length or max(len(wave) for wave in waves)), np.float32)
    for row, wave in zip(batch, waves, strict=True):
        row[: len(wave)] = wave[: len(row)]
    return batch


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    wave, sample_rate = audio.load_wav(resolve_data_dir() / "fsdd" / "recordings" / "3_theo_7.wav")
    return audio.resample(wave, sample_rate, SAMPLE_RATE)


@pytest.fixture(scope="module")
def whisper_waves(recording) -> list[np.ndarray]:
    """0.3 s, 1.7 s, 5 s and 31 s (truncated to 30 s) of noise, and a real recording."""
    return [_noise(seconds, seed) for seed, seconds in enumerate([0.3, 1.7, 5.0, 31.0])] + [recording]


@pytest.mark.parity
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_matches_hf(n_mels, whisper_waves):
    """Against HF's reference numpy path (used when torch is absent), which computes the STFT in float64."""
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    ours = np.asarray(audio.whisper_log_mel(_zero_pad(whisper_waves), n_mels=n_mels))
    for wave, got in zip(_zero_pad(whisper_waves, length=extractor.n_samples), ours, strict=True):
        want = extractor._np_extract_fbank_features(wave[None].astype(np.float64), "cpu")[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parity
def test_whisper_log_mel_matches_hf_call(whisper_waves):
    """Against the public call, which uses torch's float32 STFT. Only 80 bins: with 128 bins torch's own error
    reaches 3e-5 on the 31 s noise (against the float64 path, which ours matches to 4e-6)."""
    extractor = transformers.WhisperFeatureExtractor()
    ours = np.asarray(audio.whisper_log_mel(_zero_pad(whisper_waves)))
    for wave, got in zip(whisper_waves, ours, strict=True):
        want = extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("seconds", [0.3, 1.7, 5.0, 11.0])  # 11 s is 1,098 frames, truncated to 1,024
def test_ast_fbank_matches_hf(seconds):
    extractor = transformers.ASTFeatureExtractor()
    waves = np.stack([_noise(seconds, seed) for seed in (0, 1)])
    ours = np.asarray(audio.ast_fbank(waves))
    for wave, got in zip(waves, ours, strict=True):
        want = extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parity
def test_ast_fbank_matches_hf_on_recording(recording):
    want = transformers.ASTFeatureExtractor()(recording, sampling_rate=SAMPLE_RATE, return_tensors="np")
    ours = np.asarray(audio.ast_fbank(recording[None]))[0]
    np.testing.assert_allclose(ours, want.input_values[0], rtol=1e-5, atol=1e-5)


# --- log_mel_jax / mfcc_jax against librosa (the host features of the data pipeline) ---

MFCC_ARGS = dict(n_mfcc=20, n_fft=512, hop_length=160, win_length=400, n_mels=64)


def _mfcc_rel(got: np.ndarray, want: np.ndarray) -> float:
    """MFCC error relative to the value, with a floor of 1 (dB) for coefficients near zero."""
    return float((np.abs(got - want) / np.maximum(np.abs(want), 1.0)).max())


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """16 FSDD recordings across speakers and digits at 16 kHz (natural lengths), and 2 noise bursts."""
    files = sorted((resolve_data_dir() / "fsdd" / "recordings").glob("*.wav"))
    waves = []
    for path in files[:: len(files) // 16][:16]:
        wave, sample_rate = audio.load_wav(path)
        waves.append(audio.resample(wave, sample_rate, SAMPLE_RATE))
    return waves + [_noise(0.55, 7), 1e-3 * _noise(1.0, 8)]


def test_log_mel_jax_matches_librosa_within_1e_4(clips):
    """On log(mel + 1e-6), so the bound is the relative error of the floored mel power (worst measured: 5e-5
    on 576 FSDD clips); rows are zero-padded to 3 s, which leaves the real frames unchanged."""
    got = np.asarray(audio.log_mel_jax(_zero_pad(clips, 48000)))
    assert got.shape == (len(clips), 301, 64) and got.dtype == np.float32
    for wave, features in zip(clips, got, strict=True):
        want = audio.log_mel(wave)
        np.testing.assert_allclose(features[: len(want)], want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(
            features[len(want) + 2 :], np.float32(np.log(1e-6))
        )  # windows past the end


def test_mfcc_jax_matches_librosa(clips):
    """The float32 FFT is within 1e-4 of each clip's largest coefficient but only ~1.3e-4 of each value (worst
    of 576 FSDD clips, in quiet bands near the -80 dB floor); exact=True is within 1e-4 of each value."""
    got = np.asarray(audio.mfcc_jax(_zero_pad(clips, 48000), **MFCC_ARGS))
    exact = np.asarray(audio.mfcc_jax(_zero_pad(clips[:4], 16000), exact=True, **MFCC_ARGS))
    for i, (wave, features) in enumerate(zip(clips, got, strict=True)):
        want = librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, **MFCC_ARGS).T
        assert np.abs(features[: len(want)] - want).max() <= 1e-4 * np.abs(want).max()
        assert _mfcc_rel(features[: len(want)], want) <= 3e-4
        if i < len(exact):
            cropped = librosa.feature.mfcc(y=_zero_pad([wave], 16000)[0], sr=SAMPLE_RATE, **MFCC_ARGS).T
            assert _mfcc_rel(exact[i], cropped) <= 1e-4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=40),
        dict(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=128),
        dict(n_fft=400, win_length=399, hop_length=100, n_mels=32),  # the window sits at an odd offset
    ],
)
def test_librosa_frontends_batched_equal_per_clip_on_random_waves(kwargs):
    """Random waves of lengths that are not multiples of the hop; the batch is computed at once."""
    rng = np.random.default_rng(0)
    waves = (rng.uniform(0.01, 1.0, (3, 1)) * rng.standard_normal((3, 7777))).astype(np.float32)
    log_mels, mfccs = (
        np.asarray(audio.log_mel_jax(waves, **kwargs)),
        np.asarray(audio.mfcc_jax(waves, **kwargs)),
    )
    sample_rate, librosa_args = kwargs.pop("sample_rate", 16000), dict(MFCC_ARGS, **kwargs)
    for i, wave in enumerate(waves):
        stft_args = {key: value for key, value in librosa_args.items() if key != "n_mfcc"}
        mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, **stft_args)
        np.testing.assert_allclose(log_mels[i], np.log(mel + 1e-6).T, rtol=0, atol=1e-4)
        want = librosa.feature.mfcc(y=wave, sr=sample_rate, **librosa_args).T
        assert _mfcc_rel(mfccs[i], want) <= 1e-4
        one = np.asarray(audio.log_mel_jax(wave[None], sample_rate=sample_rate, **kwargs))[0]
        np.testing.assert_allclose(one, log_mels[i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("frontend", [audio.log_mel_jax, audio.mfcc_jax])
def test_librosa_frontends_row_groups_equal_whole_batch(frontend):
    """5 rows in groups of 2 (the last group short) give the whole-batch result up to float32 rounding."""
    waves = np.random.default_rng(1).standard_normal((5, 4000)).astype(np.float32)
    whole = np.asarray(frontend(waves, group_samples=None))
    grouped = np.asarray(frontend(waves, group_samples=8000))
    assert grouped.shape == whole.shape == (5, 26, whole.shape[-1])
    np.testing.assert_allclose(grouped, whole, rtol=0, atol=1e-6 * np.abs(whole).max())


def test_bench_data_quick_prints_json(av_digits_dir):
    """scripts/bench_data.py --quick: structure and positive numbers only (timings vary with the machine)."""
    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_data.py"
    args = ["--quick", "--step-examples-per-sec", "100", "--tfds-dir", str(av_digits_dir)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert {"machine", "args", "error_definitions", "frontend", "pipeline", "train_step"} <= set(result)
    assert result["machine"]["cpu_count"] > 0 and result["machine"]["librosa"]
    assert {row["feature"] for row in result["frontend"]} == {"log_mel", "mfcc"}
    for row in result["frontend"]:
        for key in ("librosa_clips_per_sec", "jax_clips_per_sec", "speedup"):
            assert row[key] > 0, key
        assert 0 <= row["max_rel_diff"] < 1e-3 and 0 <= row["max_abs_diff"] < 1e-2
    assert [row["workers"] for row in result["pipeline"]] == [0]
    assert result["pipeline"][0]["examples_per_sec"] > 0
    assert result["train_step"] == {"source": "given", "examples_per_sec": 100.0}
