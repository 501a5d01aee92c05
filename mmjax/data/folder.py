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
log-mel, [0, n_mels] when absent, or with FolderConfig.frontend="waveform" the samples [n], [0] when absent;
text str), `present/<stream>` bool, `labels/<task>` (classes int64, -1
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
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds
import tqdm
from tensorflow_datasets.core import example_serializer, naming
from tensorflow_datasets.core import splits as splits_lib

from mmjax.data.folder_decode import BadRow, features, stored_example
from mmjax.data.folder_schema import (
    SPLITS,
    FolderConfig,
    Schema,
    is_typed,
    iter_rows,
    scan_files,
    split_files,
)

FORMAT_VERSION = 1  # bump when the stored layout or decoding changes: every cached build is then redone
SHARD_ROWS = 1000  # metadata rows per shard (part of the cache key; tests shrink it)
COMPLETE = "COMPLETE"  # written last: its presence marks a finished build
SCHEMA = "schema.json"
CONFIG = "config.json"
BAD_INPUTS = "bad_inputs.json"
WORK = "work"  # per-shard sidecars and the scan result of an (un)finished build
DATASET_NAME = "folder"
_TEMPLATE = naming.DEFAULT_FILENAME_TEMPLATE  # {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}
_SUFFIX = "array_record"
_SHOWN_BAD = 20  # bad rows printed as warnings; all are listed in bad_inputs.json


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
                example = stored_example(row, number, job["source_split"], job["typed"], state)
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
    FORMAT_VERSION. Settings at their defaults that came later (frontend, image_resize, image_resample) are
    left out, so a build keeps the key it had before them."""
    files = files or split_files(config.root)
    digest = hashlib.sha256(f"mmjax-folder format {FORMAT_VERSION} shard_rows {SHARD_ROWS}\n".encode())
    settings = json.loads(config.to_json())
    settings["root"] = str(pathlib.Path(config.root).resolve())
    defaults = {"frontend": "log_mel", "image_resize": 0, "image_resample": "bilinear"}
    for name, value in defaults.items():  # so builds from before these settings keep their keys
        if settings[name] == value:
            del settings[name]
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
                "typed": is_typed(path),
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
        schema, rows = scan_files(config, files)
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
