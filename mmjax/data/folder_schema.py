"""A data folder's settings and schema: its metadata files (jsonl, csv, parquet) read as a stream, and the
one pass over train that decides its streams, tasks and metadata columns (see mmjax.data.folder).
"""

import collections
import csv
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Iterator

import soundfile

from mmjax.data.waveform import FRONTENDS

SPLITS = ("train", "validation", "test")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"})
_MP3 = {"mp3"} if "MP3" in soundfile.available_formats() else set()  # libsndfile >= 1.1 decodes MP3
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "ogg"} | _MP3)
LABEL_KINDS = ("classes", "multilabel", "regression")
STREAM_KINDS = ("image", "audio", "text")
ON_BAD = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """How to read and store a folder; every field is JSON-able and part of the cache key."""

    root: str
    labels: tuple[str, ...]
    label_kinds: tuple[tuple[str, str], ...] = ()  # overrides: (column, "classes"|"multilabel"|"regression")
    ignore: tuple[str, ...] = ()  # string columns that are not text inputs (kept as metadata)
    image_size: tuple[int, int] = (64, 64)  # (height, width) after resizing
    image_channels: int = 3  # 3: RGB, 1: grey
    image_resize: int = 0  # > 0: the shorter edge resized to this, then the centre image_size cropped
    image_resample: str = "bilinear"  # the PIL filter of the resize (mmjax.data.inputs.RESAMPLE)
    sample_rate: int = 16000  # audio resampled to this
    n_mels: int = 64  # normalised log-mel bands, 25 ms windows every 10 ms
    max_audio_seconds: float = 10.0  # longer clips are cropped (features of the first N s)
    frontend: str = "log_mel"  # audio stored as normalised log-mel features or as "waveform" samples
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
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend={self.frontend!r} is not one of {FRONTENDS}")

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


def is_typed(path: pathlib.Path) -> bool:
    """Whether the file's cells carry their own types (JSON, parquet) rather than text to parse (CSV)."""
    return path.suffix != ".csv"


def iter_rows(path: pathlib.Path) -> Iterator[tuple[int, dict | None]]:
    """(row number, {column: raw value}) of a metadata file, streaming; None for a jsonl line that is not a
    JSON object. CSV values are the raw strings (see `cell_value`)."""
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


def cell_value(raw, typed: bool):
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


def is_empty(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def cell_text(raw) -> str:
    """A cell as stored text: strings as they are, other values as JSON."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, ensure_ascii=False)
    except TypeError:
        return str(raw)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def class_name(value) -> str:
    """A class value as its name: strings as they are, 3 and 3.0 as "3", 2.5 as "2.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def file_extension(value) -> str:
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
            self.extensions.update(file_extension(item) for item in files)
            self.longest = max(self.longest, len(files))
        if not is_label or self.label_kind == "regression":
            return
        if self.label_kind is None and self.types["float"]:
            self.values = set()  # a float makes an inferred label regression (or a mix _label_kind refuses)
            return
        for item in value if isinstance(value, list) else [value]:
            self.all_numbers &= is_number(item)
            self.values.add(item if is_number(item) else class_name(item))

    def class_names(self) -> list[str]:
        if self.all_numbers:
            return [class_name(v) for v in sorted(self.values)]
        return sorted({class_name(v) for v in self.values})


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


def scan_files(config: FolderConfig, files: dict[str, pathlib.Path]) -> tuple[Schema, dict[str, int]]:
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
    typed = is_typed(train)
    rows = {split: 0 for split in files}
    for _, row in iter_rows(train):
        rows["train"] += 1
        for name, raw in (row or {}).items():
            value = cell_value(raw, typed)
            stats = column(name)
            if not is_empty(value):
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


def column_name(info: dict) -> str:
    """A stream's column as bad_inputs.json names it: `views_file_names[1]` for a list's second file."""
    return info["column"] + (f"[{info['position']}]" if "position" in info else "")


def stream_cell(row: dict, info: dict, typed: bool):
    """A stream's raw cell: the column's value, or the `position`-th file of a list-of-files column (None
    when the list is shorter)."""
    raw = row.get(info["column"])
    if "position" not in info:
        return raw
    files = cell_value(raw, typed)
    files = [] if is_empty(files) else files if isinstance(files, list) else [files]
    return files[info["position"]] if info["position"] < len(files) else None


def scan(config: FolderConfig) -> Schema:
    """The schema of a folder (streams, tasks, metadata columns, validation source) from one streaming pass
    over its metadata; `splits` is left empty (it counts written examples)."""
    return scan_files(config, split_files(config.root))[0]
