"""Inference benchmark of the AV-Digits model: batch-1 latency (p50/p99) and batch-32 throughput, mmjax vs
a PyTorch twin (eager and torch.compile), on this machine.

Two mmjax models are timed:
  av_digits  the default experiment (experiments/av_digits.py: scratch encoders, cross-attention fusion,
             size small), randomly initialised or restored from a training workdir (--workdir);
  twin       the same sizes and input shapes built from Hugging Face parts (BERT-style post-LN text,
             ViT with 7x7 patches, AST with 16x16 patches strided 8 in time), ported by mmjax.port; its
             PyTorch twin (scripts/bench_common.py) has identical weights, so it is the like-for-like pair.
The scratch model has no exact HF counterpart (pre-LN text tower, 8x16 audio patches); the twin differs only
there, and the JSON reports both models' FLOPs. Each framework runs in its own process.

  python scripts/bench_infer.py --out bench_infer.json [--workdir runs/av_cross]
  python scripts/bench_infer.py --quick
With --workdir, also the batch-1 latency (p50/p99) of that run's model through mmjax.predict.Predictor on a
real recording and digit: the whole call (decoding, resampling, features, tokenising) and the model alone.
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
import bench_torch  # noqa: E402

# The default AV-Digits model's sizes and shapes (experiments/av_digits.py, size small).
DEFAULTS = bc.Shapes(
    batch=32,
    text_len=16,
    vocab=0,  # 0: the AV-Digits word tokenizer's vocabulary
    max_positions=16,
    image_size=28,
    channels=1,
    image_patch=7,
    frames=96,
    mels=64,
    audio_patch=16,
    time_stride=8,
    freq_stride=16,
    width=128,
    depth=2,
    heads=4,
    mlp=256,
    fusion_depth=2,
    fusion_width=128,
)
QUICK = dict(width=32, depth=1, heads=2, mlp=64, fusion_depth=1, fusion_width=32)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bc.add_shape_flags(p, DEFAULTS)
    bc.add_switch_flags(p)
    p.add_argument("--quick", action="store_true", help="tiny widths and few calls: runs in seconds")
    p.add_argument(
        "--workdir", default="", help="restore the av_digits model's params from this training run"
    )
    p.add_argument("--calls", type=int, default=None, help="timed batch-1 calls (default 200; quick 5)")
    p.add_argument("--repeats", type=int, default=None, help="timed batch-32 calls (default 20; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5; quick 1)")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile (auto: on unless --quick)",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    p.add_argument("--out", default="", help="write the JSON here")
    p.add_argument("--phase", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.calls = args.calls or (5 if args.quick else 200)
    args.repeats = args.repeats or (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.torch_compile = args.compile == "on" or (args.compile == "auto" and not args.quick)
    return args


def shapes(args: argparse.Namespace) -> bc.Shapes:
    from mmjax.data import av_digits_questions

    s = bc.shapes_from_args(argparse.Namespace(**(vars(args) | {"quick": False})), DEFAULTS)
    if args.quick:
        s = bc.dataclasses.replace(s, **{k: v for k, v in QUICK.items() if getattr(args, k) is None})
    if not s.vocab:
        s = bc.dataclasses.replace(s, vocab=av_digits_questions.make_tokenizer().vocab_size)
    return s


def hf_dirs(folder: str) -> dict[str, str]:
    return {m: str(Path(folder) / m) for m in bc.MODALITIES}


def latency_and_throughput(call, batches: dict, args: argparse.Namespace, batch_size: int) -> dict:
    """Batch-1 latency over args.calls calls and batch-`batch_size` examples/s (median call)."""
    one = bc.median_times(lambda: call(batches[1]), args.warmup, args.calls)
    many = bc.median_times(lambda: call(batches[batch_size]), args.warmup, args.repeats)
    return {
        "batch1_p50_ms": 1e3 * one["median_s"],
        "batch1_p99_ms": 1e3 * one["p99_s"],
        f"batch{batch_size}_call_s": many["median_s"],
        f"batch{batch_size}_examples_per_s": batch_size / many["median_s"],
    }


# ---------------------------------------------------------------- one process per framework


def jax_phase(args: argparse.Namespace, s: bc.Shapes) -> dict:
    import jax
    import numpy as np

    from mmjax.model import build_model

    switches = bc.switches_from_args(args)
    out = {"devices": [str(d) for d in jax.devices()[:1]]}
    # The HF-parts twin (build_model registers the "bench" size, so build it after the scratch model's cfg).
    scratch_cfg, data, objective, applied = scratch_config(args, switches)
    tasks = data.head_sizes()
    scratch_model = build_model(scratch_cfg.model, tasks, data.streams, data.text_vocab_size)
    scratch_vars = scratch_variables(args, scratch_cfg, scratch_model, tasks)
    cfg, tasks, _ = bc.mmjax_config(s, hf_dirs(args.hf_dir), switches)
    host = {b: bc.random_batch(s, tasks, b) for b in (1, s.batch)}
    _, _, _, state, _ = bc.build_mmjax(cfg, tasks, host[1])
    np.savez(Path(args.hf_dir) / "mmjax_params.npz", **bc.flat_params(state.params))
    out["switches"] = applied
    # batches shaped as the data set's (the cached text tower's features included)
    scratch_host = {b: bench_experiment.random_batch(scratch_cfg, data, objective, b) for b in (1, s.batch)}
    for name, model, params, batches in (
        ("twin", build_model(cfg.model, tasks), {"params": state.params}, host),
        ("av_digits", scratch_model, scratch_vars, scratch_host),
    ):
        apply = jax.jit(lambda p, b, model=model: model.apply(p, b, train=False)[0])
        batches = {b: jax.device_put(x) for b, x in batches.items()}
        start = time.perf_counter()
        compiled = {b: apply.lower(params, x).compile() for b, x in batches.items()}
        compile_s = time.perf_counter() - start
        logits = compiled[1](params, batches[1])
        out[name] = {
            "compile_s": compile_s,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["params"])),
            f"xla_flops_batch{s.batch}": bc.xla_costs(compiled[s.batch])["xla_flops"],
            **latency_and_throughput(
                lambda x, c=compiled, p=params: jax.block_until_ready(c[x["text"].shape[0]](p, x)),
                batches,
                args,
                s.batch,
            ),
        }
        if name == "twin":
            out[name]["logits_batch1"] = {t: np.asarray(v).tolist() for t, v in logits.items()}
    if args.workdir:
        out["predictor"] = predictor_latency(args)
    return out


def scratch_config(args: argparse.Namespace, switches: dict):
    """(the default AV-Digits config (or the workdir's), its data set, its objective, the switch flags that
    the config has)."""
    import ml_collections

    from mmjax.config import load_config
    from mmjax.data import datasets
    from mmjax.step import make_objective

    if args.workdir:
        cfg = ml_collections.ConfigDict(json.loads((Path(args.workdir) / "config.json").read_text()))
    else:
        cfg = load_config(bc.EXPERIMENT)
        if args.quick:
            cfg.model.size = "tiny"
    applied = bc.apply_switches(cfg.model, switches)
    data = datasets.from_config(cfg)
    return cfg, data, make_objective(cfg, data), applied


def scratch_variables(args: argparse.Namespace, cfg, model, tasks: dict) -> dict:
    """The AV-Digits model's variables (BatchNorm statistics too): the workdir's best, else random."""
    import jax

    from mmjax import evaluate
    from mmjax.model import dummy_batch

    if args.workdir:
        return evaluate.restore_run(args.workdir).variables
    return model.init({"params": jax.random.PRNGKey(0)}, dummy_batch(cfg.model, tasks), train=False)


def predictor_latency(args: argparse.Namespace) -> dict:
    """Batch-1 latency of the workdir's model through mmjax.predict.Predictor on a real FSDD recording and
    MNIST digit: the whole call (decode, resample, features, tokenise, model) and the model call alone."""
    import tempfile

    import jax
    import numpy as np
    import PIL.Image

    from mmjax.data import av_digits_sources
    from mmjax.predict import Predictor, one_batch

    data = av_digits_sources.resolve_data_dir()
    images, labels, _ = av_digits_sources.read_mnist(data / "mnist5k" / "mnist_5k.csv.gz")
    image = Path(tempfile.mkdtemp()) / "seven.png"
    PIL.Image.fromarray(images[int(np.flatnonzero(labels == 7)[0])]).save(image)
    inputs = dict(
        image=image,
        audio=data / "fsdd" / "recordings" / "3_george_0.wav",
        text="what is the sum of the written and spoken digits?",
    )
    start = time.perf_counter()
    predictor = Predictor.from_workdir(args.workdir)
    restore_and_compile_s = time.perf_counter() - start
    batch = one_batch(predictor.run, inputs)
    whole = bc.median_times(lambda: predictor(**inputs), args.warmup, args.calls)
    model = bc.median_times(
        lambda: jax.block_until_ready(predictor.compiled(predictor.run.variables, batch)),
        args.warmup,
        args.calls,
    )
    main_task = predictor.run.config.train.best_metric.split("/")[0]
    return {
        "restore_and_compile_s": restore_and_compile_s,
        "call_p50_ms": 1e3 * whole["median_s"],
        "call_p99_ms": 1e3 * whole["p99_s"],
        "model_p50_ms": 1e3 * model["median_s"],
        "model_p99_ms": 1e3 * model["p99_s"],
        "prediction": predictor(**inputs)["tasks"][main_task]["top"][0][0],
    }


def torch_phase(args: argparse.Namespace, s: bc.Shapes) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.torch_threads or os.cpu_count())
    cfg, tasks, _ = bc.mmjax_config(s, hf_dirs(args.hf_dir))
    import torch_twin

    model = bench_torch.bench_twin(bench_torch.load_hf_encoders(hf_dirs(args.hf_dir)), s, tasks).eval()
    torch_twin.load_flax(model, dict(np.load(Path(args.hf_dir) / "mmjax_params.npz")))
    batches = {b: bench_torch.torch_batch(bc.random_batch(s, tasks, b)) for b in (1, s.batch)}
    out = {"threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters())}
    with torch.inference_mode():
        out["logits_batch1"] = {t: v.numpy().tolist() for t, v in model(batches[1]).items()}
        counter = FlopCounterMode(display=False)
        with counter:
            model(batches[s.batch])
        out[f"flop_counter_flops_batch{s.batch}"] = float(counter.get_total_flops())
        out["eager"] = latency_and_throughput(model, batches, args, s.batch)
        if args.torch_compile:
            try:
                compiled = torch.compile(model)
                start = time.perf_counter()
                for x in batches.values():
                    compiled(x)
                out["compile"] = {"compile_s": time.perf_counter() - start}
                out["compile"] |= latency_and_throughput(compiled, batches, args, s.batch)
            except Exception as e:  # noqa: BLE001 - a failed compile is a result, not a crash
                out["compile"] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
        else:
            out["compile"] = {"skipped": "--compile off (the default with --quick)"}
    return out


# ---------------------------------------------------------------- report


def report(args: argparse.Namespace, s: bc.Shapes, jx: dict, pt: dict) -> dict:
    import numpy as np

    result = {
        "benchmark": "inference",
        "machine": bc.versions(),
        "shapes": vars(s) | {"tokens": s.tokens()},
        "settings": {
            "calls": args.calls,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
        },
        "workdir": args.workdir,
        "mmjax": jx,
        "torch": pt,
    }
    if "error" in jx or "error" in pt:
        return result
    diffs = [
        np.abs(np.subtract(jx["twin"]["logits_batch1"][t], pt["logits_batch1"][t])).max()
        for t in pt["logits_batch1"]
    ]
    result["twin_logits_max_abs_diff"] = float(max(diffs))
    for side in (jx["twin"], pt):
        side.pop("logits_batch1")
    rows = {"mmjax av_digits": jx["av_digits"], "mmjax twin": jx["twin"], "torch eager": pt["eager"]}
    if "batch1_p50_ms" in pt["compile"]:
        rows["torch compile"] = pt["compile"]
    key = f"batch{s.batch}_examples_per_s"
    summary = {
        name: {k: v for k, v in r.items() if k.startswith("batch") or k == "compile_s"}
        for name, r in rows.items()
    }
    for peer in ("torch eager", "torch compile"):
        if peer in rows:
            summary["mmjax twin"][f"latency_speedup_vs_{peer.replace(' ', '_')}"] = (
                rows[peer]["batch1_p50_ms"] / rows["mmjax twin"]["batch1_p50_ms"]
            )
            summary["mmjax twin"][f"throughput_speedup_vs_{peer.replace(' ', '_')}"] = (
                rows["mmjax twin"][key] / rows[peer][key]
            )
    result["summary"] = summary
    return result


def print_report(result: dict, s: bc.Shapes) -> None:
    if "summary" not in result:
        print(json.dumps({k: result[k] for k in ("mmjax", "torch")}, indent=1))
        return
    key = f"batch{s.batch}_examples_per_s"
    rows = [
        [name, r["batch1_p50_ms"], r["batch1_p99_ms"], r[key], r.get("compile_s", 0.0)]
        for name, r in result["summary"].items()
    ]
    bc.print_table(rows, ["", "b1 p50 ms", "b1 p99 ms", f"b{s.batch} ex/s", "compile s"])
    twin = result["summary"]["mmjax twin"]
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in twin.items() if "speedup" in k)
    print(f"mmjax twin / torch: {ratios}; twin logits max |diff| {result['twin_logits_max_abs_diff']:.2g}")
    if "predictor" in result["mmjax"]:
        p = result["mmjax"]["predictor"]
        print(
            f"Predictor ({result['workdir']}), batch 1: whole call p50 {p['call_p50_ms']:.2f} ms, "
            f"p99 {p['call_p99_ms']:.2f} ms; model alone p50 {p['model_p50_ms']:.2f} ms, "
            f"p99 {p['model_p99_ms']:.2f} ms"
        )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    s = shapes(args)
    if args.phase:
        out = jax_phase(args, s) if args.phase == "jax" else torch_phase(args, s)
        print(json.dumps(out))
        return out
    jx, pt, _ = bc.run_phases(__file__, argv, s)
    result = report(args, s, jx, pt)
    print_report(result, s)
    bc.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
