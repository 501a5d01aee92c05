"""Sharding benchmark: the bench model (scripts/bench_common.py: ported BERT, ViT and AST encoders,
cross-attention fusion, the AV-Digits heads) trained on each device mesh, on this machine's devices
(8 fake CPU devices unless XLA_FLAGS says otherwise).

Per mesh: the train state's bytes per device (planned from the shardings) against the replicated layout,
XLA's per-device memory of the compiled step (arguments, outputs, temporaries), the median step time and
its ratio to the first mesh (`data:-1`, pure data parallelism, the peer) measured in the same run, and the
first step's loss (the same on every mesh). On fake CPU devices the step times show what the extra
collectives cost on one host's cores, not the speed of an accelerator interconnect.

  python scripts/bench_sharding.py --out bench_sharding.json
  python scripts/bench_sharding.py --quick      # tiny sizes, seconds (tests)
  python scripts/bench_sharding.py --meshes "data:-1;fsdp:-1" --width 512 --depth 6
"""

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_torch  # noqa: E402

MESHES = ("data:-1", "data:2,fsdp:-1", "fsdp:-1", "data:2,fsdp:-1,tensor:2")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_shape_flags(p, bc.Shapes())
    bc.add_switch_flags(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: runs in seconds")
    p.add_argument("--meshes", default=";".join(MESHES), help="parallel.mesh specs, separated by ';'")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 5; quick 2)")
    p.add_argument("--min-shard-size", type=int, default=2**14, help="parallel.min_shard_size (elements)")
    p.add_argument("--out", default="", help="write the JSON here")
    args = p.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    return args


def xla_memory(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled SPMD executable, as XLA plans them."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {name.removesuffix("_size_in_bytes"): int(getattr(stats, name, 0)) for name in fields}


def bench_mesh(spec: str, cfg, tasks, host_batch, args) -> dict:
    """Plan, initialise, compile and time the train step on one mesh."""
    import jax
    import numpy as np

    from mmjax import optim, parallel
    from mmjax.model import build_model, pretrained_params
    from mmjax.step import init_state, make_objective, make_train_step

    cfg.parallel.mesh = spec
    mesh = parallel.make_mesh(spec=spec)
    parallel.check_batch_size(len(host_batch["text"]), mesh, "--batch")
    model = build_model(cfg.model, tasks)
    optimizer = optim.make_optimizer(cfg.optim, total_steps=10_000)
    objective = make_objective(cfg)
    make_state = functools.partial(init_state, model, optimizer, objective, host_batch, cfg.seed)
    planned = jax.eval_shape(make_state)
    shardings = parallel.tree_shardings(planned, mesh, cfg)
    held, whole = parallel.bytes_per_device(planned, shardings)
    state = jax.jit(make_state, out_shardings=shardings)(pretrained_params(cfg.model))
    step = make_train_step(model, optimizer, objective, mesh, shardings)
    batch = parallel.to_global(host_batch, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state, "loss": []}

    def one_step():
        holder["state"], scalars = compiled(holder["state"], batch)
        holder["loss"].append(float(jax.block_until_ready(scalars)["loss"]))

    times = bc.median_times(one_step, args.warmup, args.repeats)
    return {
        "mesh": parallel.describe(mesh),
        "state_bytes_per_device": held,
        "state_bytes_replicated": whole,
        "state_saving": whole / held,
        "replicated_fraction": parallel.replicated_fraction(planned, shardings),
        "xla_bytes_per_device": xla_memory(compiled),
        "compile_s": compile_s,
        "step": times,
        "examples_per_s": len(host_batch["text"]) / times["median_s"],
        "first_loss": holder["loss"][0],
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(planned.params))),
    }


def main(argv: list[str]) -> dict:
    import jax

    args = parse_args(argv)
    s = bc.shapes_from_args(args, bc.Shapes())
    with tempfile.TemporaryDirectory(prefix="bench_sharding_") as folder:
        dirs = bench_torch.save_hf_encoders(s, folder)
        cfg, tasks, applied = bc.mmjax_config(s, dirs, bc.switches_from_args(args))
        cfg.parallel.min_shard_size = args.min_shard_size
        host_batch = bc.random_batch(s, tasks)
        runs = [bench_mesh(spec, cfg, tasks, host_batch, args) for spec in args.meshes.split(";")]
    peer = runs[0]
    for run in runs:
        run["step_time_vs_peer"] = run["step"]["median_s"] / peer["step"]["median_s"]
        run["state_bytes_vs_peer"] = run["state_bytes_per_device"] / peer["state_bytes_per_device"]
    result = {
        "benchmark": "sharding",
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "shapes": bc.dataclasses.asdict(s),
        "switches": applied,
        "peer": peer["mesh"],
        "meshes": runs,
        "versions": bc.versions(("jax", "jaxlib", "flax", "optax")),
    }
    bc.print_table(
        [
            [
                r["mesh"],
                r["state_bytes_per_device"] / 2**20,
                r["state_saving"],
                r["xla_bytes_per_device"].get("temp", 0) / 2**20,
                r["step"]["median_s"] * 1e3,
                r["step_time_vs_peer"],
                r["first_loss"],
            ]
            for r in runs
        ],
        ["mesh", "state MiB/device", "saving", "temp MiB/device", "step ms", "vs peer", "first loss"],
    )
    bc.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
