"""Which data set an experiment reads: `config.data.dataset` -> a DataSet (mmjax.data.spec).

av_digits      the bundled AV-Digits benchmark (mmjax.data.av_digits)
ud_ewt, xquad  the bundled text-only data sets (mmjax.data.text_tasks)
folder         any data set in a folder (mmjax.data.folder): config.data.dir and config.data.labels
mix            several of these at once (mmjax.data.mixture): config.data.mix names each one's config
"""

import functools
import json
import os
import pathlib
import shlex
from collections.abc import Mapping

import ml_collections
import numpy as np

from mmjax.config import load_config
from mmjax.data import (
    av_digits,
    folder,
    folder_decode,
    inputs,
    mixture,
    pipeline,
    text,
    text_cache,
    text_tasks,
    waveform,
)
from mmjax.data.spec import DataSet, Task, summarizer, target_scale, trained_tasks
from mmjax.data.text import WordTokenizer, build_vocab, experiment_tokenizer

DATASETS = ("av_digits", "ud_ewt", "xquad", "folder", "mix")


def from_config(config: ml_collections.ConfigDict) -> DataSet:
    """The DataSet of an experiment config (nothing is read or built until a split is loaded, except a
    folder data set, which is built, once, here)."""
    name = config.data.get("dataset", "av_digits")
    if name == "av_digits":
        data = av_digits.data_set(config, waveform_settings(config))
    elif name in text_tasks.DATASETS:
        data = text_data(config)
    elif name == "folder":
        data = folder_data(config)
    elif name == "mix":
        return mixed_data(config)  # each member keeps its own text cache
    else:
        raise ValueError(f"config.data.dataset={name!r} is not one of {DATASETS}")
    return text_cache.with_text_cache(data, config) if text_cache.enabled(config) else data


def task_specs(config: ml_collections.ConfigDict) -> tuple[dict[str, Task], dict[str, str]]:
    """(the tasks config.tasks trains, {stream: class label key} for contrastive positives), reading no data
    where the data set's tasks are fixed (AV-Digits); other data sets are loaded for their label columns."""
    if config.data.get("dataset", "av_digits") == "av_digits":
        tasks = trained_tasks(config.tasks, av_digits.task_specs(), "AV-Digits")
        return tasks, dict(av_digits.MODALITY_LABELS)
    data = from_config(config)
    return data.tasks, data.align_labels


# How audio streams enter the batch.


def audio_frontend(config: ml_collections.ConfigDict) -> str:
    """config.model.audio.frontend: "log_mel" (features [T, F]; also when unset) or "waveform" (samples [S]).
    The only place the data path reads it."""
    frontend = config.get("model", {}).get("audio", {}).get("frontend", "log_mel")
    if frontend not in waveform.FRONTENDS:
        raise ValueError(f"config.model.audio.frontend={frontend!r} is not one of {waveform.FRONTENDS}")
    return frontend


def waveform_settings(config: ml_collections.ConfigDict) -> waveform.Waveform | None:
    """With model.audio.frontend="waveform": clips of data.audio_frames 10 ms frames (the log-mel path's
    duration) at data.sample_rate (16 kHz), normalised when data.waveform_normalize (True); else None."""
    if audio_frontend(config) != "waveform":
        return None
    rate = config.data.get("sample_rate", 16000)
    samples = waveform.clip_samples(config.data.audio_frames, rate)
    return waveform.Waveform(samples, rate, config.data.get("waveform_normalize", True))


# UD English EWT and XQuAD (text only).


def text_data(config: ml_collections.ConfigDict) -> DataSet:
    name = config.data.dataset
    data = text_tasks.load(
        name,
        [task for task, weight in config.tasks.items() if weight > 0],
        experiment_tokenizer(config),
        config.data.text_len,
        config.data.get("doc_stride", 128),
        config.data.data_dir or None,
    )
    kind = "span" if name == "xquad" else "tokens"
    tasks = {
        task: Task(kind, data.vocabs.get(task, ()), size=0 if task in data.vocabs else n)
        for task, n in data.tasks.items()
    }
    buckets = text_tasks.parse_text_buckets(config.data.get("text_buckets", ""), config.data.text_len)
    return DataSet(
        name=name,
        streams={"text": "text"},
        tasks=tasks,
        load=data.source,
        preprocess=dict,
        summarize=data.summarize,
        iterator_args={"text_buckets": buckets},
        reports=data.reports,
        kind="text",
    )


# A data set in a folder.


