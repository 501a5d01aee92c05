"""Task mixing over data sets: hand-computed probabilities, empirical frequencies, round robin, resume."""

import itertools
import json

import grain
import numpy as np
import pytest

from mmjax.data import mixture

SIZES = (100, 400, 900)


def _datasets(sizes=SIZES, shuffle_seed=None):
    """Endless data sets whose elements are 10_000 * k + i, so element // 10_000 names the data set."""
    datasets = []
    for k, size in enumerate(sizes):
        dataset = grain.MapDataset.range(10_000 * k, 10_000 * k + size)
        if shuffle_seed is not None:
            dataset = dataset.seed(shuffle_seed + k).shuffle()
        datasets.append(dataset.repeat())
    return datasets


def _take(iterator, n):
    return [int(x) for x in itertools.islice(iterator, n)]


def _frequencies(elements, num_datasets=3):
    return np.bincount(np.asarray(elements) // 10_000, minlength=num_datasets) / len(elements)


def test_sampling_probabilities_hand_computed():
    np.testing.assert_allclose(
        mixture.sampling_probabilities(SIZES, "proportional"), [1 / 14, 4 / 14, 9 / 14]
    )
    # n^(1/2) = 10, 20, 30.
    np.testing.assert_allclose(
        mixture.sampling_probabilities(SIZES, "temperature", 2.0), [1 / 6, 2 / 6, 3 / 6]
    )
    np.testing.assert_allclose(
        mixture.sampling_probabilities(SIZES, "temperature", 1.0),
        mixture.sampling_probabilities(SIZES, "proportional"),
    )
    np.testing.assert_allclose(mixture.sampling_probabilities(SIZES, "temperature", 1e9), [1 / 3] * 3)
    np.testing.assert_allclose(mixture.sampling_probabilities(SIZES, "round_robin"), [1 / 3] * 3)
    huge = mixture.sampling_probabilities([1, 10**300], "temperature", 1.0)
    assert np.all(np.isfinite(huge)) and huge[1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "sizes, method, kwargs",
    [
        ((0, 5), "proportional", {}),
        ((), "proportional", {}),
        ((1, 2), "loss", {}),
        ((1, 2), "temperature", {"temperature": 0}),
    ],
)
def test_sampling_probabilities_rejects_bad_input(sizes, method, kwargs):
    with pytest.raises(ValueError):
        mixture.sampling_probabilities(sizes, method, **kwargs)


@pytest.mark.parametrize("seed", [None, 7])
@pytest.mark.parametrize("method", ["proportional", "temperature"])
def test_empirical_frequencies_match_probabilities(method, seed):
    mixed = mixture.mix(_datasets(), method, sizes=SIZES, temperature=2.0, seed=seed)
    elements = _take(iter(mixed), 3000)
    expected = mixture.sampling_probabilities(SIZES, method, 2.0)
    # The interleave is exact up to grain's integer rounding; i.i.d. draws have std <= 0.009 at n=3000.
    np.testing.assert_allclose(_frequencies(elements), expected, atol=0.005 if seed is None else 0.03)
    # Each data set is read in its own order, without skips.
    for k in range(3):
        from_k = [x - 10_000 * k for x in elements if x // 10_000 == k]
        assert from_k == [i % SIZES[k] for i in range(len(from_k))]


def test_seeded_draws_are_random_and_deterministic():
    def stream(seed):
        return _take(iter(mixture.mix(_datasets(), "temperature", sizes=SIZES, seed=seed)), 200)

    assert stream(3) == stream(3)
    assert stream(3) != stream(4)
    assert stream(3) != stream(None)  # i.i.d. draws, not grain's fixed interleave


@pytest.mark.parametrize("seed", [None, 5])
def test_round_robin_is_an_exact_cycle(seed):
    mixed = mixture.mix(_datasets(), "round_robin", sizes=SIZES, seed=seed)
    ids = [x // 10_000 for x in _take(iter(mixed), 30)]
    assert ids == [0, 1, 2] * 10


def test_sizes_inferred_from_finite_map_datasets():
    finite = [grain.MapDataset.range(10_000 * k, 10_000 * k + n) for k, n in enumerate((30, 60))]
    elements = [int(x) for x in mixture.mix(finite, "proportional")]
    # 1:2 interleave; the stream stops as soon as one data set is exhausted, after about 90 elements.
    assert 85 <= len(elements) <= 90
    np.testing.assert_allclose(_frequencies(elements, 2), [1 / 3, 2 / 3], atol=0.02)
    with pytest.raises(ValueError, match="pass sizes"):
        mixture.mix(_datasets(), "proportional")
    with pytest.raises(ValueError, match="2 sizes for 3"):
        mixture.mix(_datasets(), "proportional", sizes=(1, 2))


@pytest.mark.parametrize("method, seed", [("temperature", None), ("temperature", 11), ("round_robin", None)])
def test_resume_from_state_gives_the_same_continuation(method, seed):
    mixed = mixture.mix(_datasets(shuffle_seed=1), method, sizes=SIZES, seed=seed)
    iterator = iter(mixed)
    _take(iterator, 137)
    state = json.loads(json.dumps(iterator.get_state()))  # as grain.checkpoint would store it
    continuation = _take(iterator, 300)
    restored = iter(mixture.mix(_datasets(shuffle_seed=1), method, sizes=SIZES, seed=seed))
    restored.set_state(state)
    assert _take(restored, 300) == continuation
    fresh = iter(mixed)
    assert _take(fresh, 437)[137:] == continuation
