"""Any multimodal data set in a folder, in Hugging Face `datasets` folder conventions, built once into a tfds
array_record data set and read by random access (no TensorFlow).

Folder layout: ROOT/{train,validation,test}/metadata.{jsonl,csv,parquet} (one per split folder; splits may
differ in format). train is required, test optional; without a validation folder a seeded fraction of the
train rows is carved off (per row, by a hash of (split_seed, row number), so it streams).

Columns (kinds are decided from the train values):
- `file_name` / `<name>_file_name`: a path relative to its split folder; image (png, jpg, jpeg, webp, bmp,
  tif, tiff) or audio (wav, flac, ogg, and mp3 where soundfile decodes it) by the majority of its extensions.
- `file_names` / `<name>_file_names`: a list of such paths (a JSON list in metadata.csv): one stream per
  position, as many as the longest list in train (FolderConfig.max_files caps them); a shorter list leaves
  the later streams absent, and files beyond the last stream are not read.
- label columns (FolderConfig.labels): ints or strings -> "classes", lists of strings -> "multilabel", floats
  -> "regression" (FolderConfig.label_kinds overrides). In metadata.csv a cell holding a JSON list
  (`["three", "seven"]`) is a list, and numbers are numbers: `7.0` is a float, `7` an int. A float column
  of whole numbers (e.g. pandas ints with missing values) is inferred as regression: set label_kinds.
- other string columns are text inputs unless listed in FolderConfig.ignore; every remaining column (numbers,
  lists, ignored columns) is metadata, stored as a string.
An empty cell (missing, None, "", NaN) marks an input absent (`present/<stream>` False) or a label unset
(-1 / all -1 / NaN); the row is kept.

Stored features per example: `<stream>` (image uint8 [H, W, C]; audio float32 [frames, n_mels] normalised
log-mel, [0, n_mels] when absent; text str), `present/<stream>` bool, `labels/<task>` (classes int64, -1
unset; multilabel int8 multi-hot [K], all -1 unset; regression float32, NaN unset), `meta/<column>` str,
`row` int64 and `source_split` str. `row` is the 1-based line number in metadata.jsonl and the 1-based
data-row number in metadata.csv (the header is not counted) and metadata.parquet.

Rows that cannot be used (missing or undecodable file, unsupported extension, a path that leaves its split
folder, an unknown label, a bad regression value, empty/silent audio) are skipped and listed in
`bad_inputs.json` (on_bad="skip"), or the first one raises ValueError naming the metadata file, row, column,
file and problem (on_bad="stop").

Building: `build(config, cache_dir)` writes `cache_dir/folder-<key>` (key: the metadata files' bytes, the
config and FORMAT_VERSION; image and audio files are not hashed, so edit the metadata or the config to
rebuild). Rows go in shards of SHARD_ROWS to worker processes; each finished shard is a tfds array_record
file plus a sidecar in `work/`, so a killed build resumes where it stopped. A `COMPLETE` file is written
last; a complete folder is returned at once.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import re
from collections.abc import Iterator

import numpy as np
import soundfile
import tensorflow_datasets as tfds
import tqdm
from tensorflow_datasets.core import example_serializer, naming
from tensorflow_datasets.core import splits as splits_lib

FORMAT_VERSION = 1  # bump when the stored layout or decoding changes: every cached build is then redone
SHARD_ROWS = 1000  # metadata rows per shard (part of the cache key; tests shrink it)
SPLITS = ("train", "validation", "test")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"})
_MP3 = {"mp3"} if "MP3" in soundfile.available_formats() else set()  # libsndfile >= 1.1 decodes MP3
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "ogg"} | _MP3)
LABEL_KINDS = ("classes", "multilabel", "regression")
STREAM_KINDS = ("image", "audio", "text")
ON_BAD = ("skip", "stop")
COMPLETE = "COMPLETE"  # written last: its presence marks a finished build
SCHEMA = "schema.json"
CONFIG = "config.json"
BAD_INPUTS = "bad_inputs.json"
WORK = "work"  # per-shard sidecars and the scan result of an (un)finished build
DATASET_NAME = "folder"
_TEMPLATE = naming.DEFAULT_FILENAME_TEMPLATE  # {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}
_SUFFIX = "array_record"
_SHOWN_BAD = 20  # bad rows printed as warnings; all are listed in bad_inputs.json


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """How to read and store a folder; every field is JSON-able and part of the cache key."""

    root: str
    labels: tuple[str, ...]
    label_kinds: tuple[tuple[str, str], ...] = ()  # overrides: (column, "classes"|"multilabel"|"regression")
    ignore: tuple[str, ...] = ()  # string columns that are not text inputs (kept as metadata)
    image_size: tuple[int, int] = (64, 64)  # (height, width) after resizing
    image_channels: int = 3  # 3: RGB, 1: grey
    sample_rate: int = 16000  # audio resampled to this
    n_mels: int = 64  # normalised log-mel bands, 25 ms windows every 10 ms
    max_audio_seconds: float = 10.0  # longer clips are cropped (features of the first N s)
    validation_fraction: float = 0.1  # of train rows, when there is no validation folder
    split_seed: int = 0
    on_bad: str = "skip"  # "skip": skip, list and count; "stop": raise at the first
    max_files: int = 0  # streams per list-of-files column (0: the longest list in train)

    def __post_init__(self):
        kinds = self.label_kinds.items() if isinstance(self.label_kinds, dict) else self.label_kinds
        fixed = {
            "root": os.fspath(self.root),
            "labels": tuple(self.labels),
            "label_kinds": tuple((str(c), str(k)) for c, k in kinds),
            "ignore": tuple(self.ignore),
            "image_size": tuple(int(v) for v in self.image_size),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)
        for column, kind in self.label_kinds:
            if kind not in LABEL_KINDS:
                raise ValueError(f"label_kinds: {column!r} has kind {kind!r}; expected one of {LABEL_KINDS}")
            if column not in self.labels:
                raise ValueError(f"label_kinds names {column!r}, which is not in labels {self.labels}")
        if self.on_bad not in ON_BAD:
            raise ValueError(f"on_bad={self.on_bad!r} is not one of {ON_BAD}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels={self.image_channels} must be 1 (grey) or 3 (RGB)")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size={self.image_size} must be (height, width), both positive")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction} must be in [0, 1)")
        if self.sample_rate <= 0 or self.n_mels <= 0 or not self.max_audio_seconds > 0:
            raise ValueError("sample_rate, n_mels and max_audio_seconds must be positive")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FolderConfig":
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class Schema:
    """What a folder holds; stored as schema.json beside the built data."""

    # stream -> {"kind": "image"|"audio"|"text", "column": str[, "position": i in a list of files]}
    streams: dict[str, dict]
    tasks: dict[str, dict]  # label -> {"kind": "classes"|"multilabel"|"regression", "classes": [names]}
    meta: tuple[str, ...]  # metadata columns
    splits: dict[str, int]  # split -> number of examples written (empty from `scan`)
    validation: dict  # {"from": "folder"} or {"from": "train", "fraction": f, "seed": s}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        data = json.loads(text)
        return cls(
            streams=data["streams"],
            tasks=data["tasks"],
            meta=tuple(data["meta"]),
            splits=data["splits"],
            validation=data["validation"],
        )


# --- Reading metadata files (streaming) ---


def split_files(root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """{split: its metadata file} of the split folders under root (train required)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"own-data folder {root} does not exist")
    files = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        found = [folder / name for name in METADATA_NAMES if (folder / name).is_file()]
        if len(found) > 1:
            names = ", ".join(map(str, found))
            raise ValueError(f"{folder} has {len(found)} metadata files ({names}); keep one")
        if not found:
            raise ValueError(f"{folder} has no metadata file (one of {', '.join(METADATA_NAMES)})")
        files[split] = found[0]
    if "train" not in files:
        raise ValueError(f"{root} has no train/ folder with a metadata file ({', '.join(METADATA_NAMES)})")
    return files