def folder_config(config: ml_collections.ConfigDict) -> folder.FolderConfig:
    """mmjax.data.folder's build settings from config.data (dir, labels "a+b", image size, audio, ...)."""
    d = config.data
    if not d.get("dir"):
        raise ValueError(
            "config.data.dir must name the data folder (experiments/folder.py:dir=PATH,labels=COL)"
        )
    labels = tuple(label for label in d.labels.split("+") if label)
    if not labels:
        raise ValueError("config.data.labels must name at least one label column (labels=COL[+COL...])")
    kinds = tuple(tuple(rule.split("=", 1)) for rule in d.get("label_kinds", "").split(";") if rule)
    if any(len(rule) != 2 for rule in kinds):
        raise ValueError(
            f"config.data.label_kinds={d.label_kinds!r} must look like 'col=regression;col2=...'"
        )
    return folder.FolderConfig(
        root=str(d.dir),
        labels=labels,
        label_kinds=kinds,
        ignore=tuple(c for c in d.get("ignore", "").split("+") if c),
        validation_fraction=d.validation_fraction,
        split_seed=d.split_seed,
        on_bad=d.get("on_bad_example", "skip"),
        max_files=d.get("max_files", 0),
        **media_settings(config),
    )


def stream_preprocess(config: ml_collections.ConfigDict, streams: dict, tasks: dict, tokenizer):
    """pipeline.preprocess_streams with the experiment's sizes (data.text_len, audio_frames, image_mean and
    image_std) and audio frontend for a data set stored as folder builds store it (decoded media, present
    flags, labels)."""
    return functools.partial(
        pipeline.preprocess_streams,
        streams=streams,
        tasks={name: task.kind for name, task in tasks.items()},
        scales={name: (task.mean, task.std) for name, task in tasks.items() if task.kind == "regression"},
        tokenizer=tokenizer,
        text_len=config.data.text_len,
        audio_frames=config.data.audio_frames,
        waveform=waveform_settings(config),
        image_mean=np.asarray(config.data.image_mean, np.float32),
        image_std=np.asarray(config.data.image_std, np.float32),
    )


def media_settings(config: ml_collections.ConfigDict) -> dict:
    """How images and audio are decoded and stored (folder.FolderConfig fields): config.data.image_size
    (square), image_channels, image_resize, image_resample, sample_rate, n_mels, max_audio_seconds, and the
    audio frontend."""
    d = config.data
    return dict(
        image_size=(d.image_size, d.image_size),
        image_channels=d.image_channels,
        image_resize=d.get("image_resize", 0),
        image_resample=d.get("image_resample", "bilinear"),
        sample_rate=d.sample_rate,
        n_mels=d.n_mels,
        max_audio_seconds=d.max_audio_seconds,
        frontend=audio_frontend(config),
    )


def built_folder(config: ml_collections.ConfigDict) -> pathlib.Path:
    """The built copy of config.data.dir (built on first use; cached by its metadata and settings)."""
    cache = config.data.get("tfds_dir", "") or os.environ.get("MMJAX_TFDS_DIR", "")
    cache = pathlib.Path(cache) if cache else pathlib.Path.home() / ".cache" / "mmjax" / "folders"
    return folder.build(folder_config(config), cache, workers=config.data.get("build_workers", 0))


def folder_tasks(schema: folder.Schema, config: ml_collections.ConfigDict, stats: dict) -> dict[str, Task]:
    """The folder's label columns as tasks; regression targets are scaled by their train mean and std."""
    loss = config.data.get("regression_loss", "mse")
    tasks = {}
    for name, info in schema.tasks.items():
        mean, std = stats["targets"].get(name, (0.0, 1.0))
        tasks[name] = Task(info["kind"], tuple(info.get("classes", ())), loss=loss, mean=mean, std=std)
    return tasks


def train_statistics(built: pathlib.Path, schema: folder.Schema) -> dict:
    """{"words": the word vocabulary of the train split's text streams, "targets": {task: (mean, std)} of
    every regression column over train}: one pass over train, kept beside the built data."""
    path = built / "train_statistics.json"
    if not path.is_file():
        streams = [s for s, info in schema.streams.items() if info["kind"] == "text"]
        regression = [t for t, info in schema.tasks.items() if info["kind"] == "regression"]
        source = folder.load(built, "train")
        texts, values = [], {t: [] for t in regression}
        for i in range(len(source)):
            example = source[i]
            texts += [pipeline.as_str(example[s]) for s in streams]
            for t in regression:
                values[t].append(float(example[f"labels/{t}"]))
        targets = {t: target_scale(column) for t, column in values.items()}
        stats = {"words": list(build_vocab(texts).vocab), "targets": targets}
        path.write_text(json.dumps(stats))
    return json.loads(path.read_text())


