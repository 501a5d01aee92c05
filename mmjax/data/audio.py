"""Audio front end: decode WAV files, resample, host log-mel features, normalisation, padding, and jitted
batched on-device frontends: librosa's log-mel and MFCC, and Hugging Face's Whisper and AST extractors."""

import functools
import os

import jax
import jax.numpy as jnp
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


def add_white_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`wave` plus Gaussian white noise whose power is the wave's mean power / 10^(snr_db / 10)."""
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=wave.shape)
    return (wave + noise).astype(wave.dtype)


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


def mfcc_from_log_mel(features: np.ndarray, mask: np.ndarray, n_mfcc: int) -> np.ndarray:
    """MFCCs [T, n_mfcc] of log-mel features [T, n_mels]: the orthonormal DCT-II over the mel bands, as
    librosa's MFCC (which takes the log in dB: 10 / ln 10 times natural-log input). Orthonormal, so
    normalised log-mels give coefficients of the same scale; padded frames (not in `mask`) are 0."""
    coefficients = features.astype(np.float32) @ _dct_ortho(features.shape[1], n_mfcc)
    return np.where(mask[:, None], coefficients, 0.0).astype(np.float32)


# --- On-device frontends matching Hugging Face feature extractors (16 kHz input) ---

_SAMPLE_RATE = 16000
_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls on every backend (TPU defaults to bfloat16)
_SLICES = 4  # 7-bit slices per operand in _exact_matmul: 28 bits, beyond float32's 24


