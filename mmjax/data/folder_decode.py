"""One metadata row of a data folder -> one stored example: the tfds features, the checks on a file path
before it is read, image and audio decoding, and label cells (see mmjax.data.folder).
"""

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.folder_schema import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    FolderConfig,
    Schema,
    cell_text,
    cell_value,
    class_name,
    column_name,
    file_extension,
    is_empty,
    is_number,
    stream_cell,
)
from mmjax.data.inputs import fit_image

# --- Features and decoding ---


def features(config: FolderConfig, schema: Schema) -> tfds.features.FeaturesDict:
    """The tfds features of one stored example."""
    raw = tfds.features.Encoding.BYTES
    spec = {"row": tfds.features.Tensor(shape=(), dtype=np.int64), "source_split": tfds.features.Text()}
    for stream, info in schema.streams.items():
        if info["kind"] == "image":
            shape = (*config.image_size, config.image_channels)
            spec[stream] = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=raw)
        elif info["kind"] == "audio":
            shape = empty_audio(config).shape[1:]
            spec[stream] = tfds.features.Tensor(shape=(None, *shape), dtype=np.float32, encoding=raw)
        else:
            spec[stream] = tfds.features.Text()
        spec[f"present/{stream}"] = tfds.features.Tensor(shape=(), dtype=np.bool_)
    for task, info in schema.tasks.items():
        if info["kind"] == "classes":
            spec[f"labels/{task}"] = tfds.features.Tensor(shape=(), dtype=np.int64)
        elif info["kind"] == "multilabel":
            spec[f"labels/{task}"] = tfds.features.Tensor(shape=(len(info["classes"]),), dtype=np.int8)
        else:
            spec[f"labels/{task}"] = tfds.features.Tensor(shape=(), dtype=np.float32)
    for column in schema.meta:
        spec[f"meta/{column}"] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)


class BadRow(Exception):
    """A row that cannot be used: its column, file and problem."""

    def __init__(self, column: str, file: str, problem: str):
        super().__init__(problem)
        self.column, self.file, self.problem = column, file, problem


def _resolve(split_dir: pathlib.Path, column: str, raw, kind: str) -> pathlib.Path:
    """The file a cell names, checked before anything is read: it must stay inside its split folder (no
    absolute path, no `..`, no symlink out), have an extension of the column's kind and exist."""
    value = str(raw)
    relative = pathlib.PurePath(value)
    if relative.is_absolute() or value.startswith(("/", "\\")):
        raise BadRow(column, value, "refused: an absolute path escapes its split folder")
    if ".." in relative.parts or ".." in pathlib.PurePosixPath(value.replace("\\", "/")).parts:
        raise BadRow(column, value, "refused: a path with '..' escapes its split folder")
    real = pathlib.Path(os.path.realpath(split_dir / relative))
    if not real.is_relative_to(os.path.realpath(split_dir)):
        raise BadRow(column, value, f"refused: the path resolves outside its split folder (to {real})")
    allowed = IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS
    extension = file_extension(value)
    if extension not in allowed:
        expected = ", ".join(sorted(allowed))
        raise BadRow(column, value, f"unsupported extension {extension!r} for an {kind} column ({expected})")
    if not real.is_file():
        raise BadRow(column, value, "missing file")
    return real


