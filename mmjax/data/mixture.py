"""Mixing tasks that come from different data sets: sampling probabilities and a checkpointable grain mix.

Probabilities from data set sizes n_k (`sampling_probabilities`):
  proportional  p_k ∝ n_k.
  temperature   p_k ∝ n_k^(1/T): T=1 is proportional, T -> inf uniform (the T5 / mT5 scheme).
  round_robin   uniform, drawn as the exact cycle 0, 1, ..., K-1, 0, 1, ...

`mix` returns a grain.IterDataset whose iterator is checkpointable (get_state / set_state, grain.checkpoint
with Orbax). With seed=None it is grain's own `IterDataset.mix`: a deterministic weighted interleave that
keeps the proportions exact over every window (grain rounds them to integers, the smallest scaled to 100).
With a seed, each element is drawn i.i.d. from data set k with probability p_k; draw n depends only on
(seed, n), so the stream repeats exactly for a seed and after a restore. round_robin is always the cycle.

Mix per-task batches (batch each data set, then mix) to give every step one task, or mix examples then
batch for mixed-task batches. The stream ends when any data set ends: for endless training repeat each
data set (e.g. `ds.seed(s).shuffle().repeat()`) and pass their `sizes`.

`MixedSource` is the random-access form an experiment's `data.mix` trains on (mmjax.data.datasets): one
epoch holds each source's share of positions, so the usual shuffled, sharded, checkpointed input pipeline
(pipeline.train_iterator) draws from the sources in the given proportions.
"""

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence

import grain
import numpy as np

from mmjax.data.spec import DataSet, Task, task_metrics
from mmjax.data.text import SPECIALS, WordTokenizer

METHODS = ("proportional", "temperature", "round_robin")


def sampling_probabilities(sizes: Sequence[int], method: str, temperature: float = 2.0) -> np.ndarray:
    """Probability of drawing from each data set, given their sizes (see the module docstring)."""
    sizes = np.asarray(sizes, np.float64)
    if sizes.ndim != 1 or not sizes.size or np.any(sizes <= 0):
        raise ValueError(f"sizes must be a non-empty list of positive numbers, got {sizes.tolist()}")
    if method == "proportional":
        scores = sizes
    elif method == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        # n^(1/T) computed in log space relative to the largest data set, so large T and n stay finite.
        scores = np.exp((np.log(sizes) - np.log(sizes.max())) / temperature)
    elif method == "round_robin":
        scores = np.ones_like(sizes)
    else:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    return scores / scores.sum()


def _size(dataset) -> int:
    if isinstance(dataset, grain.MapDataset) and len(dataset) < sys.maxsize:
        return len(dataset)
    raise ValueError(
        f"cannot infer the size of {dataset}: pass sizes= (needed for infinite or iter data sets)"
    )


def mix(
    datasets: Sequence[grain.MapDataset | grain.IterDataset],
    method: str = "proportional",
    *,
    sizes: Sequence[int] | None = None,
    temperature: float = 2.0,
    seed: int | None = None,
) -> grain.IterDataset:
    """One stream drawing from `datasets` with `sampling_probabilities(sizes, method, temperature)`.

    `sizes` defaults to the lengths of finite MapDatasets. seed=None (or round_robin): grain's
    deterministic weighted interleave; an int seed: i.i.d. draws. Iterate it with `iter(...)`; the iterator
    resumes exactly from `get_state()`.
    """
    if not datasets:
        raise ValueError("mix needs at least one data set")
    sizes = [_size(d) for d in datasets] if sizes is None else list(sizes)
    if len(sizes) != len(datasets):
        raise ValueError(f"got {len(sizes)} sizes for {len(datasets)} data sets")
    probabilities = sampling_probabilities(sizes, method, temperature)
    iter_datasets = [d.to_iter_dataset() if isinstance(d, grain.MapDataset) else d for d in datasets]
    if seed is None or method == "round_robin":
        return grain.IterDataset.mix(iter_datasets, probabilities.tolist())
    return _SampledIterDataset(iter_datasets, probabilities, seed)


class _SampledIterDataset(grain.IterDataset):
    """Each element from data set k with probability p_k, drawn with a generator seeded by (seed, draw)."""

    def __init__(self, parents: Sequence[grain.IterDataset], probabilities: np.ndarray, seed: int):
        super().__init__(list(parents))
        self._cdf = np.cumsum(probabilities)
        self._seed = seed

    def __iter__(self) -> grain.DatasetIterator:
        return _SampledIterator([iter(p) for p in self._parents], self._cdf, self._seed)

    def __str__(self) -> str:
        return f"SampledIterDataset({len(self._parents)} parents, seed={self._seed})"


