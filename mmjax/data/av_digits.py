"""AV-Digits: spoken (FSDD) and written (MNIST) digits paired with questions, as a tfds builder, and its
data-set contract. The raw sources and their splits are in av_digits_sources; pairs never cross splits.
"""

import functools
import json
import os
import pathlib
import zlib
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import audio, inputs, pipeline
from mmjax.data.av_digits_questions import (
    ANSWERS,
    PHRASINGS,
    QUESTION_TYPES,
    SPEAKERS,
    answer_index,
    load_questions,
    pick_phrasing,
)
from mmjax.data.av_digits_sources import (
    N_MELS,
    audio_features,
    image_split,
    list_recordings,
    parse_recording,
    read_mnist,
    recording_clip,
    recording_split,
    resolve_data_dir,
    resolve_tfds_dir,
    wave_features,
)
from mmjax.data.pipeline import Corruption, as_str
from mmjax.data.spec import DataSet, Task, classes, summarizer, trained_tasks
from mmjax.data.text import PretrainedTokenizer, WordTokenizer, experiment_tokenizer
from mmjax.data.waveform import Waveform, fit_clip

DIGITS = tuple(str(i) for i in range(10))
CLASS_NAMES = {
    "answer": ANSWERS,
    "image_digit": DIGITS,
    "audio_digit": DIGITS,
    "speaker": SPEAKERS,
    "match": ("no", "yes"),
}
TASKS = {task: len(names) for task, names in CLASS_NAMES.items()}
ALIGN = "align"  # the contrastive audio-image alignment task (no classes; see model.align)
# The label that says which examples of another modality match (positives="labels" in contrastive alignment).
MODALITY_LABELS = {"image": "labels/image_digit", "audio": "labels/audio_digit"}
SPLITS = ("train", "validation", "test")
PAIRS_PER_RECORDING = {"train": 4, "validation": 2, "test": 4}
ON_BAD = ("skip", "stop")  # data.on_bad_example
BAD_INPUTS = "bad_inputs.json"  # the skipped raw files of a build, beside the built data

_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def task_classes(weights: Mapping[str, float]) -> dict[str, int]:
    """{task: number of classes} of the classification tasks that `weights` (config.tasks) trains (> 0)."""
    unknown = sorted(set(weights) - set(TASKS) - {ALIGN})
    if unknown:
        raise ValueError(f"config.tasks has unknown task(s) {unknown}; AV-Digits has {[*TASKS, ALIGN]}")
    return {task: TASKS[task] for task, weight in weights.items() if weight > 0 and task != ALIGN}


def plan_pairs(
    audio_digits: np.ndarray, image_labels: np.ndarray, pairs: int, seed: int
) -> list[tuple[int, int, int, int]]:
    """Pairs each recording `pairs` times with an image: (recording, image, question type, match) indices.

    (question type, match) cycles over all 12 combinations in a seeded random order, so half of the pairs
    match and question types are balanced independently of matching. A non-matching image digit is
    uniform over the other nine; the image is uniform among the images of that digit.
    """
    rng = np.random.default_rng(seed)
    n = len(audio_digits) * pairs
    cells = rng.permutation(np.arange(n) % (2 * len(QUESTION_TYPES)))
    by_digit = [np.flatnonzero(image_labels == d) for d in range(10)]
    plan = []
    for k, cell in enumerate(cells):
        recording, qtype, match = k // pairs, int(cell) // 2, int(cell) % 2
        digit = int(audio_digits[recording])
        if not match:
            digit = (digit + int(rng.integers(1, 10))) % 10
        plan.append((recording, int(rng.choice(by_digit[digit])), qtype, match))
    return plan


