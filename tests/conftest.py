"""Test setup: fake 8 CPU devices before jax initialises, and share the built AV-Digits data set."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def av_digits_dir(tmp_path_factory):
    """Builds the real AV-Digits data set once per session; returns its tfds dir (nothing global is set)."""
    from mmjax.data import av_digits

    tfds_dir = tmp_path_factory.mktemp("tfds")
    av_digits.load("train", tfds_dir=tfds_dir)
    return tfds_dir


@pytest.fixture(scope="session")
def smoke_run(av_digits_dir, tmp_path_factory):
    """Workdir of a trained smoke run (cross-attention fusion, 8 steps), evaluated on 2 test batches."""
    from mmjax import evaluate, train
    from tests.test_train import smoke_config

    workdir = tmp_path_factory.mktemp("smoke_run")
    train.main(smoke_config(av_digits_dir, **{"train.steps": 8}), workdir)
    evaluate.main(workdir, split="test", max_batches=2)
    return workdir
