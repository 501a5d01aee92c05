"""A data set from Python: per split, any random-access source of dicts (a list, a grain source, a Hugging
Face `datasets.Dataset`) and a column spec saying what each column is; nothing is written to disk.

    config = load_config("experiments/folder.py:labels=label,image_size=32")
    columns = {"photo": "image", "label": "classes"}
    data = from_python.data_set({"train": rows, "test": test_rows}, columns, config)
    train.main(config, "runs/mine", data=data)
    evaluate.main("runs/mine", data=data)

Images: PIL images, pixel arrays or files; audio: (waveform, sample rate) pairs, Hugging Face audio dicts
({"array", "sampling_rate"}) or files; text: strings. None marks an input absent in that example. Labels:
ints or strings (classes), lists of strings (multilabel), numbers (regression); None = unlabelled. Media are
decoded when an example is read (grain workers do it in parallel), with the folder build's settings
(config.data.image_size, image_channels, sample_rate, n_mels, max_audio_seconds; model.audio.frontend:
log-mel features or waveforms).
"""

import functools
import os
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from mmjax.data import folder, folder_decode, inputs
from mmjax.data.datasets import media_settings, stream_preprocess
from mmjax.data.spec import DataSet, Task, summarizer, target_scale, trained_tasks
from mmjax.data.text import WordTokenizer, build_vocab, pretrained_tokenizer

INPUT_KINDS = ("image", "audio", "text")
LABEL_KINDS = ("classes", "multilabel", "regression")


