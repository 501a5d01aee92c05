"""Test setup: fake 8 CPU devices before jax initialises, one XLA compilation cache for the whole run, and
share the built AV-Digits data set."""

import os
import shutil
import tempfile

# XLA:CPU runs the independent collectives of one program concurrently, each holding a thread of its intra-op
# pool until all 8 devices join. That pool has 8 threads here (2 cores, 8 devices; NPROC sets its size), so
# two all-reduces in flight on some devices left no thread for the others and the train step deadlocked (all 8
# threads waiting in all-reduce rendezvous op 5 or op 10 of one step). 64 threads leave room for 8 in flight
# per device. A collective that still waits 5 minutes fails the test (XLA aborts the process).
os.environ.setdefault("NPROC", "64")
COLLECTIVE_TIMEOUTS = (
    " --xla_cpu_collective_call_terminate_timeout_seconds=300 --xla_cpu_collective_timeout_seconds=300"
)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" + COLLECTIVE_TIMEOUTS
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

_created_cache = ""


def pytest_configure(config):
    """One persistent XLA cache for the run (a fresh folder, deleted at the end), set before jax is imported:
    the xdist workers and the training subprocesses the tests start all reuse each other's compilations, the
    quick ones too (e.g. Orbax's per-array slicing when a checkpoint is saved from 8 devices)."""
    global _created_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the xdist workers inherit the controller's
        _created_cache = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax_xla_")


def pytest_unconfigure(config):
    if _created_cache:
        shutil.rmtree(_created_cache, ignore_errors=True)


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


@pytest.fixture(scope="session")
def word_bert(tmp_path_factory) -> str:
    """A tiny random BERT over the AV-Digits words (its vocab.txt is the word vocabulary), ported to an mmjax
    folder: a pretrained text tower for the AV-Digits experiments."""
    import torch
    import transformers

    from mmjax.data import av_digits_questions
    from mmjax.port.pretrained import save_ported

    root = tmp_path_factory.mktemp("word_bert")
    torch.manual_seed(0)
    vocab = av_digits_questions.make_tokenizer().vocab  # as a WordPiece vocab.txt: whole words, same specials
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.BertModel(config).save_pretrained(root / "hf")
    (root / "hf" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    save_ported(root / "hf", root / "ported")
    return str(root / "ported")
