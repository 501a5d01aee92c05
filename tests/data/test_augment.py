import functools

import numpy as np
import pytest

from mmjax.data import pipeline
from mmjax.data.augment import Augment, make_augment, random_shift, spec_augment


def test_random_shift_moves_the_image_and_keeps_everything_else():
    image = np.full((6, 6, 1), -0.5, np.float32)
    image[2, 3, 0] = 2.0
    example = {"image": image, "labels/answer": np.int32(4)}
    seen = set()
    for seed in range(40):
        out = random_shift(example, np.random.default_rng(seed), max_shift=2)
        assert out["image"].shape == image.shape and out["labels/answer"] == 4
        (y,), (x,), _ = np.nonzero(out["image"] == 2.0)
        assert abs(y - 2) <= 2 and abs(x - 3) <= 2
        assert np.all(out["image"][out["image"] != 2.0] == -0.5)  # filled with background
        seen.add((int(y), int(x)))
    assert len(seen) > 10  # many different shifts
    np.testing.assert_array_equal(example["image"], image)  # input untouched


def test_spec_augment_masks_bands_and_frames_inside_the_clip_only():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 8)).astype(np.float32) + 5.0
    mask = np.zeros(20, bool)
    mask[:12] = True
    features[12:] = 0.0  # padding
    example = {"audio": features, "audio_mask": mask}
    fill = features[:12].mean()
    masked_frames, masked_bands = set(), set()
    for seed in range(30):
        out = spec_augment(example, np.random.default_rng(seed), time_mask=4, freq_mask=3, masks=2)["audio"]
        assert out.shape == features.shape
        np.testing.assert_array_equal(out[12:], 0.0)  # padding is never touched
        changed = out != features
        np.testing.assert_allclose(out[changed], fill)
        bands = np.flatnonzero(changed[:12].all(axis=0))
        frames = np.flatnonzero(changed[:12].all(axis=1))
        assert len(bands) <= 6 and len(frames) <= 8 and frames.max(initial=0) < 12
        # every changed value lies in a fully masked frame or band
        assert np.all(
            changed[:12] <= (np.isin(np.arange(12), frames)[:, None] | np.isin(np.arange(8), bands))
        )
        masked_frames |= set(frames.tolist())
        masked_bands |= set(bands.tolist())
    assert len(masked_frames) > 6 and len(masked_bands) > 4  # the masks move
    np.testing.assert_array_equal(example["audio"], features)  # input untouched


def test_make_augment_covers_every_stream_of_a_kind_and_refuses_waveforms():
    assert make_augment(Augment(), {"image": "image", "audio": "audio"}) is None
    streams = {"image": "image", "image_2": "image", "audio": "audio"}
    augment = make_augment(Augment(image_shift=2, time_mask=5, freq_mask=4), streams)
    dot = np.full((8, 8, 1), -1.0, np.float32)
    dot[4, 4] = 3.0
    example = {
        "image": dot,
        "image_2": dot,
        "audio": np.ones((10, 6), np.float32),
        "audio_mask": np.ones(10, bool),
    }
    example["audio"][:, 0] = 4.0
    moved = {"image": False, "image_2": False, "audio": False}
    for seed in range(20):
        out = augment(example, np.random.default_rng(seed))
        for stream in moved:
            moved[stream] |= not np.array_equal(out[stream], example[stream])
    assert all(moved.values())
    with pytest.raises(ValueError, match="data.time_mask"):
        make_augment(Augment(time_mask=5), streams, waveform=True)
    with pytest.raises(ValueError, match="data.freq_mask=-1"):
        Augment(freq_mask=-1)


def test_augmented_stream_is_deterministic_and_keeps_labels(source, preprocess_fn):
    augment = make_augment(
        Augment(image_shift=2, time_mask=10, freq_mask=8), {"image": "image", "audio": "audio"}
    )
    make = functools.partial(
        pipeline.train_iterator, source, batch_size=8, seed=3, preprocess_fn=preprocess_fn, augment_fn=augment
    )
    a, b = next(make()), next(make())
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["audio"], b["audio"])
    plain = next(pipeline.train_iterator(source, batch_size=8, seed=3, preprocess_fn=preprocess_fn))
    np.testing.assert_array_equal(a["labels/answer"], plain["labels/answer"])
    assert not np.array_equal(a["image"], plain["image"])
    assert not np.array_equal(a["audio"], plain["audio"])