def folder_data(config: ml_collections.ConfigDict) -> DataSet:
    built = built_folder(config)
    schema = folder.read_schema(built)
    stats = train_statistics(built, schema)
    available = folder_tasks(schema, config, stats)
    tasks = trained_tasks(config.tasks, available, f"the folder {config.data.dir}")
    streams = {stream: info["kind"] for stream, info in schema.streams.items()}
    tokenizer = None
    if "text" in streams.values():
        tokenizer = text.pretrained_tokenizer(config) or WordTokenizer(tuple(stats["words"]))
    preprocess = stream_preprocess(config, streams, tasks, tokenizer)
    group_by = config.get("eval", {}).get("group_by", "")
    groups = functools.partial(folder_groups, built, group_by) if group_by else None
    if group_by and group_by not in (
        *schema.meta,
        *schema.tasks,
        *(i["column"] for i in schema.streams.values()),
    ):
        raise ValueError(f"config.eval.group_by={group_by!r} is not a column of {config.data.dir}")
    group_tasks = tuple(t for t in config.get("eval", {}).get("group_tasks", "").split(",") if t) or tuple(
        name for name, task in tasks.items() if task.kind != "align"
    )
    return DataSet(
        name=pathlib.Path(config.data.dir).resolve().name or "folder",
        streams=streams,
        tasks=tasks,
        load=functools.partial(folder.load, built),
        preprocess=preprocess,
        summarize=summarizer(tasks, groups, group_tasks),
        groups=groups,
        group_tasks=group_tasks,
        condition=functools.partial(
            pipeline.condition_streams,
            preprocess,
            streams,
            seed=config.seed,
            waveform=waveform_settings(config),
        ),
        encode_inputs=functools.partial(folder_inputs, schema=schema, settings=folder_config(config)),
        primary=next(label for label in config.data.labels.split("+") if label in tasks),
        text_vocab_size=tokenizer.vocab_size if tokenizer is not None else 0,
        tokenizer=tokenizer,
    )


def folder_inputs(given: Mapping[str, object], schema: folder.Schema, settings: folder.FolderConfig) -> dict:
    """A user's inputs {stream: file, array or text} -> one example as the folder build stores it."""
    example = {"row": 0}
    for stream, info in schema.streams.items():
        value, kind = given.get(stream), info["kind"]
        if kind == "image":
            size, channels = settings.image_size, settings.image_channels
            example[stream] = np.zeros((*size, channels), np.uint8)
            if value is not None:
                fit = settings.image_resize, settings.image_resample
                example[stream] = inputs.read_image(value, size, channels, *fit)
        elif kind == "audio":
            example[stream] = folder_decode.empty_audio(settings)
            if value is not None:
                example[stream] = folder_decode.stored_audio(*inputs.read_wave(value)[:2], settings)
        else:
            example[stream] = "" if value is None else str(value)
        example[f"present/{stream}"] = value is not None
    for task, info in schema.tasks.items():
        blank = {"classes": -1, "regression": np.nan}.get(info["kind"])
        example[f"labels/{task}"] = np.full(len(info["classes"]), -1) if blank is None else blank
    return example


@functools.cache
def folder_groups(built: pathlib.Path, column: str, split: str) -> np.ndarray:
    """Each example's value of `column` (a metadata, label or text column) in `split`, as strings."""
    schema = folder.read_schema(built)
    key = next((f"meta/{c}" for c in schema.meta if c == column), None)
    key = key or next((s for s, info in schema.streams.items() if info["column"] == column), None)
    source = folder.load(built, split)
    if key is None:  # a label column: its class names
        names = schema.tasks[column].get("classes", [])
        values = [source[i][f"labels/{column}"] for i in range(len(source))]
        return np.asarray([names[int(v)] if names and int(v) >= 0 else str(v) for v in values])
    return np.asarray([pipeline.as_str(source[i][key]) for i in range(len(source))])


# Several data sets in one run.


def member_config(spec: str, seed: int) -> ml_collections.ConfigDict:
    """One entry of config.data.mix, `PATH[:ARGS] [--config.KEY=VALUE ...]` (as on the command line), as a
    config of its own, with the mix's seed."""
    config_spec, *overrides = shlex.split(spec)
    config = load_config(config_spec, [o.removeprefix("--config.") for o in overrides])
    config.seed = seed
    return config


def mixed_data(config: ml_collections.ConfigDict) -> DataSet:
    """config.data.mix's data sets as one (mixture.combine): the train split samples each with
    config.data.mix_method (proportional | temperature | round_robin, mixture.sampling_probabilities)."""
    members = {}
    for spec in config.data.mix:
        data = from_config(member_config(spec, config.seed))
        name = data.name if data.name not in members else f"{data.name}_{len(members)}"
        members[name] = data
    if len(members) < 2:
        raise ValueError(f"config.data.mix needs at least two data sets, got {list(config.data.mix)}")
    sizes = [len(data.load("train")) for data in members.values()]
    method, temperature = config.data.mix_method, config.data.mix_temperature
    return mixture.combine(members, mixture.sampling_probabilities(sizes, method, temperature))
