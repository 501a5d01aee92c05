"""The raw-waveform audio path (model.audio.frontend="waveform"), for encoders that take samples (wav2vec2,
HuBERT, WavLM): each clip becomes float32 [samples] at one sample rate, zero-padded or cropped with a mask,
and optionally normalised as Hugging Face's Wav2Vec2FeatureExtractor(do_normalize=True) does."""

import dataclasses

import numpy as np

FRONTENDS = ("log_mel", "waveform")  # model.audio.frontend
FRAME_SECONDS = 0.01  # one log-mel frame: data.audio_frames counts these, so they also give a clip's length
NORMALIZE_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm's


@dataclasses.dataclass(frozen=True)
class Waveform:
    """How an audio stream enters the batch: `samples` per clip at `sample_rate`, normalised or not."""

    samples: int  # S: clips are zero-padded or cropped (keeping the start) to this many samples
    sample_rate: int = 16000
    normalize: bool = True  # zero mean, unit variance over each clip's real samples

    def __post_init__(self):
        if self.samples <= 0 or self.sample_rate <= 0:
            raise ValueError(
                f"waveform samples={self.samples} and sample_rate={self.sample_rate} must be > 0"
            )


def clip_samples(frames: int, sample_rate: int) -> int:
    """Samples in `frames` log-mel frames of 10 ms: the duration the log-mel path covers."""
    return round(frames * FRAME_SECONDS * sample_rate)


def normalize(wave: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """(wave - mean) / sqrt(var + eps) of one clip, as float32 (statistics in float64)."""
    wave = np.asarray(wave, np.float64)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + eps)).astype(np.float32)


def fit_clip(wave: np.ndarray, settings: Waveform) -> tuple[np.ndarray, np.ndarray]:
    """A clip [n] -> (float32 [settings.samples], bool mask [settings.samples], True on real samples).

    Cropping comes first, so normalisation sees only the kept samples and padding stays 0, as the extractor
    with padding="max_length", truncation=True, max_length=samples and an attention mask.
    """
    kept = min(len(wave), settings.samples)
    clip = np.asarray(wave[:kept], np.float32)
    out = np.zeros(settings.samples, np.float32)
    out[:kept] = normalize(clip) if settings.normalize and kept else clip
    return out, np.arange(settings.samples) < kept