def _typed(path: pathlib.Path) -> bool:
    """Whether the file's cells carry their own types (JSON, parquet) rather than text to parse (CSV)."""
    return path.suffix != ".csv"


def iter_rows(path: pathlib.Path) -> Iterator[tuple[int, dict | None]]:
    """(row number, {column: raw value}) of a metadata file, streaming; None for a jsonl line that is not a
    JSON object. CSV values are the raw strings (see `_value`)."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield number, row if isinstance(row, dict) else None
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            for number, row in enumerate(csv.DictReader(f), start=1):
                row.pop(None, None)  # cells beyond the header
                yield number, row
    else:
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def _header(path: pathlib.Path) -> list[str] | None:
    """Column names of a CSV or parquet file (None for jsonl: its keys are gathered while scanning)."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f), [])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return None


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _value(raw, typed: bool):
    """A cell's value: JSON/parquet values as they are; a CSV cell parsed to an int, a float, a JSON list, or
    left a string."""
    if typed or not isinstance(raw, str):
        return raw
    cell = raw.strip()
    if _INT.fullmatch(cell):
        return int(cell)
    if _FLOAT.fullmatch(cell):
        return float(cell)
    if cell.startswith("[") and cell.endswith("]"):
        try:
            parsed = json.loads(cell)
        except json.JSONDecodeError:
            return raw
        if isinstance(parsed, list):
            return parsed
    return raw