class AvDigits(tfds.core.GeneratorBasedBuilder):
    """AV-Digits question answering over one spoken and one written digit."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "FSDD x MNIST-5k pairs with six question types.",
        "1.1.0": "Fourteen training phrasings per question type (three before).",
        "1.2.0": "24 training phrasings per type; each modality's words also appear in other types.",
    }

    def __init__(self, *, raw_dir: str | os.PathLike | None = None, on_bad: str = "skip", **kwargs):
        if on_bad not in ON_BAD:
            raise ValueError(f"data.on_bad_example={on_bad!r} is not one of {ON_BAD}")
        self._raw_dir = raw_dir  # resolved only when building, so a built copy loads without raw data
        self._on_bad = on_bad
        self.bad_files: dict[str, str] = {}  # {file or CSV row: problem} found while building; skipped
        super().__init__(**kwargs)

    def _bad(self, what: str, problem: str) -> None:
        if self._on_bad == "stop":
            raise ValueError(f"bad input {what}: {problem} (data.on_bad_example=skip skips and lists these)")
        print(f"mmjax: warning: skipping {what}: {problem}")
        self.bad_files[what] = problem

    def _info(self) -> tfds.core.DatasetInfo:
        digit = tfds.features.ClassLabel(num_classes=10)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(
                        shape=(None, N_MELS), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
                    ),
                    "image": tfds.features.Tensor(
                        shape=(28, 28), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "question": tfds.features.Text(),
                    "question_type": tfds.features.ClassLabel(names=QUESTION_TYPES),
                    "answer": tfds.features.ClassLabel(names=ANSWERS),
                    "image_digit": digit,
                    "audio_digit": digit,
                    "speaker": tfds.features.ClassLabel(names=SPEAKERS),
                    "match": tfds.features.ClassLabel(num_classes=2),
                    "recording": tfds.features.Text(),
                    "image_index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the raw data are read from a local folder
        raw_dir = resolve_data_dir(self._raw_dir)
        mnist = raw_dir / "mnist5k" / "mnist_5k.csv.gz"
        images, labels, bad_rows = read_mnist(mnist)
        for row, problem in bad_rows.items():
            self._bad(f"{mnist} row {row + 1}", problem)
            labels[row] = -1  # never drawn for a pair
        recordings = list_recordings(raw_dir / "fsdd" / "recordings")
        return {
            split: self._generate_examples(raw_dir / "fsdd" / "recordings", recordings, images, labels, split)
            for split in SPLITS
        }

    def _generate_examples(self, recordings_dir, recordings, images, labels, split):
        names = [r for r in recordings if recording_split(parse_recording(r)[2]) == split]
        rows = np.array([i for i in range(len(labels)) if image_split(i) == split])
        digits = np.array([parse_recording(r)[0] for r in names])
        plan = plan_pairs(digits, labels[rows], PAIRS_PER_RECORDING[split], _SPLIT_SEEDS[split])
        phrase_rng = np.random.default_rng(_SPLIT_SEEDS[split] + zlib.crc32(b"phrasings"))
        features, cached = None, None
        for k, (recording, image, qtype_id, match) in enumerate(plan):
            name = names[recording]
            if cached != recording:  # plan lists each recording's pairs together: one feature pass each
                cached = recording
                try:
                    features = audio_features(recordings_dir / name)
                except ValueError as e:
                    self._bad(str(recordings_dir / name), str(e).removeprefix(f"{recordings_dir / name}: "))
                    features = None
            if features is None:
                continue
            audio_digit, speaker, _ = parse_recording(name)
            row = int(rows[image])
            qtype = QUESTION_TYPES[qtype_id]
            phrasings = PHRASINGS[qtype]
            yield (
                f"{name}/{k % PAIRS_PER_RECORDING[split]}",
                {
                    "audio": features,
                    "image": images[row],
                    "question": phrasings[int(phrase_rng.integers(len(phrasings)))],
                    "question_type": qtype,
                    "answer": answer_index(qtype, int(labels[row]), audio_digit, speaker),
                    "image_digit": int(labels[row]),
                    "audio_digit": audio_digit,
                    "speaker": speaker,
                    "match": match,
                    "recording": name,
                    "image_index": row,
                },
            )


def load(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    on_bad: str = "skip",
):
    """Random-access source of one split; builds the data set into the tfds dir first if needed. Bad raw
    files (see audio_features, read_mnist) are skipped and listed in `bad_inputs.json` beside the built data
    (on_bad="skip"), or stop the build naming the file ("stop")."""
    if split not in SPLITS:
        raise ValueError(f"unknown AV-Digits split {split!r}; expected one of {SPLITS}")
    builder = AvDigits(
        raw_dir=data_dir, on_bad=on_bad, data_dir=str(resolve_tfds_dir(tfds_dir)), file_format="array_record"
    )
    if not builder.is_prepared():
        print(f"mmjax: building AV-Digits into {builder.data_dir} (once; under a minute)")
        builder.download_and_prepare()
        report = pathlib.Path(builder.data_dir) / BAD_INPUTS
        report.write_text(json.dumps(builder.bad_files, indent=1))
        if builder.bad_files:
            print(f"mmjax: skipped {len(builder.bad_files)} bad raw inputs; they are listed in {report}")
    return builder.as_data_source()[split]


# Preprocessing: stored examples -> the batch contract (mmjax.data.spec), robustness conditions.

IMAGE_MEAN, IMAGE_STD = 0.1307, 0.3081  # MNIST pixel statistics


def corrupt(
    example: dict,
    raw: Mapping,
    corruption: Corruption,
    *,
    audio_frames: int,
    seed: int,
    waveform: Waveform | None = None,
) -> dict:
    """Applies `corruption` to one preprocessed example (audio noise: on the recording, before the log-mel
    features or `waveform` samples); noise is seeded by (seed, recording, image)."""
    recording, image_index = as_str(raw["recording"]), int(raw["image_index"])
    rng = np.random.default_rng([seed, zlib.crc32(recording.encode("utf-8")), image_index, 1])
    example = dict(example, present=dict(example["present"]))
    if corruption.drop:
        example["present"][corruption.drop] = np.bool_(False)
    if corruption.audio_snr is not None:
        if not corruption.recordings_dir:
            raise ValueError("audio_snr needs the FSDD recordings_dir to re-read the recordings")
        wav = pathlib.Path(corruption.recordings_dir) / recording
        if waveform is None:
            features = audio_features(wav, corruption.audio_snr, rng)
            example["audio"], example["audio_mask"] = audio.pad_or_crop(features, audio_frames)
        else:
            example["audio"], example["audio_mask"] = recording_clip(wav, waveform, corruption.audio_snr, rng)
    if corruption.image_noise:
        noise = rng.normal(0.0, corruption.image_noise, size=example["image"].shape)
        example["image"] = (example["image"] + noise).astype(np.float32)
    return example


def preprocess(
    example: Mapping,
    *,
    tokenizer: WordTokenizer | PretrainedTokenizer,
    text_len: int,
    audio_frames: int,
    questions: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    corruption: Corruption | None = None,
    n_mfcc: int = 0,
    waveform: Waveform | None = None,
    recordings_dir: str = "",
) -> dict:
    """One decoded AV-Digits example -> one unbatched example of the batch contract.

    With `questions` ({question type: phrasings}), the stored question is replaced by one of those phrasings;
    with `corruption`, that robustness condition is applied; with `n_mfcc` > 0 the audio becomes that many
    MFCCs per frame (audio.mfcc_from_log_mel) instead of the log-mel bands; with `waveform` the audio is
    the recording's samples (fit_clip), re-read from `recordings_dir` (or encode_inputs' `waveform`).
    """
    qtype = int(example["question_type"])
    question = as_str(example["question"])
    if questions is not None:
        recording, image_index = as_str(example["recording"]), int(example["image_index"])
        question = pick_phrasing(questions[QUESTION_TYPES[qtype]], seed, recording, image_index)
    text_ids, text_mask = tokenizer.encode(question, text_len)
    if waveform is None:
        features, audio_mask = audio.pad_or_crop(np.asarray(example["audio"], np.float32), audio_frames)
    elif "waveform" in example:
        features, audio_mask = fit_clip(example["waveform"], waveform)
    else:
        wav = pathlib.Path(recordings_dir) / as_str(example["recording"])
        features, audio_mask = recording_clip(wav, waveform)
    image = (np.asarray(example["image"], dtype=np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD
    processed = {
        "text": text_ids,
        "text_mask": text_mask,
        "image": image[..., None],
        "audio": features,
        "audio_mask": audio_mask,
        "present": {name: np.bool_(True) for name in ("text", "image", "audio")},
        "question_type": np.int32(qtype),
        **{f"labels/{task}": np.int32(example[task]) for task in TASKS},
    }
    if corruption is not None:
        processed = corrupt(
            processed, example, corruption, audio_frames=audio_frames, seed=seed, waveform=waveform
        )
    if n_mfcc:
        processed["audio"] = audio.mfcc_from_log_mel(processed["audio"], processed["audio_mask"], n_mfcc)
    return processed


# The data-set contract (mmjax.data.spec.DataSet) for an experiment config.


def task_specs() -> dict[str, Task]:
    tasks = {task: classes(*names) for task, names in CLASS_NAMES.items()}
    return tasks | {ALIGN: Task("align")}


def load_split(config: ml_collections.ConfigDict, split: str):
    """The AV-Digits split of an experiment config (built on first use)."""
    return load(
        split,
        data_dir=config.data.data_dir or None,
        tfds_dir=config.data.tfds_dir or None,
        on_bad=config.data.get("on_bad_example", "skip"),  # absent in older runs
    )


def question_tokenizer(config: ml_collections.ConfigDict) -> WordTokenizer | PretrainedTokenizer:
    """The experiment's pretrained tokenizer, else the word vocabulary of the training phrasings."""
    return experiment_tokenizer(config, (p for ps in PHRASINGS.values() for p in ps))


