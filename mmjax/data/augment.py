"""Training augmentations of preprocessed examples (numpy, per example): random image shifts and SpecAugment
masks on log-mel audio. Each takes `(example, rng)` as grain's random_map does, so an augmented stream repeats
exactly after a restore (see pipeline.train_iterator)."""

import dataclasses
import functools
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np


def random_shift(example: dict, rng: np.random.Generator, *, max_shift: int, stream: str = "image") -> dict:
    """Shift one image stream by up to max_shift pixels per axis, filling with its background (minimum)."""
    image = example[stream]
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    background = float(image.min())
    padded = np.pad(
        image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=background
    )
    height, width = image.shape[:2]
    top, left = max_shift - dy, max_shift - dx
    return {**example, stream: padded[top : top + height, left : left + width]}


def spec_augment(
    example: dict,
    rng: np.random.Generator,
    *,
    time_mask: int,
    freq_mask: int,
    masks: int = 2,
    stream: str = "audio",
) -> dict:
    """SpecAugment (Park et al., 2019) without time warping on one audio stream [T, F]: `masks` time masks
    of 0..time_mask frames within the clip's real frames (`<stream>_mask`, a prefix) and `masks` frequency
    masks of 0..freq_mask bands of those frames, each set to the mean of the clip's real frames."""
    features = example[stream].copy()
    valid = example.get(f"{stream}_mask", np.ones(features.shape[0], bool))
    length = int(valid.sum())
    fill = features[valid].mean() if length else 0.0
    bands = features.shape[1]
    for _ in range(masks):
        width = int(rng.integers(0, min(time_mask, length) + 1))
        start = int(rng.integers(0, length - width + 1))
        features[start : start + width] = fill
        width = int(rng.integers(0, min(freq_mask, bands) + 1))
        start = int(rng.integers(0, bands - width + 1))
        features[valid, start : start + width] = fill
    return {**example, stream: features}


@dataclasses.dataclass(frozen=True)
class Augment:
    """The training augmentations of an experiment (data.image_shift, data.time_mask, data.freq_mask,
    data.spec_masks), applied to every stream of their kind."""

    image_shift: int = 0
    time_mask: int = 0
    freq_mask: int = 0
    spec_masks: int = 2

    def __post_init__(self):
        for name in ("image_shift", "time_mask", "freq_mask", "spec_masks"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 0 (0: off)")


def augment_settings(config: ml_collections.ConfigDict) -> Augment:
    data = config.data
    return Augment(
        image_shift=data.get("image_shift", 0),
        time_mask=data.get("time_mask", 0),
        freq_mask=data.get("freq_mask", 0),
        spec_masks=data.get("spec_masks", 2),
    )


def make_augment(
    settings: Augment, streams: Mapping[str, str], waveform: bool = False
) -> Callable[[dict, np.random.Generator], dict] | None:
    """One `(example, rng) -> example` applying `settings` to the streams ({stream: kind}), or None if all are
    off. SpecAugment needs log-mel (or MFCC) frames: it is refused on waveform audio."""
    steps = []
    if settings.image_shift:
        steps += [
            functools.partial(random_shift, max_shift=settings.image_shift, stream=s)
            for s, kind in streams.items()
            if kind == "image"
        ]
    if settings.time_mask or settings.freq_mask:
        if waveform:
            raise ValueError(
                "data.time_mask / data.freq_mask (SpecAugment) need model.audio.frontend=log_mel"
            )
        steps += [
            functools.partial(
                spec_augment,
                time_mask=settings.time_mask,
                freq_mask=settings.freq_mask,
                masks=settings.spec_masks,
                stream=s,
            )
            for s, kind in streams.items()
            if kind == "audio"
        ]
    if not steps:
        return None

    def augment(example: dict, rng: np.random.Generator) -> dict:
        for step in steps:
            example = step(example, rng)
        return example

    return augment