def _is_empty(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _text(raw) -> str:
    """A cell as stored text: strings as they are, other values as JSON."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, ensure_ascii=False)
    except TypeError:
        return str(raw)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _class_name(value) -> str:
    """A class value as its name: strings as they are, 3 and 3.0 as "3", 2.5 as "2.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _extension(value) -> str:
    return pathlib.PurePath(str(value)).suffix.lower().lstrip(".")


# --- Scan: one streaming pass that decides the schema ---


class _Column:
    """What the scan keeps of a train column: value types, extensions, and a label column's vocabulary."""

    def __init__(self, kind: str | None):
        self.label_kind = kind  # a label override, or None
        self.types = collections.Counter()
        self.extensions = collections.Counter()
        self.values = set()  # class names (labels only, dropped once a float makes it regression)
        self.all_numbers = True
        self.longest = 0  # a list-of-files column: its longest list

    def add(self, value, is_label: bool, is_file: bool) -> None:
        self.types[_type_name(value)] += 1
        if is_file:
            files = value if isinstance(value, list) else [value]
            self.extensions.update(_extension(item) for item in files)
            self.longest = max(self.longest, len(files))
        if not is_label or self.label_kind == "regression":
            return
        if self.label_kind is None and self.types["float"]:
            self.values = set()  # a float makes an inferred label regression (or a mix _label_kind refuses)
            return
        for item in value if isinstance(value, list) else [value]:
            self.all_numbers &= _is_number(item)
            self.values.add(item if _is_number(item) else _class_name(item))

    def class_names(self) -> list[str]:
        if self.all_numbers:
            return [_class_name(v) for v in sorted(self.values)]
        return sorted({_class_name(v) for v in self.values})


def _type_name(value) -> str:
    for kind, types in (("list", list), ("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):
            return kind
    return "other"


def _label_kind(column: str, stats: _Column) -> str:
    if stats.label_kind:
        return stats.label_kind
    if not stats.types:
        raise ValueError(f"label column {column!r} has no values in train; set label_kinds or drop it")
    if stats.types["list"]:
        if stats.types["list"] != sum(stats.types.values()):
            raise ValueError(
                f"label column {column!r} mixes lists and single values in train; set label_kinds for it"
            )
        return "multilabel"
    if stats.types["float"]:
        if stats.types["int"] + stats.types["float"] != sum(stats.types.values()):
            raise ValueError(
                f"label column {column!r} mixes fractional numbers and other values in train; set label_kinds"
            )
        return "regression"
    return "classes"


def _stream_kind(column: str, stats: _Column) -> str:
    image = sum(n for ext, n in stats.extensions.items() if ext in IMAGE_EXTENSIONS)
    audio = sum(n for ext, n in stats.extensions.items() if ext in AUDIO_EXTENSIONS)
    if not image and not audio:
        seen = sorted(stats.extensions)
        raise ValueError(
            f"file column {column!r} has no image ({', '.join(sorted(IMAGE_EXTENSIONS))}) or audio "
            f"({', '.join(sorted(AUDIO_EXTENSIONS))}) files in train (extensions seen: {seen})"
        )
    return "image" if image >= audio else "audio"


def _scan(config: FolderConfig, files: dict[str, pathlib.Path]) -> tuple[Schema, dict[str, int]]:
    """The schema and each split's number of metadata rows, in one streaming pass over the metadata."""
    overrides = dict(config.label_kinds)
    train = files["train"]
    columns: dict[str, _Column] = {}

    def column(name: str) -> _Column:
        if name not in columns:
            columns[name] = _Column(overrides.get(name))
        return columns[name]

    for name in _header(train) or []:
        column(name)
    typed = _typed(train)
    rows = {split: 0 for split in files}
    for _, row in iter_rows(train):
        rows["train"] += 1
        for name, raw in (row or {}).items():
            value = _value(raw, typed)
            stats = column(name)
            if not _is_empty(value):
                stats.add(value, name in config.labels, _is_file_column(name) or _is_file_list(name))
    for split, path in files.items():
        if split != "train":
            rows[split] = sum(1 for _ in iter_rows(path))
    if not rows["train"]:
        raise ValueError(f"{train} has no rows")
    for name in [*config.labels, *config.ignore]:
        if name not in columns:
            what = "labels" if name in config.labels else "ignore"
            raise ValueError(f"{what} names column {name!r}, which {train} lacks (columns: {list(columns)})")

    streams, meta, counts = {}, [], collections.Counter()
    for name, stats in columns.items():
        if name in config.labels:
            continue
        if name in config.ignore:
            meta.append(name)
            continue
        positions = [{}]
        if _is_file_list(name):
            kind = _stream_kind(name, stats)
            positions = [
                {"position": i} for i in range(min(stats.longest, config.max_files or stats.longest))
            ]
        elif _is_file_column(name):
            kind = _stream_kind(name, stats)
        elif stats.types["str"]:
            kind = "text"
        else:
            meta.append(name)
            continue
        for position in positions:
            counts[kind] += 1
            stream = kind if counts[kind] == 1 else f"{kind}_{counts[kind]}"
            streams[stream] = {"kind": kind, "column": name, **position}
    tasks = {}
    for name in config.labels:
        kind = _label_kind(name, columns[name])
        tasks[name] = {"kind": kind, "classes": [] if kind == "regression" else columns[name].class_names()}
    if "validation" in files:
        validation = {"from": "folder"}
    else:
        validation = {"from": "train", "fraction": config.validation_fraction, "seed": config.split_seed}
    schema = Schema(streams=streams, tasks=tasks, meta=tuple(meta), splits={}, validation=validation)
    return schema, rows


def _is_file_column(name: str) -> bool:
    return name == "file_name" or name.endswith("_file_name")


def _is_file_list(name: str) -> bool:
    return name == "file_names" or name.endswith("_file_names")


def _column_name(info: dict) -> str:
    """A stream's column as bad_inputs.json names it: `views_file_names[1]` for a list's second file."""
    return info["column"] + (f"[{info['position']}]" if "position" in info else "")


def _cell(row: dict, info: dict, typed: bool):
    """A stream's raw cell: the column's value, or the `position`-th file of a list-of-files column (None
    when the list is shorter)."""
    raw = row.get(info["column"])
    if "position" not in info:
        return raw
    files = _value(raw, typed)
    files = [] if _is_empty(files) else files if isinstance(files, list) else [files]
    return files[info["position"]] if info["position"] < len(files) else None


def scan(config: FolderConfig) -> Schema:
    """The schema of a folder (streams, tasks, metadata columns, validation source) from one streaming pass
    over its metadata; `splits` is left empty (it counts written examples)."""
    return _scan(config, split_files(config.root))[0]


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
            spec[stream] = tfds.features.Tensor(shape=(None, config.n_mels), dtype=np.float32, encoding=raw)
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
    extension = _extension(value)
    if extension not in allowed:
        expected = ", ".join(sorted(allowed))
        raise BadRow(column, value, f"unsupported extension {extension!r} for an {kind} column ({expected})")
    if not real.is_file():
        raise BadRow(column, value, "missing file")
    return real


def decode_image(path: pathlib.Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """An image file -> uint8 [height, width, channels] (RGB or grey, bilinear resize); ValueError if
    undecodable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            image = image.resize((size[1], size[0]), Image.BILINEAR)
    except Exception as err:  # PIL raises many types for truncated or foreign files
        raise ValueError(f"cannot decode image: {type(err).__name__}: {err}") from err
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def audio_features(path: pathlib.Path, sample_rate: int, n_mels: int, max_seconds: float) -> np.ndarray:
    """An audio file -> mono, first max_seconds, resampled to sample_rate -> normalised log-mel float32
    [frames, n_mels] (25 ms windows every 10 ms). ValueError if undecodable, empty, silent or non-finite."""
    from mmjax.data import audio

    wave, rate = audio.load_wav(path)  # soundfile: WAV, FLAC, OGG (and MP3 where libsndfile has it)
    return wave_features(wave, rate, sample_rate, n_mels, max_seconds)


def wave_features(
    wave: np.ndarray, rate: int, sample_rate: int, n_mels: int, max_seconds: float
) -> np.ndarray:
    """A waveform at `rate` -> its first max_seconds at sample_rate -> normalised log-mel float32
    [frames, n_mels] (25 ms windows every 10 ms). ValueError if silent or non-finite."""
    from mmjax.data import audio

    wave = wave[: max(1, int(round(max_seconds * rate)))]
    if not np.all(np.isfinite(wave)):
        raise ValueError("non-finite samples")
    if not np.any(wave):
        raise ValueError("silent audio (every sample is 0)")
    wave = audio.resample(wave, rate, sample_rate)
    window, hop = round(0.025 * sample_rate), round(0.01 * sample_rate)
    n_fft = 1 << (window - 1).bit_length()
    mel = audio.log_mel(wave, sample_rate, n_fft=n_fft, win_length=window, hop_length=hop, n_mels=n_mels)
    return audio.normalize(mel)


def _label(task: str, info: dict, raw, typed: bool, index: dict[str, int]):
    """A label cell's stored value (-1 / all -1 / NaN when empty); BadRow if unusable."""
    value = _value(raw, typed)
    kind = info["kind"]
    if kind == "regression":
        if _is_empty(value):
            return np.float32(np.nan)
        if isinstance(value, str):
            value = _value(value.strip(), typed=False)
        if not _is_number(value):
            raise BadRow(task, "", f"non-numeric regression value {_text(raw)!r} in column {task}")
        try:
            with np.errstate(over="ignore"):
                stored = np.float32(float(value))
        except OverflowError:  # an int beyond float64
            stored = np.float32(np.inf)
        if not np.isfinite(stored):  # inf, nan, or beyond float32
            raise BadRow(task, "", f"non-finite regression value {_text(raw)!r} in column {task}")
        return stored
    if kind == "classes":
        if _is_empty(value):
            return -1
        if isinstance(value, list):
            raise BadRow(task, "", f"a list {_text(raw)!r} in single-class column {task}")
        name = _class_name(value)
        if name not in index:
            raise BadRow(task, "", f"unknown label {name!r} in column {task}")
        return index[name]
    hot = np.zeros(len(info["classes"]), np.int8)
    if _is_empty(value):
        return hot - 1
    for item in value if isinstance(value, list) else [value]:
        name = _class_name(item)
        if name not in index:
            raise BadRow(task, "", f"unknown label {name!r} in column {task}")
        hot[index[name]] = 1
    return hot


# --- Shards (run in worker processes, or inline with workers=1) ---

_WORKER: dict | None = None  # per-process state set by _init_worker


def _init_worker(config_json: str, schema_json: str, out: str) -> None:
    global _WORKER
    config, schema = FolderConfig.from_json(config_json), Schema.from_json(schema_json)
    spec = features(config, schema)
    _WORKER = {
        "config": config,
        "schema": schema,
        "out": pathlib.Path(out),
        "features": spec,
        "serializer": example_serializer.ExampleSerializer(spec.get_serialized_info()),
        "index": {task: {n: i for i, n in enumerate(info["classes"])} for task, info in schema.tasks.items()},
    }


def _example(row: dict | None, number: int, source_split: str, typed: bool, state: dict) -> dict:
    """One metadata row -> one stored example; BadRow if it cannot be used (cheap checks before decoding)."""
    config, schema = state["config"], state["schema"]
    if row is None:
        raise BadRow("", "", "the line is not a JSON object")
    split_dir = pathlib.Path(config.root) / source_split
    example = {"row": number, "source_split": source_split}
    files = {}
    for stream, info in schema.streams.items():
        raw = _cell(row, info, typed)
        present = not _is_empty(_value(raw, typed))
        example[f"present/{stream}"] = present
        if present and info["kind"] != "text":
            files[stream] = (raw, _resolve(split_dir, _column_name(info), raw, info["kind"]))
        elif info["kind"] == "text":
            example[stream] = _text(raw) if present else ""
        elif info["kind"] == "image":
            example[stream] = np.zeros((*config.image_size, config.image_channels), np.uint8)
        else:
            example[stream] = np.zeros((0, config.n_mels), np.float32)
    for task, info in schema.tasks.items():
        example[f"labels/{task}"] = _label(task, info, row.get(task), typed, state["index"][task])
    for column in schema.meta:
        raw = row.get(column)
        example[f"meta/{column}"] = "" if _is_empty(raw) else _text(raw)
    for stream, (raw, path) in files.items():
        column = _column_name(schema.streams[stream])
        try:
            if schema.streams[stream]["kind"] == "image":
                example[stream] = decode_image(path, config.image_size, config.image_channels)
            else:
                seconds = config.max_audio_seconds
                example[stream] = audio_features(path, config.sample_rate, config.n_mels, seconds)
        except ValueError as err:
            problem = str(err).replace(f"cannot read audio file {path}: ", "cannot decode audio: ")
            raise BadRow(column, str(raw), problem) from None
    return example


def _template(out: pathlib.Path, split: str) -> naming.ShardedFileTemplate:
    """tfds' file naming: folder-<split>.array_record-<shard>-of-<shards>."""
    return naming.ShardedFileTemplate(
        data_dir=out, template=_TEMPLATE, dataset_name=DATASET_NAME, split=split, filetype_suffix=_SUFFIX
    )


def _shard_path(out: pathlib.Path, split: str, shard: int, shards: int) -> pathlib.Path:
    return pathlib.Path(_template(out, split).sharded_filepath(shard_index=shard, num_shards=shards))


def _sidecar(out: pathlib.Path, split: str, shard: int) -> pathlib.Path:
    return out / WORK / f"{split}-{shard:05d}.json"


def bad_row_message(record: dict) -> str:
    file = f", file {record['file']!r}" if record["file"] else ""
    column = f", column {record['column']!r}" if record["column"] else ""
    return f"{record['metadata']} row {record['row']}{column}{file}: {record['problem']}"


def _run_shard(job: dict) -> dict:
    """Writes one shard's array_record file (under a temporary name, renamed when complete), then its
    sidecar {split, shard, rows, examples, bad, pid}; returns the sidecar."""
    from array_record.python import array_record_module

    state = _WORKER
    out, config = state["out"], state["config"]
    path = _shard_path(out, job["split"], job["shard"], job["shards"])
    temporary = out / WORK / f"{path.name}.{os.getpid()}.tmp"
    writer = array_record_module.ArrayRecordWriter(str(temporary), "group_size:1")
    bad, examples = [], 0
    try:
        for number, row in job["rows"]:
            try:
                example = _example(row, number, job["source_split"], job["typed"], state)
            except BadRow as err:
                record = {
                    "split": job["split"],
                    "metadata": job["metadata"],
                    "row": number,
                    "column": err.column,
                    "file": err.file,
                    "problem": err.problem,
                }
                if config.on_bad == "stop":
                    raise ValueError(
                        f"bad input in {bad_row_message(record)} (on_bad='skip' skips and lists such rows)"
                    ) from None
                bad.append(record)
                continue
            writer.write(state["serializer"].serialize_example(state["features"].encode_example(example)))
            examples += 1
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(temporary, path)
    sidecar = {
        "split": job["split"],
        "shard": job["shard"],
        "rows": len(job["rows"]),
        "examples": examples,
        "bad": bad,
        "pid": os.getpid(),  # the process that decoded it
    }
    _write_atomic(_sidecar(out, job["split"], job["shard"]), json.dumps(sidecar))
    return sidecar


def _write_atomic(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- Build ---


def cache_key(config: FolderConfig, files: dict[str, pathlib.Path] | None = None) -> str:
    """Short sha256 of every metadata file's bytes, the config (root made absolute), SHARD_ROWS and
    FORMAT_VERSION."""
    files = files or split_files(config.root)
    digest = hashlib.sha256(f"mmjax-folder format {FORMAT_VERSION} shard_rows {SHARD_ROWS}\n".encode())
    settings = json.loads(config.to_json())
    settings["root"] = str(pathlib.Path(config.root).resolve())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for split, path in sorted(files.items()):
        digest.update(f"\n{split}/{path.name}\n".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _jobs(config, files, shards, done) -> Iterator[tuple[dict | None, int]]:
    """(shard job, or None if that shard is done; the source rows it covers), reading each metadata file once
    and cutting it into chunks of SHARD_ROWS rows: chunk k of a split is its shard k (and, when validation is
    carved from train, chunk k of train gives train shard k and validation shard k)."""
    carve = "validation" not in files and config.validation_fraction > 0
    for source_split, path in files.items():
        chunk, index = [], 0
        for number, row in iter_rows(path):
            chunk.append((number, row))
            if len(chunk) == SHARD_ROWS:
                yield from _chunk_jobs(config, source_split, path, chunk, index, shards, done, carve)
                chunk, index = [], index + 1
        if chunk or index == 0:
            yield from _chunk_jobs(config, source_split, path, chunk, index, shards, done, carve)
            index += 1
        if index != shards[source_split]:
            raise RuntimeError(f"{path} changed while the data set was being built; build again")


def _chunk_jobs(config, source_split, path, chunk, index, shards, done, carve):
    if index >= shards[source_split]:
        raise RuntimeError(f"{path} changed while the data set was being built; build again")
    if carve and source_split == "train":
        carved = [_carved(config, number) for number, _ in chunk]
        parts = {
            "train": [r for r, c in zip(chunk, carved, strict=True) if not c],
            "validation": [r for r, c in zip(chunk, carved, strict=True) if c],
        }
    else:
        parts = {source_split: chunk}
    for split, part in parts.items():
        job = None
        if (split, index) not in done:
            job = {
                "split": split,
                "shard": index,
                "shards": shards[source_split],
                "source_split": source_split,
                "metadata": str(path),
                "typed": _typed(path),
                "rows": part,
            }
        yield job, len(part)


def _carved(config: FolderConfig, row: int) -> bool:
    """Whether a train row goes to the carved validation split (a hash of the seed and row number)."""
    digest = hashlib.blake2b(f"{config.split_seed}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < config.validation_fraction


def build(config: FolderConfig, cache_dir: str | os.PathLike, workers: int = 0) -> pathlib.Path:
    """Builds the folder into `cache_dir/folder-<key>` once and returns that folder (at once if complete).

    workers: decoding processes (0: os.cpu_count(); 1: decode in this process). Finished shards of a killed
    build are kept and skipped when it is run again.
    """
    files = split_files(config.root)
    out = pathlib.Path(cache_dir) / f"folder-{cache_key(config, files)}"
    if (out / COMPLETE).is_file():
        return out
    scanned = out / WORK / "scan.json"
    if scanned.is_file():  # an interrupted build of the same key: same metadata and config
        saved = json.loads(scanned.read_text())
        schema, rows = Schema.from_json(saved["schema"]), saved["rows"]
    else:
        schema, rows = _scan(config, files)
        (out / WORK).mkdir(parents=True, exist_ok=True)
        _write_atomic(scanned, json.dumps({"schema": schema.to_json(), "rows": rows}))
    _write_atomic(out / CONFIG, config.to_json())

    shards = {split: max(1, math.ceil(n / SHARD_ROWS)) for split, n in rows.items()}
    outputs = dict(shards)
    if "validation" not in files and config.validation_fraction > 0:
        outputs["validation"] = shards["train"]
    results: dict[tuple[str, int], dict] = {}
    for split, count in outputs.items():
        for shard in range(count):
            sidecar = _sidecar(out, split, shard)
            if sidecar.is_file() and _shard_path(out, split, shard, count).is_file():
                results[(split, shard)] = json.loads(sidecar.read_text())
    todo = sum(outputs.values()) - len(results)
    resumed = f" (resuming: {len(results)} of {sum(outputs.values())} shards are done)" if results else ""
    print(f"mmjax: building own data set {config.root} into {out}, once{resumed}")
    workers = max(1, min(workers or os.cpu_count() or 1, todo))
    init = (config.to_json(), schema.to_json(), str(out))
    bar = tqdm.tqdm(total=sum(rows.values()), unit="row", desc="mmjax: decoding")
    shown = [0]

    def finished(sidecar: dict) -> None:
        results[(sidecar["split"], sidecar["shard"])] = sidecar
        for record in sidecar["bad"]:
            if shown[0] < _SHOWN_BAD:
                tqdm.tqdm.write(f"mmjax: warning: skipping {bad_row_message(record)}")
            shown[0] += 1
        bar.update(sidecar["rows"])

    jobs = _jobs(config, files, shards, set(results))
    try:
        if workers == 1:
            _run_inline(jobs, init, finished, bar)
        else:
            _run_pool(jobs, workers, init, finished, bar)
    finally:
        bar.close()
    return _finish(config, schema, out, outputs, results)


def _run_inline(jobs, init, finished, bar) -> None:
    """Runs the shard jobs in this process."""
    global _WORKER
    saved = _WORKER
    _init_worker(*init)
    try:
        for job, rows in jobs:
            if job is None:
                bar.update(rows)
            else:
                finished(_run_shard(job))
    finally:
        _WORKER = saved


def _run_pool(jobs, workers, init, finished, bar) -> None:
    """Runs the shard jobs in `workers` spawned processes, at most 2 * workers shards in flight (memory stays
    flat in the row count); results are taken in submission order, so on_bad="stop" raises at the first bad
    row."""
    context = multiprocessing.get_context("spawn")  # the caller may hold JAX, threads, devices
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=init
    ) as pool:
        pending = collections.deque()
        try:
            for job, rows in jobs:
                if job is None:
                    bar.update(rows)
                    continue
                pending.append(pool.submit(_run_shard, job))
                while len(pending) >= 2 * workers:
                    finished(pending.popleft().result())
            while pending:
                finished(pending.popleft().result())
        except concurrent.futures.process.BrokenProcessPool as err:
            raise RuntimeError(
                "a data-building worker process died; when a script calls build(), put the call under "
                "`if __name__ == '__main__':` (workers are spawned and import the main module), or pass "
                "workers=1"
            ) from err
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _finish(config, schema, out, outputs, results) -> pathlib.Path:
    """Writes bad_inputs.json, the tfds metadata of the finished shards and schema.json, then the marker.

    A split of no examples (every row bad) is counted in schema.json but left out of the tfds metadata (tfds
    cannot open an empty split) and its empty shard files are removed; `load` gives an empty source for it.
    """
    split_infos, counts, bad = [], {}, []
    for split in SPLITS:
        if split not in outputs:
            continue
        sidecars = [results[(split, shard)] for shard in range(outputs[split])]
        lengths = [s["examples"] for s in sidecars]
        paths = [_shard_path(out, split, shard, outputs[split]) for shard in range(outputs[split])]
        counts[split] = sum(lengths)
        bad.extend(record for s in sidecars for record in s["bad"])
        if not counts[split]:
            for path in paths:
                path.unlink(missing_ok=True)
            continue
        size = sum(p.stat().st_size for p in paths)
        info = splits_lib.SplitInfo(split, lengths, num_bytes=size, filename_template=_template(out, split))
        split_infos.append(info)
    _write_atomic(out / BAD_INPUTS, json.dumps(bad, indent=1))
    if bad:
        print(f"mmjax: skipped {len(bad)} bad rows; they are listed in {out / BAD_INPUTS}")
    if not counts["train"]:
        raise ValueError(f"no train row of {config.root} is usable; the problems are in {out / BAD_INPUTS}")
    tfds.folder_dataset.write_metadata(
        data_dir=out,
        features=features(config, schema),
        split_infos=split_infos,
        version="1.0.0",
        check_data=False,  # the check reads through tf.data; load() reads without TensorFlow
        description=f"Own data from {config.root} (mmjax.data.folder).",
    )
    _write_atomic(out / SCHEMA, dataclasses.replace(schema, splits=counts).to_json())
    for leftover in (out / WORK).glob("*.tmp"):
        leftover.unlink(missing_ok=True)
    _write_atomic(out / COMPLETE, json.dumps({"format": FORMAT_VERSION, "splits": counts}))
    return out


# --- Reading a built folder ---


def _complete(built: str | os.PathLike) -> pathlib.Path:
    built = pathlib.Path(built)
    if not (built / COMPLETE).is_file():
        raise ValueError(f"{built} is not a finished build of an own-data folder (no {COMPLETE} file)")
    return built


def read_schema(built: str | os.PathLike) -> Schema:
    return Schema.from_json((_complete(built) / SCHEMA).read_text())


def read_bad_inputs(built: str | os.PathLike) -> list[dict]:
    """Every skipped row: split, metadata file, row, column, file, problem."""
    return json.loads((_complete(built) / BAD_INPUTS).read_text())


class _EmptySource:
    """The source of a split whose every row was bad."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index):
        raise IndexError(f"index {index} of an empty split")

    def __repr__(self) -> str:
        return "EmptySource()"


def load(built: str | os.PathLike, split: str):
    """Random-access source of one split of a built folder: len(source), source[i] -> {feature: value}
    (a tfds array_record data source; scalars come back as Python numbers, text as bytes). A split whose
    every row was bad gives an empty source."""
    built = _complete(built)
    splits = read_schema(built).splits
    if split not in splits:
        raise ValueError(f"{built} has no split {split!r}; it has {sorted(splits)}")
    if not splits[split]:
        return _EmptySource()
    return tfds.builder_from_directory(str(built)).as_data_source(split=split)
