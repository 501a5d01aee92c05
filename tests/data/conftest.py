"""Fixtures of the data tests: the built AV-Digits validation split and its preprocessing."""

import functools

import pytest

from mmjax.data import av_digits as avd
from mmjax.data import av_digits_questions as avq


@pytest.fixture(scope="module")
def source(av_digits_dir):
    return avd.load("validation", tfds_dir=av_digits_dir)


@pytest.fixture(scope="module")
def preprocess_fn():
    return functools.partial(avd.preprocess, tokenizer=avq.make_tokenizer(), text_len=24, audio_frames=96)
