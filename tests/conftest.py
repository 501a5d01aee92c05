"""Test setup: fake 8 CPU devices before jax initialises, one XLA compilation cache for the whole run, share
the built AV-Digits data set, and start the longest tests first."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# The longest tests (or xdist groups), longest first: pytest-xdist hands them out before the rest, so neither
# worker is left with a long test at the end while the other idles.
LONGEST_FIRST = (
    "test_sigterm_then_sigkill",
    "test_a_run_saved_on_8_devices",  # with the test above (xdist_group "uninterrupted")
    "test_smoke_sweep_trains",
    "test_two_processes_train_like_one_process",
    "test_smoke_config_trains_and_evaluates",
    "test_one_and_eight_devices",
    "test_every_task_weighting_method",
    "test_text_encoder_from_a_port",
    "test_query_modality_sweep",
    "test_nan_batch_is_skipped",
    "test_early_stopping",
)

_created_cache = ""


def pytest_configure(config):
    """One persistent XLA cache for the run (a fresh folder, deleted at the end), set before jax is imported:
    the xdist workers and the training subprocesses the tests start all reuse each other's compilations."""
    global _created_cache
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the xdist workers inherit the controller's
        _created_cache = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax_xla_")


def pytest_unconfigure(config):
    if _created_cache:
        shutil.rmtree(_created_cache, ignore_errors=True)


def pytest_collection_modifyitems(items):
    def rank(item):
        ranks = [i for i, name in enumerate(LONGEST_FIRST) if item.name.startswith(name)]
        return ranks[0] if ranks else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


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
