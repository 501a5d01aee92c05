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
