"""Audio front end on the host: decode WAV files, resample, log-mel features, normalisation, padding."""

import os

import librosa
import numpy as np
import soundfile as sf


def load_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decodes a WAV file to a float32 mono waveform; any bad file raises ValueError naming it."""
    if os.path.exists(path) and os.path.getsize(path) == 0:
        raise ValueError(f"cannot read audio file {path}: the file is empty")
    try:
        wave, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt or missing files
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if wave.shape[0] == 0:
        raise ValueError(f"cannot read audio file {path}: it has zero samples")
    return wave.mean(axis=1).astype(np.float32), int(sample_rate)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples a waveform from orig_sr to target_sr (librosa's default high-quality resampler)."""
    if orig_sr == target_sr:
        return wave.astype(np.float32)
    return librosa.resample(wave, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def log_mel(
    wave: np.ndarray,
    sample_rate: int = 16000,
    n_fft: int = 512,
    win_length: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
) -> np.ndarray:
    """Log mel power spectrogram, float32 [frames, n_mels]; defaults: 25 ms windows every 10 ms at 16 kHz."""
    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=sample_rate,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        n_mels=n_mels,
        center=True,
        power=2.0,
    )
    return np.log(mel + 1e-6).T.astype(np.float32)


def normalize(features: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-utterance mean and variance normalisation over all values."""
    features = features.astype(np.float32)
    return ((features - features.mean()) / np.sqrt(features.var() + eps)).astype(np.float32)


def pad_or_crop(features: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads or crops (keeping the start) [T, F] features to [length, F]; mask marks real frames."""
    kept = min(features.shape[0], length)
    out = np.zeros((length, *features.shape[1:]), dtype=features.dtype)
    out[:kept] = features[:kept]
    mask = np.arange(length) < kept
    return out, mask