def recordings_dir(config: ml_collections.ConfigDict) -> str:
    """The FSDD recordings of an experiment's raw data (data.data_dir)."""
    return str(resolve_data_dir(config.data.data_dir or None) / "fsdd" / "recordings")


def make_preprocess(
    config: ml_collections.ConfigDict,
    questions: Mapping[str, list[str]] | None = None,
    corruption: Corruption | None = None,
    waveform: Waveform | None = None,
):
    """AV-Digits' per-example preprocessing (optionally other phrasings, a robustness condition, waveforms
    read from the raw recordings). Phrasings longer than data.text_len tokens are truncated with a warning,
    or stop the run when data.on_bad_example=stop."""
    n_mfcc = config.data.get("n_mfcc", 0)
    if n_mfcc and waveform is not None:
        raise ValueError(f"data.n_mfcc={n_mfcc} needs log-mel audio; model.audio.frontend is waveform")
    tokenizer = question_tokenizer(config)
    limit = config.data.text_len
    lengths = {
        p: int(tokenizer.encode(p, 4 * limit + 8)[1].sum())  # + 8: room for special tokens
        for phrasings in (questions or PHRASINGS).values()
        for p in phrasings
    }
    too_long = {p: n for p, n in lengths.items() if n > limit}
    if too_long:
        listed = "; ".join(f"{p!r} ({n} tokens)" for p, n in too_long.items())
        if config.data.get("on_bad_example") == "stop":
            raise ValueError(f"question phrasings longer than data.text_len={limit}: {listed}")
        print(f"mmjax: warning: truncating to data.text_len={limit} tokens: {listed}")
    return functools.partial(
        preprocess,
        tokenizer=tokenizer,
        text_len=config.data.text_len,
        audio_frames=config.data.audio_frames,
        questions=questions,
        seed=config.seed,
        corruption=corruption,
        n_mfcc=n_mfcc,
        waveform=waveform,
        recordings_dir=recordings_dir(config) if waveform is not None else "",
    )