class Rows:
    """The rows `indices` of a random-access source, itself random-access."""

    def __init__(self, source: Sequence, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def column_values(source: Sequence, column: str) -> list:
    """Every value of one column (a Hugging Face dataset's column directly, else row by row)."""
    if hasattr(source, "column_names") and column in source.column_names:
        return list(source[column])
    return [row.get(column) for row in (source[i] for i in range(len(source)))]


def carve_validation(train: Sequence, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """(train, validation): a seeded `fraction` of train's rows becomes validation."""
    order = np.random.default_rng(seed).permutation(len(train))
    count = max(1, int(round(fraction * len(train))))
    return Rows(train, np.sort(order[count:])), Rows(train, np.sort(order[:count]))


def label_task(column: str, kind: str, values: list, loss: str) -> Task:
    """A label column's task; class names and the regression scaling come from the train values."""
    given = [v for v in values if v is not None]
    if kind == "classes":
        return Task(kind, tuple(sorted({str(v) for v in given}, key=_class_order)))
    if kind == "multilabel":
        return Task(kind, tuple(sorted({str(v) for row in given for v in row})))
    numbers = np.asarray([float(v) for v in given], np.float64)
    if not np.all(np.isfinite(numbers)):
        raise ValueError(f"regression column {column!r} has non-finite values in train")
    mean, std = target_scale(numbers)
    return Task(kind, loss=loss, mean=mean, std=std)


def _class_order(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def check_labels(splits: Mapping[str, Sequence], tasks: Mapping[str, Task]) -> None:
    """A class never seen in train, in another split, is a ValueError naming split, row, column and value."""
    for split, source in splits.items():
        for column, task in tasks.items():
            if task.kind == "regression":
                continue
            known = set(task.classes)
            for row, value in enumerate(column_values(source, column)):
                values = value if task.kind == "multilabel" and value is not None else [value]
                unknown = [v for v in values if v is not None and str(v) not in known]
                if unknown:
                    raise ValueError(
                        f"{split} row {row}: label {unknown[0]!r} in column {column!r} is not a class of "
                        f"the train split {sorted(known)}"
                    )


def encode(row: Mapping, columns: Mapping[str, str], tasks: Mapping[str, Task], settings) -> dict:
    """One source row -> one example as a folder build stores it (decoded media, present flags, labels)."""
    example, streams = {"row": 0}, stream_names(columns)
    for column, stream in streams.items():
        value, kind = row.get(column), columns[column]
        example[f"present/{stream}"] = value is not None
        if kind == "image":
            example[stream] = np.zeros((*settings.image_size, settings.image_channels), np.uint8)
            if value is not None:
                if not isinstance(value, str | os.PathLike | np.ndarray):
                    value = np.asarray(value)  # a PIL image
                size, channels = settings.image_size, settings.image_channels
                fit = settings.image_resize, settings.image_resample
                example[stream] = inputs.read_image(value, size, channels, *fit)
        elif kind == "audio":
            example[stream] = folder_decode.empty_audio(settings)
            if value is not None:
                if isinstance(value, Mapping):  # a Hugging Face audio dict
                    value = (np.asarray(value["array"], np.float32), int(value["sampling_rate"]))
                example[stream] = folder_decode.stored_audio(*inputs.read_wave(value)[:2], settings)
        else:
            example[stream] = "" if value is None else str(value)
    for column, task in tasks.items():
        value = row.get(column)
        if task.kind == "classes":
            label = -1 if value is None else task.classes.index(str(value))
        elif task.kind == "multilabel":
            label = np.full(len(task.classes), -1, np.int8)
            if value is not None:
                label = np.isin(task.classes, [str(v) for v in value]).astype(np.int8)
        else:
            label = np.float32(np.nan if value is None else value)
        example[f"labels/{column}"] = label
    return example


def split_source(splits: Mapping[str, Sequence], split: str) -> Sequence:
    return splits.get(split, [])


def preprocess_row(row: Mapping, *, encode_row, stored) -> dict:
    """One source row -> one example of the batch contract (decode, then the folder preprocessing)."""
    return stored(encode_row(row))


def encode_inputs(given: Mapping[str, object], *, encode_row, columns: Mapping[str, str]) -> dict:
    """mmjax.predict's {stream: value} -> one stored example."""
    return encode_row({column: given.get(stream) for column, stream in stream_names(columns).items()})


def stream_names(columns: Mapping[str, str]) -> dict[str, str]:
    """{input column: stream}: per kind, in column order, `image`, `image_2`, ..."""
    counts, streams = {}, {}
    for column, kind in columns.items():
        if kind in INPUT_KINDS:
            counts[kind] = counts.get(kind, 0) + 1
            streams[column] = kind if counts[kind] == 1 else f"{kind}_{counts[kind]}"
    return streams


def data_set(
    splits: Mapping[str, Sequence], columns: Mapping[str, str], config: ml_collections.ConfigDict
) -> DataSet:
    """The DataSet of Python sources `splits` (train required; validation carved from train when missing,
    data.validation_fraction with data.split_seed) whose `columns` are {column: kind} (image, audio, text,
    classes, multilabel, regression). The experiment trains the label columns config.tasks weights."""
    unknown = {c: k for c, k in columns.items() if k not in INPUT_KINDS + LABEL_KINDS}
    if unknown:
        raise ValueError(f"column kinds {unknown} are not among {INPUT_KINDS + LABEL_KINDS}")
    if "train" not in splits or not len(splits["train"]):
        raise ValueError("the data set needs a non-empty 'train' split")
    splits = dict(splits)
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], config.data.validation_fraction, config.data.split_seed
        )
    loss = config.data.get("regression_loss", "mse")
    available = {
        column: label_task(column, kind, column_values(splits["train"], column), loss)
        for column, kind in columns.items()
        if kind in LABEL_KINDS
    }
    tasks = trained_tasks(config.tasks, available, "the Python data set")
    check_labels({s: source for s, source in splits.items() if s != "train"}, tasks)
    streams = {stream: columns[column] for column, stream in stream_names(columns).items()}
    tokenizer = None
    if "text" in streams.values():
        texts = [str(v) for c, k in columns.items() if k == "text" for v in column_values(splits["train"], c)]
        tokenizer = pretrained_tokenizer(config) or WordTokenizer(build_vocab(texts).vocab)
    settings = folder.FolderConfig(root="", labels=(), **media_settings(config))
    stored = stream_preprocess(config, streams, tasks, tokenizer)
    encode_row = functools.partial(encode, columns=columns, tasks=tasks, settings=settings)
    return DataSet(
        name="python",
        streams=streams,
        tasks=tasks,
        load=functools.partial(split_source, splits),
        preprocess=functools.partial(preprocess_row, encode_row=encode_row, stored=stored),
        summarize=summarizer(tasks),
        encode_inputs=functools.partial(encode_inputs, encode_row=encode_row, columns=columns),
        primary=next((label for label in available if label in tasks), ""),
        text_vocab_size=tokenizer.vocab_size if tokenizer is not None else 0,
        tokenizer=tokenizer,
    )