@functools.cache
def _slaney_mel_filters(n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters [n_fft // 2 + 1, n_mels] over 0-8 kHz, as Whisper uses."""
    return librosa.filters.mel(
        sr=_SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, htk=False, norm="slaney", dtype=np.float64
    ).T


def _kaldi_mel(hz: float | np.ndarray) -> np.ndarray:
    """Hertz to Kaldi's mel scale."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


@functools.cache
def _kaldi_mel_filters(n_fft: int, n_mels: int, low_hz: float = 20.0) -> np.ndarray:
    """Kaldi mel filters [n_fft // 2 + 1, n_mels]: triangles in mel space, no normalisation, as AST uses."""
    edges = np.linspace(_kaldi_mel(low_hz), _kaldi_mel(_SAMPLE_RATE / 2), n_mels + 2)
    bins = _kaldi_mel(np.arange(n_fft // 2 + 1) * _SAMPLE_RATE / n_fft)[:, None]
    rising = (bins - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bins) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rising, falling))


def _frames(wave: jax.Array, frame_length: int, hop_length: int) -> jax.Array:
    """Splits [B, S] into frames [B, T, frame_length] with T = 1 + (S - frame_length) // hop_length."""
    count = max(0, 1 + (wave.shape[-1] - frame_length) // hop_length)
    index = hop_length * np.arange(count)[:, None] + np.arange(frame_length)
    return wave[:, index]


def _int_slices(x: jax.Array, axis: int) -> tuple[list[jax.Array], jax.Array]:
    """Splits x into _SLICES integer-valued arrays (|v| <= 2**7) and an exponent shared along axis, so that
    x ~= 2**exponent * sum_i slices[i] * 2**(-7 (i + 1)) to ~2**-28 of the largest magnitude along axis."""
    _, exponent = jnp.frexp(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    rest = jnp.ldexp(x, -exponent)
    slices = []
    for i in range(1, _SLICES + 1):
        slices.append(jnp.round(rest * 2.0 ** (7 * i)))
        rest = rest - slices[-1] * 2.0 ** (-7 * i)
    return slices, exponent


def _exact_matmul(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """x [..., L] @ matrix [L, K] to float64-like accuracy with float32 arrays (Ozaki scheme).

    Every product of 7-bit integer slices is exact in a float32 matmul (even with bfloat16 or tf32 inputs)
    while L * 2**14 <= 2**24 (frames up to 1,024 samples); only the final weighted sum rounds, so small
    outputs that a float32 FFT would swamp with rounding noise (quiet bins next to loud ones) stay accurate.
    """
    if x.shape[-1] * 2**14 > 2**24:
        raise ValueError(f"frames of {x.shape[-1]} samples are too long for exact float32 slice products")
    x_slices, x_exponent = _int_slices(x, axis=-1)
    m_slices, m_exponent = _int_slices(matrix, axis=0)
    pairs = sorted(((i, j) for i in range(_SLICES) for j in range(_SLICES - i)), key=sum, reverse=True)
    total = sum(
        jnp.matmul(x_slices[i], m_slices[j], precision=_HIGHEST) * 2.0 ** (-7 * (i + j + 2)) for i, j in pairs
    )
    return jnp.ldexp(jnp.ldexp(total, x_exponent), m_exponent)


def _dft_matrix(frame_length: int, n_fft: int) -> np.ndarray:
    """Real DFT of zero-padded frames, a matrix [frame_length, 2 * (n_fft // 2 + 1)]: cosines, then sines."""
    angle = 2 * np.pi * np.outer(np.arange(frame_length), np.arange(n_fft // 2 + 1)) / n_fft
    return np.concatenate([np.cos(angle), np.sin(angle)], axis=1)


def _power_spectrum(frames: jax.Array, matrix: np.ndarray) -> jax.Array:
    """Power spectrum [..., K / 2] of frames [..., L] through a float64-built frame-to-DFT matrix [L, K]."""
    spectrum = _exact_matmul(frames, jnp.asarray(matrix, jnp.float32))
    real, imag = jnp.split(spectrum, 2, axis=-1)
    return real**2 + imag**2


@functools.cache
def _whisper_stft_matrix(n_fft: int) -> np.ndarray:
    """Periodic-Hann window folded into the DFT matrix."""
    return np.hanning(n_fft + 1)[:-1, None] * _dft_matrix(n_fft, n_fft)


@functools.cache
def _kaldi_stft_matrix(frame_length: int = 400, n_fft: int = 512, preemphasis: float = 0.97) -> np.ndarray:
    """DC-offset removal, pre-emphasis and symmetric-Hann window folded into the DFT matrix (all linear)."""
    remove_dc = np.eye(frame_length) - 1.0 / frame_length
    emphasise = np.eye(frame_length) - preemphasis * np.eye(frame_length, k=-1)
    emphasise[0, 0] = 1 - preemphasis
    return (emphasise @ remove_dc).T @ (np.hanning(frame_length)[:, None] * _dft_matrix(frame_length, n_fft))


def _fit_length(x: jax.Array, length: int, axis: int) -> jax.Array:
    """Zero-pads at the end or truncates `axis` of x to `length`."""
    x = jax.lax.slice_in_dim(x, 0, min(length, x.shape[axis]), axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths)


@functools.partial(jax.jit, static_argnames=("n_mels", "n_fft", "hop_length", "chunk_samples"))
def whisper_log_mel(
    waveform: jax.Array,
    *,
    n_mels: int = 80,
    n_fft: int = 400,
    hop_length: int = 160,
    chunk_samples: int = 480000,
) -> jax.Array:
    """Whisper log-mel input_features [B, n_mels, chunk_samples // hop_length] from 16 kHz waveforms [B, S].

    Matches WhisperFeatureExtractor (padding="max_length"): zero-pad/truncate to 30 s, centred reflect-padded
    periodic-Hann STFT, last frame dropped, Slaney mel, log10, per-example 8.0 dynamic range, (x + 4) / 4.
    n_mels: 80 (most checkpoints) or 128 (large-v3).
    """
    wave = _fit_length(waveform.astype(jnp.float32), chunk_samples, axis=1)
    wave = jnp.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    power = _power_spectrum(_frames(wave, n_fft, hop_length)[:, :-1], _whisper_stft_matrix(n_fft))
    mel = jnp.matmul(power, _slaney_mel_filters(n_fft, n_mels).astype(np.float32), precision=_HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    log_spec = jnp.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0)
    return ((log_spec + 4.0) / 4.0).transpose(0, 2, 1)


@functools.partial(jax.jit, static_argnames=("num_mel_bins", "max_length"))
def ast_fbank(
    waveform: jax.Array,
    *,
    num_mel_bins: int = 128,
    max_length: int = 1024,
    mean: float = -4.2677393,
    std: float = 4.5689974,
) -> jax.Array:
    """AST input_values [B, max_length, num_mel_bins] from 16 kHz waveforms [B, S] (all of length S).

    Matches ASTFeatureExtractor's numpy Kaldi-compatible path: 25 ms symmetric-Hann frames every 10 ms, DC
    offset removed, pre-emphasis 0.97, 512-point power spectrum, Kaldi mel banks from 20 Hz, natural log
    floored at ~float32 eps, frames zero-padded/truncated to max_length, then (x - mean) / (2 * std).
    """
    power = _power_spectrum(_frames(waveform.astype(jnp.float32), 400, 160), _kaldi_stft_matrix())
    mel = jnp.matmul(power, _kaldi_mel_filters(512, num_mel_bins).astype(np.float32), precision=_HIGHEST)
    log_mel = jnp.log(jnp.maximum(mel, 1.192092955078125e-07))
    return (_fit_length(log_mel, max_length, axis=1) - mean) / (2 * std)


# --- Batched on-device librosa features (log_mel and librosa.feature.mfcc with the same STFT settings) ---
# These use a float32 FFT, 20-25x faster than _exact_matmul; whisper_log_mel and ast_fbank keep the exact
# STFT because the FFT breaks their 1e-5 parity with Hugging Face (up to 1.2e-5 and 1e-4 on FSDD clips/noise).


def _librosa_power(
    waves: jax.Array, n_fft: int, win_length: int | None, hop_length: int, exact: bool = False
) -> jax.Array:
    """librosa.stft(center=True, pad_mode="constant", window="hann") power [B, frames, n_fft // 2 + 1].

    A float32 jnp.fft.rfft: its rounding is ~1e-7 of each frame's largest bin, so bins 80 dB below it are off
    by up to ~1e-4 relative (log_mel's +1e-6 floor hides that; MFCC's top_db=80 floor does not quite).
    exact=True uses _exact_matmul: a few 1e-6 relative, but 20-25x slower. A float32 DFT matmul is both
    slower (3.5x) and less accurate than the FFT. Frames are n_fft samples under the zero-padded window, as
    in librosa, so the FFT needs no padding copy.
    """
    win_length = win_length or n_fft
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length={win_length} must be in (0, n_fft={n_fft}]")
    padded = jnp.pad(waves.astype(jnp.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
    frames = _frames(padded, n_fft, hop_length)
    window = librosa.util.pad_center(librosa.filters.get_window("hann", win_length, fftbins=True), size=n_fft)
    if exact:
        return _power_spectrum(frames, window[:, None] * _dft_matrix(n_fft, n_fft))
    spectrum = jnp.fft.rfft(frames * window.astype(np.float32), axis=-1)
    return jnp.square(spectrum.real) + jnp.square(spectrum.imag)


def _in_row_groups(fn, waves: jax.Array, group_samples: int | None) -> jax.Array:
    """fn(waves) computed on groups of rows of about group_samples samples (lax.map), so that each group's
    frames and spectra stay in cache: 2x faster for 64 clips of 2-5 s on a 2-core CPU, equal for 1 s.
    None: all rows at once (e.g. on an accelerator)."""
    rows = waves.shape[0] if group_samples is None else max(1, group_samples // waves.shape[1])
    if rows >= waves.shape[0]:
        return fn(waves)
    return jax.lax.map(lambda row: fn(row[None])[0], waves, batch_size=rows)


@functools.cache
def _librosa_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel's default (Slaney, float32) bank as [n_fft // 2 + 1, n_mels]."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T


def _librosa_mel(waves, sample_rate, n_fft, win_length, hop_length, n_mels, exact) -> jax.Array:
    """librosa.feature.melspectrogram(power=2.0) as [B, frames, n_mels]."""
    power = _librosa_power(waves, n_fft, win_length, hop_length, exact)
    return jnp.matmul(power, _librosa_mel_filters(sample_rate, n_fft, n_mels), precision=_HIGHEST)


_LIBROSA_ARGS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "exact", "group_samples")


@functools.partial(jax.jit, static_argnames=_LIBROSA_ARGS)
def log_mel_jax(
    waves: jax.Array,
    sample_rate: int = 16000,
    n_fft: int = 512,
    win_length: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
    exact: bool = False,
    group_samples: int | None = 2**19,
) -> jax.Array:
    """`log_mel` of every row of waves [B, S] on device: float32 [B, 1 + S // hop_length, n_mels].

    Within 1e-4 of `log_mel` (i.e. of the floored mel power mel + 1e-6, relatively) on FSDD clips and noise
    (worst measured 5e-5). exact: the slower _exact_matmul STFT (see _librosa_power). group_samples: see
    _in_row_groups.
    """

    def features(rows: jax.Array) -> jax.Array:
        return jnp.log(_librosa_mel(rows, sample_rate, n_fft, win_length, hop_length, n_mels, exact) + 1e-6)

    return _in_row_groups(features, waves, group_samples)


@functools.cache
def _dct_ortho(n_mels: int, n_mfcc: int) -> np.ndarray:
    """DCT-II with norm="ortho" (scipy.fft.dct) as a matrix [n_mels, n_mfcc], built in float64."""
    basis = np.cos(np.pi * np.outer(np.arange(n_mels) + 0.5, np.arange(n_mfcc)) / n_mels)
    basis *= np.sqrt(2.0 / n_mels)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("n_mfcc", *_LIBROSA_ARGS))
def mfcc_jax(
    waves: jax.Array,
    sample_rate: int = 16000,
    n_mfcc: int = 20,
    n_fft: int = 512,
    win_length: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
    exact: bool = False,
    group_samples: int | None = 2**19,
) -> jax.Array:
    """librosa.feature.mfcc(y=row, sr=sample_rate, n_mfcc, n_fft, hop_length, win_length, n_mels).T of every
    row of waves [B, S]: float32 [B, frames, n_mfcc]. power_to_db (ref 1, amin 1e-10, top_db 80 below each
    clip's maximum), then the orthonormal DCT-II over mel bands.

    Error against librosa, |ours - librosa| / max(|librosa|, 1): up to 1.3e-4 on FSDD clips with the float32
    FFT (quiet bands near the -80 dB floor), ~3e-5 with exact=True (then librosa's own float32 error
    dominates). Against each clip's largest |coefficient| both are below 1e-6. group_samples: see
    _in_row_groups.
    """

    def features(rows: jax.Array) -> jax.Array:
        mel = _librosa_mel(rows, sample_rate, n_fft, win_length, hop_length, n_mels, exact)
        db = 10.0 * jnp.log10(jnp.maximum(mel, 1e-10))
        db = jnp.maximum(db, db.max(axis=(1, 2), keepdims=True) - 80.0)
        return jnp.matmul(db, _dct_ortho(n_mels, n_mfcc), precision=_HIGHEST)

    return _in_row_groups(features, waves, group_samples)