def condition(
    config: ml_collections.ConfigDict,
    corruption: Corruption,
    questions: str = "",
    waveform: Waveform | None = None,
):
    """AV-Digits preprocessing under a robustness condition (audio noise re-reads the recordings)."""
    if corruption.audio_snr is not None and not corruption.recordings_dir:
        corruption = Corruption(
            corruption.drop, corruption.audio_snr, corruption.image_noise, recordings_dir(config)
        )
    phrasings = load_questions(questions) if questions else None
    return make_preprocess(config, phrasings, corruption, waveform)


@functools.cache
def question_types(tfds_dir: str, data_dir: str, split: str) -> np.ndarray:
    source = load(split, data_dir=data_dir or None, tfds_dir=tfds_dir or None)
    return np.asarray([QUESTION_TYPES[int(source[i]["question_type"])] for i in range(len(source))])


def encode_inputs(
    given: Mapping[str, object], config: ml_collections.ConfigDict, waveform: Waveform | None = None
) -> dict:
    """A user's image, recording and question -> one AV-Digits source example (other fields zero); with
    `waveform`, the recording is kept as samples at waveform.sample_rate under `waveform`."""
    example = {task: 0 for task in CLASS_NAMES} | {"recording": "", "image_index": 0}
    example |= {"question": given.get("text", ""), "question_type": 0}
    example["image"] = np.zeros((28, 28), np.uint8)
    if given.get("image") is not None:
        example["image"] = inputs.read_image(given["image"], (28, 28), 1)[..., 0]
    example["audio"] = np.zeros((config.data.audio_frames, N_MELS), np.float32)
    if waveform is not None:
        example["waveform"] = np.zeros(0, np.float32)
    if given.get("audio") is not None:
        wave, rate, _ = inputs.read_wave(given["audio"])
        if waveform is None:
            example["audio"] = wave_features(wave, rate)
        else:
            example["waveform"] = audio.resample(wave, rate, waveform.sample_rate)
    return example


def data_set(config: ml_collections.ConfigDict, waveform: Waveform | None) -> DataSet:
    """AV-Digits for an experiment config; audio as log-mel features, or as `waveform` samples (from
    datasets.waveform_settings)."""
    tasks = trained_tasks(config.tasks, task_specs(), "AV-Digits")
    d = config.data
    buckets = pipeline.parse_buckets(
        d.get("audio_buckets", ""), d.audio_frames, config.model.audio.patch_time, waveform
    )
    eval_cfg = config.get("eval", {})
    group_by = eval_cfg.get("group_by", "question_type")
    if group_by not in ("", "question_type"):
        raise ValueError(f"config.eval.group_by={group_by!r}: AV-Digits groups by question_type or nothing")
    groups = None
    if group_by:
        groups = functools.partial(question_types, config.data.tfds_dir, config.data.data_dir)
    group_tasks = tuple(t for t in eval_cfg.get("group_tasks", "answer").split(",") if t)
    return DataSet(
        name="av_digits",
        streams={"text": "text", "image": "image", "audio": "audio"},
        tasks=tasks,
        load=functools.partial(load_split, config),
        preprocess=make_preprocess(config, waveform=waveform),
        summarize=summarizer(tasks, groups, group_tasks),
        iterator_args={"audio_buckets": buckets},
        groups=groups,
        group_tasks=group_tasks,
        condition=functools.partial(condition, config, waveform=waveform),
        encode_inputs=functools.partial(encode_inputs, config=config, waveform=waveform),
        align_labels=dict(MODALITY_LABELS),
        tokenizer=question_tokenizer(config),
    )
