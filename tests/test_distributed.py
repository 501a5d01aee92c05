"""Multi-process training on the JAX distributed runtime: 2 CPU processes on localhost (gloo collectives),
4 devices each, against this process's 8 devices on the same global batches (data.shards=2)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mmjax import train
from tests.conftest import COLLECTIVE_TIMEOUTS
from tests.test_train import ROOT, smoke_config

# The train step of this process's run is the NaN-batch test's (tests/test_train.py): compiled once per run.
OVERRIDES = {
    "train.log_every": 1,
    "train.eval_every": 3,
    "train.checkpoint_every": 3,
    "data.shards": 2,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _records(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# On a sharded mesh each process holds some parameters' shards only; data:2 puts one process on each row.
@pytest.mark.parametrize("mesh", ["data:-1", pytest.param("data:2,fsdp:2,tensor:2", marks=pytest.mark.slow)])
def test_two_processes_train_like_one_process_on_the_same_global_batches(av_digits_dir, tmp_path, mesh):
    overrides = OVERRIDES | {"parallel.mesh": mesh}
    single = tmp_path / "single"
    train.main(smoke_config(av_digits_dir, **overrides), single)

    shared = tmp_path / "two_processes"  # one workdir: checkpoints are written cooperatively
    command = [sys.executable, "-m", "mmjax.train", "--config", "experiments/av_digits.py:smoke"]
    command += ["--workdir", str(shared), f"--config.data.tfds_dir={av_digits_dir}"]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    command += ["--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4" + COLLECTIVE_TIMEOUTS)
    processes = [
        subprocess.Popen(
            [*command, "--process-id", str(p)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-3000:]
    assert b"8 devices" in outputs[0][0]

    want, got = _records(single), _records(shared)  # only process 0 writes metrics
    losses = [{r["step"]: r["loss"] for r in records if "loss" in r} for records in (want, got)]
    assert sorted(losses[1]) == list(range(1, 7))
    # Equal up to the order of float sums (gloo's all-reduce against the in-process one).
    np.testing.assert_allclose(
        [losses[1][s] for s in range(1, 7)], [losses[0][s] for s in range(1, 7)], rtol=1e-5
    )
    validation = [{r["step"]: r for r in records if "val/answer/accuracy" in r} for records in (want, got)]
    assert sorted(validation[1]) == [3, 6]
    for step in (3, 6):
        for key, value in validation[0][step].items():
            if key.startswith("val/"):
                assert validation[1][step][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (step, key)
    # Each process saved its own data-iterator position next to the shared train state.
    data = sorted(p.name for p in (shared / "checkpoints" / "6" / "data").iterdir() if p.suffix == ".json")
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]


def test_the_command_line_reads_the_distributed_settings_from_flags_or_environment(monkeypatch):
    argv = ["--config", "experiments/av_digits.py:smoke", "--workdir", "w"]
    assert train.parse_command_line(argv)[2] == ("", 1, 0)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert train.parse_command_line(argv)[2] == ("10.0.0.1:1234", 4, 3)
    flags = ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"]
    assert train.parse_command_line([*argv, *flags])[2] == ("h:1", 2, 1)
