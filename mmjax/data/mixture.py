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
"""

import sys
from collections.abc import Sequence

import grain
import numpy as np

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
