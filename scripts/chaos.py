"""Fault injection: trains the smoke AV-Digits experiment while killing it and corrupting its raw data, then
checks that nothing was lost against an undisturbed run of the same config.

Faults: bad raw files added to a copy of the raw data (corrupt, empty, silent and 44.1 kHz WAVs, malformed
MNIST rows; the build must skip and list them), SIGKILL at random moments (some while a checkpoint is being
written), and SIGTERM. After each fault the same command is rerun until the run finishes. Examples lost =
training examples whose step is missing or whose loss differs from the undisturbed run (must be 0), and the
final parameters must be bit-identical.

  python scripts/chaos.py [--kills 4] [--steps 60] [--seed 0] [--out chaos.json]
"""

import argparse
import gzip
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import soundfile

from mmjax.data.av_digits import BAD_INPUTS
from mmjax.data.av_digits_sources import resolve_data_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {"train.log_every": 1, "train.checkpoint_every": 5, "train.eval_every": 1000}


def corrupt_raw_copy(raw: pathlib.Path, into: pathlib.Path) -> list[str]:
    """Copies the raw data and adds bad files; returns what was corrupted."""
    shutil.copytree(raw / "fsdd", into / "fsdd")
    shutil.copytree(raw / "mnist5k", into / "mnist5k")
    recordings = into / "fsdd" / "recordings"
    (recordings / "6_yweweler_60.wav").write_bytes(b"RIFF\x00\x00not a wave at all" * 8)
    (recordings / "7_yweweler_61.wav").write_bytes(b"")
    soundfile.write(recordings / "8_theo_60.wav", np.zeros(4000, np.float32), 8000)
    soundfile.write(recordings / "9_theo_61.wav", np.full(4000, 0.1, np.float32), 44100)
    mnist = into / "mnist5k" / "mnist_5k.csv.gz"
    with gzip.open(mnist, "rt") as f:
        lines = f.read().splitlines()
    lines[2] = ",".join(["nan"] + lines[2].split(",")[1:])
    lines[3] = ",".join(lines[3].split(",")[:100])
    with gzip.open(mnist, "wt") as f:
        f.write("\n".join(lines) + "\n")
    names = ["6_yweweler_60.wav", "7_yweweler_61.wav", "8_theo_60.wav", "9_theo_61.wav"]
    return [str(recordings / n) for n in names] + [f"{mnist} row 3", f"{mnist} row 4"]


def command(workdir: pathlib.Path, raw: pathlib.Path, tfds: pathlib.Path, steps: int) -> list[str]:
    cmd = [sys.executable, "-m", "mmjax.train", "--config", "experiments/av_digits.py:smoke"]
    cmd += ["--workdir", str(workdir), f"--config.data.data_dir={raw}", f"--config.data.tfds_dir={tfds}"]
    return cmd + [f"--config.{k}={v}" for k, v in {**OVERRIDES, "train.steps": steps}.items()]


def logged_steps(workdir: pathlib.Path) -> int:
    """Distinct training steps logged so far (a rerun logs again the steps after its checkpoint)."""
    return len(losses(workdir)) if (workdir / "metrics.jsonl").is_file() else 0


def saving(workdir: pathlib.Path) -> bool:
    return any((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def run_with_fault(cmd, workdir, fault: str, rng: random.Random, steps: int, env) -> dict:
    """Starts the run; injects `fault` (sigkill | sigkill_saving | sigterm | none) mid-run; returns what
    happened."""
    start_steps = logged_steps(workdir)
    target = rng.randint(start_steps + 2, max(start_steps + 3, steps - 3))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    injected = None
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline and fault != "none":
        ready = logged_steps(workdir) >= target
        if ready and (fault != "sigkill_saving" or saving(workdir)):
            proc.send_signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
            injected = {"fault": fault, "at_logged_step": logged_steps(workdir), "saving": saving(workdir)}
            break
        if ready and fault == "sigkill_saving" and logged_steps(workdir) > target + 12:
            proc.send_signal(signal.SIGKILL)  # no save caught in the act: a plain kill
            injected = {"fault": "sigkill", "at_logged_step": logged_steps(workdir), "saving": False}
            break
        time.sleep(0.005)
    out, _ = proc.communicate(timeout=900)
    resumed = "resumed from the checkpoint of step" in out
    return {
        "injected": injected,
        "returncode": proc.returncode,
        "resumed": resumed,
        "output_tail": out[-600:],
    }


def final_params(workdir: pathlib.Path) -> dict:
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))[
        "state"
    ]
    return {"step": manager.latest_step(), "params": state["params"]}


def losses(workdir: pathlib.Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]  # a rerun step overwrites the killed attempt's
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs (every other one waits for a save)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    root = pathlib.Path(tempfile.mkdtemp(prefix="mmjax_chaos_"))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"))
    raw = root / "raw"
    corrupted = corrupt_raw_copy(resolve_data_dir(), raw)
    tfds = root / "tfds"
    reference, chaotic = root / "reference", root / "chaotic"

    undisturbed = run_with_fault(
        command(reference, raw, tfds, args.steps), reference, "none", rng, args.steps, env
    )
    if undisturbed["returncode"] != 0:
        raise SystemExit(f"the undisturbed run failed:\n{undisturbed['output_tail']}")
    listed = json.loads(next(tfds.rglob(BAD_INPUTS)).read_text())

    faults = ["sigterm"] + ["sigkill_saving" if i % 2 else "sigkill" for i in range(args.kills)]
    cmd = command(chaotic, raw, tfds, args.steps)
    events = [run_with_fault(cmd, chaotic, fault, rng, args.steps, env) for fault in faults]
    final = run_with_fault(cmd, chaotic, "none", rng, args.steps, env)
    reruns = [*events[1:], final]  # each started after a fault and had to resume
    want, got = losses(reference), losses(chaotic)
    lost_steps = [s for s in want if got.get(s) != want[s]]
    a, b = final_params(reference), final_params(chaotic)
    identical = a["step"] == b["step"] and all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True)
    )
    batch = 16  # the smoke config's global batch
    summary = {
        "faults_injected": [e["injected"] for e in events]
        + [{"fault": "corrupt raw file", "what": c} for c in corrupted],
        "bad_inputs_skipped_and_listed": sorted(listed),
        "all_corruptions_listed": sorted(listed) == sorted(corrupted),
        "runs_recovered": sum(r["resumed"] for r in reruns),
        "reruns": len(reruns),
        "final_run_returncode": final["returncode"],
        "examples_lost": len(lost_steps) * batch,
        "final_params_bit_identical": identical,
        "steps": args.steps,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