def decode_image(
    path: pathlib.Path, size: tuple[int, int], channels: int, resize: int = 0, resample: str = "bilinear"
) -> np.ndarray:
    """An image file -> uint8 [height, width, channels] (RGB or grey, fitted by inputs.fit_image); ValueError
    if undecodable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = fit_image(image.convert("RGB" if channels == 3 else "L"), size, resize, resample)
    except Exception as err:  # PIL raises many types for truncated or foreign files
        raise ValueError(f"cannot decode image: {type(err).__name__}: {err}") from err
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def audio_features(path: pathlib.Path, config: FolderConfig) -> np.ndarray:
    """An audio file -> what the build stores (stored_audio). ValueError if undecodable, empty, silent or
    non-finite."""
    from mmjax.data import audio

    wave, rate = audio.load_wav(path)  # soundfile: WAV, FLAC, OGG (and MP3 where libsndfile has it)
    return stored_audio(wave, rate, config)


def stored_audio(wave: np.ndarray, rate: int, config: FolderConfig) -> np.ndarray:
    """A waveform at `rate` -> its first max_audio_seconds at config.sample_rate, stored as config.frontend
    says: normalised log-mel float32 [frames, n_mels] (25 ms windows every 10 ms) or the samples float32
    [samples]. ValueError if silent or non-finite."""
    from mmjax.data import audio

    wave = wave[: max(1, int(round(config.max_audio_seconds * rate)))]
    if not np.all(np.isfinite(wave)):
        raise ValueError("non-finite samples")
    if not np.any(wave):
        raise ValueError("silent audio (every sample is 0)")
    sr = config.sample_rate
    wave = audio.resample(wave, rate, sr)
    if config.frontend == "waveform":
        return wave
    window, hop = round(0.025 * sr), round(0.01 * sr)
    n_fft = 1 << (window - 1).bit_length()
    mel = audio.log_mel(wave, sr, n_fft=n_fft, win_length=window, hop_length=hop, n_mels=config.n_mels)
    return audio.normalize(mel)


def empty_audio(config: FolderConfig) -> np.ndarray:
    """What the build stores for an absent audio input: no frames (or no samples)."""
    shape = (0,) if config.frontend == "waveform" else (0, config.n_mels)
    return np.zeros(shape, np.float32)


def _label(task: str, info: dict, raw, typed: bool, index: dict[str, int]):
    """A label cell's stored value (-1 / all -1 / NaN when empty); BadRow if unusable."""
    value = cell_value(raw, typed)
    kind = info["kind"]
    if kind == "regression":
        if is_empty(value):
            return np.float32(np.nan)
        if isinstance(value, str):
            value = cell_value(value.strip(), typed=False)
        if not is_number(value):
            raise BadRow(task, "", f"non-numeric regression value {cell_text(raw)!r} in column {task}")
        try:
            with np.errstate(over="ignore"):
                stored = np.float32(float(value))
        except OverflowError:  # an int beyond float64
            stored = np.float32(np.inf)
        if not np.isfinite(stored):  # inf, nan, or beyond float32
            raise BadRow(task, "", f"non-finite regression value {cell_text(raw)!r} in column {task}")
        return stored
    if kind == "classes":
        if is_empty(value):
            return -1
        if isinstance(value, list):
            raise BadRow(task, "", f"a list {cell_text(raw)!r} in single-class column {task}")
        name = class_name(value)
        if name not in index:
            raise BadRow(task, "", f"unknown label {name!r} in column {task}")
        return index[name]
    hot = np.zeros(len(info["classes"]), np.int8)
    if is_empty(value):
        return hot - 1
    for item in value if isinstance(value, list) else [value]:
        name = class_name(item)
        if name not in index:
            raise BadRow(task, "", f"unknown label {name!r} in column {task}")
        hot[index[name]] = 1
    return hot


def stored_example(row: dict | None, number: int, source_split: str, typed: bool, state: dict) -> dict:
    """One metadata row -> one stored example; BadRow if it cannot be used (cheap checks before decoding)."""
    config, schema = state["config"], state["schema"]
    if row is None:
        raise BadRow("", "", "the line is not a JSON object")
    split_dir = pathlib.Path(config.root) / source_split
    example = {"row": number, "source_split": source_split}
    files = {}
    for stream, info in schema.streams.items():
        raw = stream_cell(row, info, typed)
        present = not is_empty(cell_value(raw, typed))
        example[f"present/{stream}"] = present
        if present and info["kind"] != "text":
            files[stream] = (raw, _resolve(split_dir, column_name(info), raw, info["kind"]))
        elif info["kind"] == "text":
            example[stream] = cell_text(raw) if present else ""
        elif info["kind"] == "image":
            example[stream] = np.zeros((*config.image_size, config.image_channels), np.uint8)
        else:
            example[stream] = empty_audio(config)
    for task, info in schema.tasks.items():
        example[f"labels/{task}"] = _label(task, info, row.get(task), typed, state["index"][task])
    for column in schema.meta:
        raw = row.get(column)
        example[f"meta/{column}"] = "" if is_empty(raw) else cell_text(raw)
    for stream, (raw, path) in files.items():
        column = column_name(schema.streams[stream])
        try:
            if schema.streams[stream]["kind"] == "image":
                example[stream] = decode_image(
                    path, config.image_size, config.image_channels, config.image_resize, config.image_resample
                )
            else:
                example[stream] = audio_features(path, config)
        except ValueError as err:
            problem = str(err).replace(f"cannot read audio file {path}: ", "cannot decode audio: ")
            raise BadRow(column, str(raw), problem) from None
    return example
