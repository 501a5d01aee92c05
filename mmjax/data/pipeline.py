"""Host input pipeline: a data set's examples -> numpy batches in the batch contract, via grain.

Batches are process-local numpy dicts; turning them into global device arrays is parallel.py's job.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags

from mmjax.data import audio, text_tasks
from mmjax.data.text import PretrainedTokenizer, WordTokenizer
from mmjax.data.waveform import Waveform, fit_clip


def as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """Evaluation-time robustness conditions: a stream marked absent, noisy images, and noisy audio (for data
    sets that keep the raw recordings: AV-Digits, and folders built with waveforms)."""

    drop: str = ""  # "" or a stream (e.g. "image"): absent in every example
    audio_snr: float | None = None  # dB: white noise added to the recording before the features
    image_noise: float = 0.0  # std of Gaussian noise added to the normalised image
    recordings_dir: str = ""  # FSDD recordings, re-read when audio_snr is set

    def __post_init__(self):
        if self.image_noise < 0:
            raise ValueError(f"image_noise={self.image_noise} must be >= 0")

    @property
    def suffix(self) -> str:
        """File-name suffix naming the condition, "" when clean: e.g. `_drop-image_snr-10`."""
        parts = [f"drop-{self.drop}"] if self.drop else []
        parts += [f"snr-{self.audio_snr:g}"] if self.audio_snr is not None else []
        parts += [f"image-noise-{self.image_noise:g}"] if self.image_noise else []
        return "".join(f"_{p}" for p in parts)


def preprocess_streams(
    example: Mapping,
    *,
    streams: Mapping[str, str],
    tasks: Mapping[str, str],
    scales: Mapping[str, tuple[float, float]],
    tokenizer: WordTokenizer | PretrainedTokenizer | None,
    text_len: int,
    audio_frames: int,
    image_mean: np.ndarray,
    image_std: np.ndarray,
    waveform: Waveform | None = None,
) -> dict:
    """One stored example of a folder data set (mmjax.data.folder) -> one example of the batch contract.

    Images (uint8 [H, W, C]) are scaled to 0..1 and normalised per channel; audio features are padded or
    cropped to `audio_frames` with a mask (stored waveforms, with `waveform`: to waveform.samples, see
    fit_clip); text is tokenized to `text_len`. `present/<stream>` says which inputs the example has.
    Labels keep their unlabelled marks (class -1, multi-hot rows of -1, NaN targets); regression targets
    become (target - mean) / std with `scales` {task: (mean, std)}.
    """
    processed = {"present": {}}
    for stream, kind in streams.items():
        value = example[stream]
        if kind == "image":
            processed[stream] = ((np.asarray(value, np.float32) / 255.0 - image_mean) / image_std).astype(
                np.float32
            )
        elif kind == "audio" and waveform is not None:
            processed[stream], processed[f"{stream}_mask"] = fit_clip(value, waveform)
        elif kind == "audio":
            processed[stream], processed[f"{stream}_mask"] = audio.pad_or_crop(
                np.asarray(value, np.float32), audio_frames
            )
        else:
            processed[stream], processed[f"{stream}_mask"] = tokenizer.encode(as_str(value), text_len)
        processed["present"][stream] = np.bool_(example[f"present/{stream}"])
    label_types = {"classes": np.int32, "multilabel": np.float32, "regression": np.float32}
    for task, kind in tasks.items():
        if kind in label_types:
            label = np.asarray(example[f"labels/{task}"]).astype(label_types[kind])
            if task in scales:
                label = ((label - scales[task][0]) / scales[task][1]).astype(np.float32)
            processed[f"labels/{task}"] = label
    return processed


def condition_streams(
    preprocess_fn: Callable[[Mapping], dict],
    streams: Mapping[str, str],
    corruption: Corruption,
    questions: str = "",
    *,
    seed: int,
    waveform: Waveform | None = None,
) -> Callable[[Mapping], dict]:
    """`preprocess_fn` under a robustness condition any data set supports: a stream marked absent in every
    example (`drop`) and Gaussian noise on the normalised images (seeded by the example's row). Audio noise
    needs the waveforms: a data set stored with them (`waveform`) gets white noise at `audio_snr` dB on every
    stored audio clip (seeded by the row); a log-mel build no longer holds them: it raises ValueError."""
    if questions:
        raise ValueError("other question phrasings are an AV-Digits condition")
    if corruption.audio_snr is not None and waveform is None:
        raise ValueError(
            "audio noise needs the waveforms, which a log-mel build does not keep (build it with "
            "model.audio.frontend=waveform, or use AV-Digits)"
        )
    if corruption.drop and corruption.drop not in streams:
        raise ValueError(f"--drop {corruption.drop!r} is not a stream of this data set: {list(streams)}")
    audio_streams = [s for s, kind in streams.items() if kind == "audio"]

    def conditioned(example: Mapping) -> dict:
        if corruption.audio_snr is not None:
            rng = np.random.default_rng([seed, int(example["row"]), 2])
            example = dict(example)
            for stream in (s for s in audio_streams if len(example[s])):
                stored = np.asarray(example[stream], np.float32)
                example[stream] = audio.add_white_noise(stored, corruption.audio_snr, rng)
        processed = preprocess_fn(example)
        processed["present"] = dict(processed["present"])
        if corruption.drop:
            processed["present"][corruption.drop] = np.bool_(False)
        if corruption.image_noise:
            rng = np.random.default_rng([seed, int(example["row"]), 1])
            for stream in (s for s, kind in streams.items() if kind == "image"):
                noise = rng.normal(0.0, corruption.image_noise, size=processed[stream].shape)
                processed[stream] = (processed[stream] + noise).astype(np.float32)
        return processed

    return conditioned


def train_iterator(
    source: Sequence,
    *,
    batch_size: int,
    seed: int,
    preprocess_fn: Callable[[Mapping], dict],
    augment_fn: Callable[[dict, np.random.Generator], dict] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    shards: int = 0,
    worker_count: int = 0,
    audio_buckets: Sequence[int] = (),
    text_buckets: Sequence[int] = (),
) -> grain.DatasetIterator:
    """Endless shuffled batches of this process's share of the global batch.

    The source is split into `shards` interleaved shards (every shards-th example; 0: one per process), each
    reshuffled every epoch on its own (seed + shard) and batched batch_size // shards at a time. A process
    reads `shards // process_count` consecutive shards and concatenates their batches, so a global batch is
    the same for every process count that divides `shards` (one process with shards=2 trains exactly like
    two). `augment_fn(example, rng)` draws from a generator seeded by (seed, position in the stream), so
    augmentations differ per epoch yet repeat exactly after a restore. The returned iterator is
    checkpointable (get_state / set_state, grain.checkpoint with Orbax). With `audio_buckets`, each batch's
    audio is trimmed to the shortest bucket that holds its longest clip (see trim_audio); `text_buckets` do
    the same for the token axis of text-only batches (trim_text).
    """
    shards = shards or process_count
    if shards % process_count:
        raise ValueError(f"data.shards={shards} is not a multiple of the process count {process_count}")
    if batch_size % shards:
        raise ValueError(
            f"data.batch_size={batch_size} is not divisible by {shards} data shards (see data.shards)"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
    per_process = shards // process_count
    parts = []
    for shard in range(process_index * per_process, (process_index + 1) * per_process):
        part = grain.MapDataset.source(source)[shard::shards].seed(seed + shard).shuffle().repeat(None)
        part = part.map(preprocess_fn)
        if augment_fn is not None:
            part = part.random_map(augment_fn)
        parts.append(part.batch(batch_size // shards, drop_remainder=True))
    dataset = parts[0] if len(parts) == 1 else grain.experimental.ZipMapDataset(parts).map(_combine)
    # Batches come from the MapDataset, so prefetch workers take whole batches: same for any worker_count.
    if audio_buckets:
        dataset = dataset.map(functools.partial(trim_audio, buckets=tuple(audio_buckets)))
    if text_buckets:
        dataset = dataset.map(functools.partial(trim_text, buckets=tuple(text_buckets)))
    dataset = dataset.to_iter_dataset()
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags when starting workers
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(dataset)


def _combine(parts: Sequence, join: Callable = np.concatenate):
    """Joins (by default concatenates the rows of) matching arrays of nested dicts, in order."""
    if isinstance(parts[0], dict):
        return {key: _combine([part[key] for part in parts], join) for key in parts[0]}
    return join(parts)


def _pad_rows(tree, size: int):
    """Pads every array of a batch to `size` rows by repeating its last row."""
    if isinstance(tree, dict):
        return {key: _pad_rows(value, size) for key, value in tree.items()}
    return np.concatenate([tree, np.repeat(tree[-1:], size - tree.shape[0], axis=0)])


def trim_audio(batch: dict, buckets: tuple[int, ...]) -> dict:
    """The batch with audio and audio_mask cut to the shortest bucket (frame count, or sample count for
    waveforms) that holds every clip's valid frames (the largest bucket if none does): a few static shapes,
    each compiled once, instead of always the longest. Padding is masked, so the model's result does not
    change."""
    length = shortest_bucket(int(batch["audio_mask"].sum(axis=1).max()), buckets)
    return batch | {"audio": batch["audio"][:, :length], "audio_mask": batch["audio_mask"][:, :length]}


def shortest_bucket(longest: int, buckets: tuple[int, ...]) -> int:
    """The shortest bucket holding `longest` (the largest bucket if none does)."""
    return min((b for b in buckets if b >= longest), default=max(buckets))


def trim_text(batch: dict, buckets: tuple[int, ...]) -> dict:
    """The batch with its token axis (`text`, masks, per-token labels) cut to the shortest bucket that holds
    its longest row (the largest bucket if none does): a few compiled shapes instead of always the longest."""
    length = shortest_bucket(int(batch["text_mask"].sum(axis=1).max()), buckets)
    per_token = [
        k
        for k in batch
        if k in text_tasks.ROW_KEYS or (k.startswith("labels/") and k != f"labels/{text_tasks.SPAN}")
    ]
    return batch | {k: batch[k][:, :length] for k in per_token}


def parse_buckets(
    text: str, frames: int, patch_time: int, waveform: Waveform | None = None
) -> tuple[int, ...]:
    """`data.audio_buckets` "32,64,96" -> (32, 64, 96): frame counts, multiples of patch_time, the largest
    `frames`; with `waveform`, sample counts, the largest waveform.samples."""
    unit = "sample" if waveform is not None else "frame"
    try:
        buckets = tuple(sorted(int(part) for part in text.split(",") if part.strip()))
    except ValueError as e:
        raise ValueError(f"data.audio_buckets={text!r} must be comma-separated {unit} counts") from e
    if not buckets:
        return buckets
    if waveform is not None and (buckets[-1] != waveform.samples or buckets[0] <= 0):
        raise ValueError(
            f"data.audio_buckets={text!r}: with model.audio.frontend=waveform buckets count samples: each "
            f"positive, the largest {waveform.samples} (data.audio_frames at data.sample_rate)"
        )
    if waveform is None and (buckets[-1] != frames or any(b <= 0 or b % patch_time for b in buckets)):
        raise ValueError(
            f"data.audio_buckets={text!r}: each bucket must be a positive multiple of model.audio.patch_time="
            f"{patch_time}, the largest data.audio_frames={frames}"
        )
    return buckets


def eval_batches(
    source: Sequence,
    *,
    batch_size: int,
    preprocess_fn: Callable[[Mapping], dict],
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """One ordered pass in global batches of batch_size; `valid` marks real examples (the last batch is
    padded) and `index` is each row's position in the source. Yields this process's rows of each global
    batch (its batch_size // process_count consecutive rows), read and preprocessed by this process only."""
    if batch_size % process_count:
        raise ValueError(f"data.eval_batch_size={batch_size} is not divisible by {process_count} processes")
    rows = batch_size // process_count
    dataset = grain.MapDataset.source(source).map(preprocess_fn)
    for start in range(0, len(source), batch_size):
        first = start + process_index * rows
        # Rows past the end repeat the last example (a process may hold no real row of the last batch).
        examples = [dataset[i] for i in range(first, min(first + rows, len(source)))] or [dataset[-1]]
        batch = _pad_rows(_combine(examples, np.stack), rows)
        batch["valid"] = np.arange(first, first + rows) < len(source)
        batch["index"] = np.minimum(np.arange(first, first + rows), len(source) - 1).astype(np.int32)
        yield batch


def steps_per_epoch(source: Sequence, batch_size: int) -> int:
    """Full (global) batches in one pass over the source."""
    return len(source) // batch_size