class _SampledIterator(grain.DatasetIterator):
    def __init__(self, parents: Sequence[grain.DatasetIterator], cdf: np.ndarray, seed: int):
        super().__init__(parents)
        self._cdf = cdf
        self._seed = seed
        self._draws = 0

    def __next__(self):
        uniform = np.random.default_rng((self._seed, self._draws)).random() * self._cdf[-1]
        k = min(int(np.searchsorted(self._cdf, uniform, side="right")), len(self._parents) - 1)
        element = next(self._parents[k])
        self._draws += 1
        return element

    def get_state(self) -> dict:
        return {"parents": [p.get_state() for p in self._parents], "draws": self._draws}

    def set_state(self, state: dict) -> None:
        for parent, parent_state in zip(self._parents, state["parents"], strict=True):
            parent.set_state(parent_state)
        self._draws = state["draws"]


MEMBER = "mix/member"  # the key a MixedSource adds to each example: the index of its source


class MixedSource:
    """Random access to several sources at once, each taking a share `probabilities` of the positions.

    Source k (n_k examples) fills round(p_k * V) positions, cycling through its examples, with V the
    smallest length at which every source fits at least once (V = max_k n_k / p_k); without probabilities
    each source appears exactly once (V = sum n_k). Positions take the sources in turn (the first example of
    each, then the second, ...), so a capped evaluation (its first batches) still scores every source.
    `member[i]` and `local[i]` say which source and example position i is; each example gets MEMBER = k.
    """

    def __init__(self, sources: Sequence[Sequence], probabilities: Sequence[float] | None = None):
        sizes = [len(source) for source in sources]
        if not sources or min(sizes) == 0:
            raise ValueError(f"every mixed source needs examples, got sizes {sizes}")
        counts = sizes
        if probabilities is not None:
            if len(probabilities) != len(sources) or min(probabilities) <= 0:
                raise ValueError(f"need a positive probability per source, got {list(probabilities)}")
            total = max(math.ceil(n / p - 1e-9) for n, p in zip(sizes, probabilities, strict=True))
            counts = [max(n, round(p * total)) for n, p in zip(sizes, probabilities, strict=True)]
        member = np.repeat(np.arange(len(sources), dtype=np.int32), counts)
        local = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
        order = np.lexsort((member, local))  # round robin: the first of each source, the second of each, ...
        self.sources = list(sources)
        self.member = member[order]
        self.local = (local[order] % np.asarray(sizes)[self.member]).astype(np.int32)

    def __len__(self) -> int:
        return len(self.member)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside the {len(self)} mixed examples")
        k = int(self.member[index])
        return dict(self.sources[k][int(self.local[index])]) | {MEMBER: k}


def combine(members: Mapping[str, DataSet], probabilities: Sequence[float]) -> DataSet:
    """One DataSet of several ({name: DataSet}): its train split draws from the members' train splits with
    `probabilities`; its validation and test splits hold every example of the members' own splits.

    Streams and tasks are the union of the members' (a stream's kind and a task's spec must agree). An
    example lacks the streams and labels its data set does not have: they are absent (`present` False, zeros)
    and unlabelled (class -1, multi-hot rows of -1, NaN targets), which masks them out of every loss and
    metric. Word vocabularies are merged into one (each member's ids remapped); pretrained tokenizers must be
    the same. Metrics are pooled over all examples (`<task>/<metric>`) and given per member
    (`<member>/<task>/<metric>`: each data set on its own split).
    """
    names, sets = list(members), list(members.values())
    for name, data in members.items():
        if data.kind != "multimodal":
            raise ValueError(
                f"data.mix: {name} is a {data.kind}-only data set; only multimodal data sets mix"
            )
    streams = union_of(members, "streams")
    tasks = dict(sorted(union_of(members, "tasks").items()))
    tokenizer, remaps = shared_tokenizer(members)
    text_streams = [s for s, kind in streams.items() if kind == "text"]
    blanks = {}
    for name, data, remap in zip(names, sets, remaps, strict=True):
        example = remapped(data.preprocess(data.load("train")[0]), remap, text_streams)
        for key, blank in blank_values(example, tasks).items():
            known = blanks.setdefault(key, (name, blank))[1]
            if known.shape != blank.shape or known.dtype != blank.dtype:
                raise ValueError(
                    f"data.mix: {key!r} is {blank.dtype}{list(blank.shape)} in {name} but "
                    f"{known.dtype}{list(known.shape)} in {blanks[key][0]}: give the members the same sizes"
                )
    complete = functools.partial(
        completed,
        remaps=remaps,
        text_streams=text_streams,
        blanks={k: v for k, (_, v) in blanks.items()},
        streams=tuple(streams),
    )

    @functools.cache
    def load(split: str) -> MixedSource:
        return MixedSource([data.load(split) for data in sets], probabilities if split == "train" else None)

    def summarize(split: str, results: Mapping[str, np.ndarray]) -> dict[str, float]:
        summary = task_metrics(results, tasks)
        source = load(split)
        member, local = source.member[results["index"]], source.local[results["index"]]
        for k, (name, data) in enumerate(members.items()):
            rows = member == k
            if rows.any():
                part = {key: v[rows] for key, v in results.items() if np.ndim(v) and len(v) == len(rows)}
                part["index"] = local[rows]
                summary |= {f"{name}/{key}": v for key, v in data.summarize(split, part).items()}
        return summary

    def condition(corruption, questions: str = ""):
        if corruption.drop and corruption.drop not in streams:
            raise ValueError(f"--drop {corruption.drop!r} is not a stream of this data set: {list(streams)}")
        conditioned = []
        for name, data in members.items():
            if data.condition is None:
                raise ValueError(f"data.mix: {name} has no robustness conditions")
            drop = corruption.drop if corruption.drop in data.streams else ""
            conditioned.append(data.condition(dataclasses.replace(corruption, drop=drop), questions))
        return lambda example: complete(example, conditioned)

    def encode_inputs(given: Mapping[str, object]) -> dict:
        for k, data in enumerate(sets):
            if data.encode_inputs is not None and set(given) <= set(data.streams):
                return data.encode_inputs(given) | {MEMBER: k}
        raise ValueError(f"no data set of the mix {names} has every input given: {sorted(given)}")

    merged_words = isinstance(tokenizer, WordTokenizer)
    align_labels = {}
    for data in sets:
        align_labels |= {s: key for s, key in data.align_labels.items() if s not in align_labels}
    return DataSet(
        name="+".join(names),
        streams=streams,
        tasks=tasks,
        load=load,
        preprocess=lambda example: complete(example, [data.preprocess for data in sets]),
        summarize=summarize,
        condition=condition,
        encode_inputs=encode_inputs,
        align_labels=align_labels,
        primary=sets[0].primary or next(iter(sets[0].tasks)),
        text_vocab_size=tokenizer.vocab_size if merged_words else max(d.text_vocab_size for d in sets),
        tokenizer=tokenizer,
    )


