"""Training-step benchmark: mmjax vs the same model in PyTorch (eager and torch.compile), on this machine.

The model: BERT-style text (64 tokens), ViT on 224x224x3 images (16x16 patches), AST on 5 s spectrograms
(500 frames x 128 mel bins), cross-attention fusion and the AV-Digits task heads, with sizes that fit a CPU
(flags below). The encoders are random Hugging Face BertModel / ViTModel / ASTModel saved once; mmjax ports
them (`model.<modality>.init_from=hf:DIR`), the twin (scripts/torch_twin.py) uses them as they are and
copies mmjax's fusion and head params, so both start from identical weights (the JSON reports the loss
difference). Each framework runs in its own process (clean peak-memory and thread-pool numbers).
With --experiment, the model is an experiment config's own (scripts/bench_experiment.py), every weight
copied from mmjax into its twin, on a random batch shaped as its data set's.

Reported: median step time over repeats (warm-up excluded), examples/s, mmjax / peer speed ratios, model
FLOPs per step (XLA cost analysis of the mmjax step, cross-checked by a formula and by torch's
FlopCounterMode), achieved FLOP/s and MFU against the best fp32 matmul (jax or torch) measured in the same
run, compile times and peak memory.

  python scripts/bench_train.py --out bench_train.json            # full size (minutes)
  python scripts/bench_train.py --quick                             # tiny, no torch.compile (tests)
  python scripts/bench_train.py --scan --remat dots --dtype bfloat16 --attention fused   # mmjax switches
  python scripts/bench_train.py --profile runs/bench/trace   # + where each framework's step time goes
  python scripts/bench_train.py --experiment av_digits --out bench_av_digits.json   # the default experiment
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import bench_experiment  # noqa: E402
import bench_profile  # noqa: E402
import bench_torch  # noqa: E402

DEFAULTS = bc.Shapes()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_shape_flags(p, DEFAULTS)
    bc.add_switch_flags(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: runs in seconds")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 10; quick 2)")
    p.add_argument(
        "--matmul", type=int, default=None, help="matmul size of the peak (default 2048; quick 256)"
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile (auto: on unless --quick)",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    p.add_argument(
        "--torch-device", default="auto", help="the twin's device: auto (cuda if torch has one) | cpu | cuda"
    )
    p.add_argument(
        "--profile",
        default="",
        help="also trace --repeats mmjax steps with jax.profiler into this folder and "
        "report where the time goes (op kinds, model parts, costliest ops)",
    )
    p.add_argument(
        "--experiment",
        default="",
        help="CONFIG[:ARGS]: time this experiment config's own model (e.g. av_digits, av_digits:text=minilm, "
        "experiments/folder.py:dir=D,labels=L) against its PyTorch twin (scripts/torch_twin.py) instead of "
        "the bench model; its batch size unless --batch",
    )
    p.add_argument("--out", default="", help="write the JSON here")
    p.add_argument("--phase", choices=("jax", "torch"), help=argparse.SUPPRESS)  # internal: one framework
    p.add_argument("--hf-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    args.matmul = args.matmul or (256 if args.quick else 2048)
    args.torch_compile = args.compile == "on" or (args.compile == "auto" and not args.quick)
    return args


def hf_dirs(folder: str) -> dict[str, str]:
    return {m: str(Path(folder) / m) for m in bc.MODALITIES}


# ---------------------------------------------------------------- one process per framework


def jax_phase(args: argparse.Namespace, s: bc.Shapes) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mmjax import parallel
    from mmjax.host import release_freed_memory
    from mmjax.step import task_losses

    stages = {}
    bc.mark_rss(stages, "imports")
    if args.experiment:
        switches = bc.switches_from_args(args)
        model, objective, state, step, host_batch, applied, spec = bench_experiment.jax_side(args, switches)
    else:
        cfg, tasks, applied = bc.mmjax_config(s, hf_dirs(args.hf_dir), bc.switches_from_args(args))
        host_batch = bc.random_batch(s, tasks)
        model, _, objective, state, step = bc.build_mmjax(cfg, tasks, host_batch)
        spec = bench_experiment.step_spec(cfg, objective, tasks)
    bench_experiment.write_phase_files(Path(args.hf_dir), spec, host_batch, state)
    mesh = parallel.make_mesh(jax.devices()[:1])
    batch = jax.device_put(host_batch, parallel.batch_sharding(mesh))

    def loss(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        return jnp.sum(jnp.asarray(objective.weights) * task_losses(outputs, batch, objective))

    initial_loss = float(jax.jit(loss)(state.variables(), batch))
    release_freed_memory()  # as mmjax.train does after building the state
    bc.mark_rss(stages, "state")

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    costs = bc.xla_costs(compiled)
    release_freed_memory()  # as mmjax.train does after its first (compiling) step
    bc.mark_rss(stages, "compiled")
    holder = {"state": state}

    def one_step():
        holder["state"], scalars = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], scalars))

    times = bc.median_times(one_step, args.warmup, args.repeats)
    bc.mark_rss(stages, "steps")
    profile = {}
    if args.profile:
        with jax.profiler.trace(args.profile):
            for _ in range(args.repeats):
                one_step()
        profile = bench_profile.profile_summary(args.profile, compiled.as_text(), args.repeats)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    return {
        "initial_loss": initial_loss,
        "batch": int(batch["present"][next(iter(batch["present"]))].shape[0]),
        "params": params,
        "switches": applied,
        "compile_s": compile_s,
        "step": times,
        **costs,
        "rss": {"stages": stages, "peak": stages["steps"]["peak"]},
        "matmul_peak_flops": bc.jax_matmul_peak(args.matmul, 5, applied.get("dtype", "float32")),
        "devices": [str(d) for d in jax.devices()[:1]],
        **({"profile": profile} if profile else {}),
    }


def torch_phase(args: argparse.Namespace, s: bc.Shapes) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.torch_threads or os.cpu_count())
    stages = {}
    bc.mark_rss(stages, "imports")

    def bench_twin(spec: dict):
        tasks = {t: task["outputs"] for t, task in spec["tasks"].items()}
        return bench_torch.bench_twin(bench_torch.load_hf_encoders(hf_dirs(args.hf_dir)), s, tasks)

    make_model = None if args.experiment else bench_twin
    model, batch, loss_fn, optimizer, clip_norm = bench_experiment.torch_side(Path(args.hf_dir), make_model)
    device = "cuda" if args.torch_device == "auto" and torch.cuda.is_available() else args.torch_device
    device = "cpu" if device == "auto" else device
    model.to(device)  # in place: the optimizer keeps its parameters
    batch = bench_torch.to_device(batch, device)
    # mmjax's --dtype bfloat16 computes in bfloat16 with float32 params: torch's autocast does the same
    dtype = bc.switches_from_args(args).get("dtype", "float32")
    autocast = torch.autocast(device.split(":")[0], torch.bfloat16, enabled=dtype == "bfloat16")
    model.eval()
    with torch.no_grad():
        initial_loss = float(loss_fn(model(batch), batch))  # float32, as mmjax's initial loss
    model.train()

    def one_step(forward):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(forward(batch), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()
        return loss

    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model)
    bc.mark_rss(stages, "state")
    out = {
        "initial_loss": initial_loss,
        "params": sum(p.numel() for p in model.parameters()),
        "flop_counter_flops": float(counter.get_total_flops()),
        "threads": torch.get_num_threads(),
        "device": str(torch.cuda.get_device_name()) if device != "cpu" else "cpu",
        "dtype": dtype,
        "eager": {"step": bc.median_times(lambda: one_step(model), args.warmup, args.repeats)},
    }
    bc.mark_rss(stages, "steps")
    out["eager"]["rss_peak"] = stages["steps"]["peak"]
    if args.profile:
        out["eager"]["profile"] = bench_profile.torch_profile_summary(lambda: one_step(model), args.repeats)
    out["rss"] = {"stages": stages}
    if args.torch_compile:
        try:
            compiled = torch.compile(model)
            start = time.perf_counter()
            one_step(compiled)
            compile_s = time.perf_counter() - start
            out["compile"] = {"compile_s": compile_s}
            out["compile"]["step"] = bc.median_times(lambda: one_step(compiled), args.warmup, args.repeats)
            bc.mark_rss(stages, "compiled_steps")
            out["compile"]["rss_peak"] = stages["compiled_steps"]["peak"]
        except Exception as e:  # noqa: BLE001 - a failed compile is a result, not a crash
            out["compile"] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
    else:
        out["compile"] = {"skipped": "--compile off (the default with --quick)"}
    out["matmul_peak_flops"] = bc.torch_matmul_peak(args.matmul, 5, device, dtype)
    return out


# ---------------------------------------------------------------- report


def report(args: argparse.Namespace, s: bc.Shapes, jx: dict, pt: dict, save_s: float) -> dict:
    batch = jx.get("batch", s.batch)
    shapes = vars(s) | {"tokens": s.tokens()}
    if args.experiment:
        shapes = {"experiment": args.experiment, "batch": batch}
    result = {
        "benchmark": "train_step",
        "machine": bc.versions(),
        "shapes": shapes,
        "settings": {
            "warmup": args.warmup,
            "repeats": args.repeats,
            "matmul": args.matmul,
            "quick": args.quick,
        },
        "hf_save_s": save_s,
        "mmjax": jx,
        "torch": pt,
    }
    if "error" in jx or "error" in pt:
        return result
    peak = max(jx["matmul_peak_flops"], pt["matmul_peak_flops"])
    # Model FLOPs: XLA's cost analysis counts a while loop's body once (with scan it misses depth - 1
    # layers) and counts remat's recomputation, so those switches use the formula (the bench model's only).
    formula = None if args.experiment else bc.analytic_flops(s, bc.mmjax_config(s, None)[1])
    switches = jx["switches"]
    scan_or_remat = switches.get("scan") or switches.get("remat")
    source = "formula" if scan_or_remat and formula else "xla_cost_analysis"
    flops = formula if source == "formula" else jx["xla_flops"]
    result["flops"] = {
        "xla_cost_analysis": jx["xla_flops"],
        "formula": formula,
        "torch_flop_counter": pt["flop_counter_flops"],
        "used_for_mfu": source,
        "matmul_peak_flops": peak,
        "matmul_peak_source": "jax" if jx["matmul_peak_flops"] >= pt["matmul_peak_flops"] else "torch",
    }
    result["twin_loss_abs_diff"] = abs(jx["initial_loss"] - pt["initial_loss"])
    rows = {"mmjax": jx["step"]["median_s"], "torch_eager": pt["eager"]["step"]["median_s"]}
    if "step" in pt.get("compile", {}):
        rows["torch_compile"] = pt["compile"]["step"]["median_s"]
    summary = {}
    for name, seconds in rows.items():
        summary[name] = {
            "step_s": seconds,
            "examples_per_s": batch / seconds,
            "achieved_flops": flops / seconds,
            "mfu": flops / seconds / peak,
        }
    summary["mmjax"]["compile_s"] = jx["compile_s"]
    summary["mmjax"]["peak_memory_bytes"] = jx["memory"]["peak_estimate"] if "memory" in jx else None
    summary["mmjax"]["peak_rss_bytes"] = jx["rss"]["peak"]
    summary["torch_eager"]["peak_rss_bytes"] = pt["eager"]["rss_peak"]
    if "torch_compile" in summary:
        summary["torch_compile"]["compile_s"] = pt["compile"]["compile_s"]
        summary["torch_compile"]["peak_rss_bytes"] = pt["compile"]["rss_peak"]
    for name in rows:
        if name != "mmjax":
            summary["mmjax"][f"speedup_vs_{name}"] = rows[name] / rows["mmjax"]
    result["summary"] = summary
    result["memory"] = memory_account(jx, pt)
    result["memory_note"] = (
        "mmjax peak_memory_bytes: XLA memory_analysis argument + temp bytes of the step; peak_rss_bytes: "
        "getrusage max RSS of each framework's own process (torch_compile's includes the eager run)"
    )
    return result


def memory_account(jx: dict, pt: dict) -> dict:
    """Where each process's memory goes, in MiB: its RSS (current and peak) after each stage (imports; model
    and state built; mmjax: step compiled; steps run), what each stage added to the peak, and XLA's own
    plan of the step (arguments, outputs, temporaries, generated code)."""
    mib = 2**-20
    account = {}
    for name, stages in (("mmjax", jx["rss"]["stages"]), ("torch", pt["rss"]["stages"])):
        rows, previous = {}, 0
        for stage, rss in stages.items():
            rows[stage] = {
                "current_mib": rss["current"] * mib,
                "peak_mib": rss["peak"] * mib,
                "peak_growth_mib": (rss["peak"] - previous) * mib,
            }
            previous = rss["peak"]
        account[name] = rows
    if "memory" in jx:
        account["mmjax_xla_step_mib"] = {key: value * mib for key, value in jx["memory"].items()}
    return account


def print_report(result: dict) -> None:
    if "summary" not in result:
        print(json.dumps({k: result[k] for k in ("mmjax", "torch")}, indent=1))
        return
    f = result["flops"]
    print(
        f"model FLOPs/step: XLA {f['xla_cost_analysis']:.4g}, formula {f['formula'] or float('nan'):.4g}, "
        f"torch counter {f['torch_flop_counter']:.4g}; matmul peak {f['matmul_peak_flops']:.4g} FLOP/s "
        f"({f['matmul_peak_source']}); twin loss |diff| {result['twin_loss_abs_diff']:.2g}"
    )
    rows = []
    for name, r in result["summary"].items():
        rows.append(
            [
                name,
                r["step_s"],
                r["examples_per_s"],
                r["mfu"],
                r.get("compile_s", 0.0),
                r["peak_rss_bytes"] / 2**20,
            ]
        )
    bc.print_table(rows, ["", "step s", "examples/s", "MFU", "compile s", "peak RSS MiB"])
    memory = result["memory"]
    stages = list(dict.fromkeys([*memory["mmjax"], *memory["torch"]]))
    cells = [
        [stage]
        + [
            memory[name][stage][key] if stage in memory[name] else "-"
            for name in ("mmjax", "torch")
            for key in ("current_mib", "peak_growth_mib")
        ]
        for stage in stages
    ]
    bc.print_table(cells, ["after", "mmjax RSS MiB", "+peak", "torch RSS MiB", "+peak"])
    sm = result["summary"]["mmjax"]
    ratios = ", ".join(
        f"{k.removeprefix('speedup_vs_')} {v:.2f}x" for k, v in sm.items() if k.startswith("speedup")
    )
    print(f"mmjax speed / peer: {ratios}")
    for name, prof in (
        ("mmjax", result["mmjax"].get("profile")),
        ("torch eager", result["torch"]["eager"].get("profile")),
    ):
        if prof:
            kinds = ", ".join(f"{k} {v:.0f}" for k, v in prof["by_kind_ms"].items())
            print(f"{name} busy ms/step {prof['busy_ms_per_step']:.0f}: {kinds}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    s = bc.shapes_from_args(args, DEFAULTS)
    if args.phase:
        out = jax_phase(args, s) if args.phase == "jax" else torch_phase(args, s)
        print(json.dumps(out))
        return out
    jx, pt, save_s = bc.run_phases(__file__, argv, s, save_encoders=not args.experiment)
    result = report(args, s, jx, pt, save_s)
    print_report(result)
    bc.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
