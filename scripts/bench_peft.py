"""Fine-tuning benchmark: training examples/s of LoRA and of a frozen text tower against full fine-tuning.

The models are experiments/peft.py's variants (AV-Digits with the pretrained all-MiniLM-L6-v2 text tower; the
image and audio encoders, fusion and heads train from scratch), one jitted training step each on the
experiment's global batch, on one device. The variants are timed in turns (each repeat steps every variant
once) in one process, so load on the machine hits them alike. The JSON gives each variant's trainable and
total parameters, compiled step FLOPs, median step time, examples/s and speed ratio to full fine-tuning (the
peer).

  python scripts/bench_peft.py --out bench_peft.json [--repeats 20]
  python scripts/bench_peft.py --quick      # the smoke sizes (still MiniLM), few repeats
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

from mmjax import optim, parallel  # noqa: E402
from mmjax.config import load_config, load_python  # noqa: E402
from mmjax.data import av_digits  # noqa: E402
from mmjax.model import dummy_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def variant_configs(quick: bool) -> dict:
    """{variant: experiment config} of experiments/peft.py (the smoke config with --quick)."""
    variants = load_python(str(ROOT / "experiments/peft.py"), "sweep definition", "get_sweep").VARIANTS
    base = f"{ROOT / 'experiments/av_digits.py'}:text=minilm" + (",smoke" if quick else "")
    return {
        name: load_config(base, [f"{key}={value}" for key, value in overrides.items()])
        for name, overrides in variants.items()
    }


def real_shaped_batch(config, tasks: dict, seed: int = 0) -> dict:
    """The experiment's global batch shapes with random tokens, images, spectrograms and labels."""
    rng = np.random.default_rng(seed)
    batch = jax.tree.map(np.asarray, dummy_batch(config.model, tasks, config.data.batch_size))
    batch["text"] = rng.integers(1, 1000, batch["text"].shape).astype(np.int32)
    batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
    batch["audio"] = rng.normal(size=batch["audio"].shape).astype(np.float32)
    for task, n in tasks.items():
        batch[f"labels/{task}"] = rng.integers(0, n, batch[f"labels/{task}"].shape).astype(np.int32)
    return batch


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes and 3 repeats")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after compiling")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    mesh = parallel.make_mesh(jax.devices()[:1])
    steps, states, batches, rows = {}, {}, {}, {}
    for name, config in variant_configs(args.quick).items():
        tasks = av_digits.task_classes(config.tasks)
        batch = real_shaped_batch(config, tasks)
        start = time.perf_counter()
        _, _, _, state, step = bc.build_mmjax(config, tasks, batch, mesh)
        batches[name] = parallel.to_global(batch, mesh)
        step = step.lower(state, batches[name]).compile()  # XLA's cost after dead-code elimination
        flops = step.cost_analysis()["flops"]
        state, scalars = step(state, batches[name])
        jax.block_until_ready(scalars)
        trainable, total = optim.trainable_count(config.optim, state.params)
        rows[name] = {
            "trainable_params": trainable,
            "total_params": total,
            "batch_size": config.data.batch_size,
            "step_gflop": flops / 1e9,
            "compile_and_first_step_s": time.perf_counter() - start,
        }
        steps[name], states[name] = step, state
    times = {name: [] for name in steps}
    for round_ in range(args.warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            states[name], scalars = step(states[name], batches[name])
            jax.block_until_ready(scalars)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    for name, row in rows.items():
        row |= bc.summary(times[name])
        row["examples_per_s"] = row["batch_size"] / row["median_s"]
    for row in rows.values():
        row["speed_vs_full"] = row["examples_per_s"] / rows["full"]["examples_per_s"]
    result = {"machine": bc.versions(("jax", "flax", "optax")), "repeats": repeats, "variants": rows}
    keys = ("trainable_params", "total_params", "step_gflop", "median_s", "examples_per_s", "speed_vs_full")
    bc.print_table(
        [[name, *(row[k] for k in keys)] for name, row in rows.items()],
        ["variant", "trainable", "total", "GFLOP/step", "step s", "examples/s", "vs full"],
    )
    bc.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