def union_of(members: Mapping[str, DataSet], field: str) -> dict:
    """The union of the members' streams or tasks; one name with two kinds (or task specs) raises."""
    union, owner = {}, {}
    for name, data in members.items():
        for key, value in getattr(data, field).items():
            if union.setdefault(key, value) != value:
                raise ValueError(
                    f"data.mix: {field[:-1]} {key!r} is {value} in {name} but {union[key]} in {owner[key]}"
                )
            owner.setdefault(key, name)
    return union


def shared_tokenizer(members: Mapping[str, DataSet]) -> tuple[object, list[np.ndarray | None]]:
    """(the mix's text tokenizer, per member the map of its word ids to the mix's, or None). Word
    vocabularies merge into one; pretrained tokenizers must be the same one."""
    texts = {name: data.tokenizer for name, data in members.items() if "text" in data.streams.values()}
    if not texts:
        return None, [None] * len(members)
    words = {name: t for name, t in texts.items() if isinstance(t, WordTokenizer)}
    if len(words) == len(texts):
        merged = SPECIALS + tuple(sorted({w for t in words.values() for w in t.vocab[len(SPECIALS) :]}))
        index = {word: i for i, word in enumerate(merged)}
        remaps = [
            np.asarray([index[w] for w in words[name].vocab], np.int32) if name in words else None
            for name in members
        ]
        return WordTokenizer(merged), remaps
    first = next(iter(texts.values()))
    if words or any(t.tokenizer.to_str() != first.tokenizer.to_str() for t in texts.values()):
        raise ValueError(
            f"data.mix: the members' text needs one tokenizer; word vocabularies: {sorted(words)}, "
            f"pretrained: {sorted(set(texts) - set(words))} (set the same model.text.init_from or "
            "data.tokenizer in each)"
        )
    return first, [None] * len(members)


def remapped(processed: dict, remap: np.ndarray | None, text_streams: Sequence[str]) -> dict:
    """A member's preprocessed example with its text ids mapped to the mix's vocabulary."""
    if remap is not None:
        processed = processed | {s: remap[processed[s]] for s in text_streams if s in processed}
    return processed


def blank_values(processed: Mapping, tasks: Mapping[str, Task]) -> dict[str, np.ndarray]:
    """What stands in for each field of `processed` in an example that lacks it: zeros for inputs and
    masks, unlabelled marks for labels (-1; NaN for regression targets)."""
    blanks = {}
    for key, value in processed.items():
        if key == "present":
            continue
        value = np.asarray(value)
        task = tasks.get(key.removeprefix("labels/")) if key.startswith("labels/") else None
        if not key.startswith("labels/"):
            blanks[key] = np.zeros_like(value)
        else:
            blank = np.nan if task is not None and task.kind == "regression" else -1
            blanks[key] = np.full_like(value, blank)
    return blanks


def completed(
    example: Mapping,
    preprocess_fns: Sequence[Callable[[Mapping], dict]],
    *,
    remaps: Sequence[np.ndarray | None],
    text_streams: Sequence[str],
    blanks: Mapping[str, np.ndarray],
    streams: Sequence[str],
) -> dict:
    """A mixed example preprocessed by its own data set's function, with every field of the mix: the
    streams and labels its data set lacks are absent and unlabelled (`blanks`)."""
    k = int(example[MEMBER])
    processed = remapped(preprocess_fns[k](example), remaps[k], text_streams)
    out = {key: processed[key] if key in processed else blank for key, blank in blanks.items()}
    out["present"] = {s: processed["present"].get(s, np.bool_(False)) for s in streams}
    return out
