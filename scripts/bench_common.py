"""Shared pieces of the benchmarks (scripts/bench_*.py): shapes and flags, the mmjax side, FLOPs, timing,
memory, the phase runner and the output. The PyTorch side is in bench_torch.py, profile summaries in
bench_profile.py.

The bench model is a multimodal model built twice from the same Hugging Face encoders: mmjax (the encoders
ported with `mmjax.port`, the cross-attention fusion and heads of mmjax.model) and a PyTorch twin (BertModel,
ViTModel, ASTModel plus the fusion and heads of scripts/torch_twin.py, layer by layer mmjax's). Both start
from the same weights: the HF encoders are saved once with `save_pretrained` and read by both; the fusion and
head parameters are copied from mmjax into the twin (`torch_twin.load_flax`). An experiment config's own
model (`--experiment`) is scripts/bench_experiment.py's.

Only the torch phases import torch (bench_torch inside its functions, torch_twin when a phase imports it);
the jax side reads the saved folders with safetensors.
"""

import dataclasses
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import bench_torch
import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = str(REPO / "experiments" / "av_digits.py")
MODALITIES = ("text", "image", "audio")
# Config switches other mmjax work adds to `model` (used when the config has them): flag -> field.
SWITCHES = {"scan": "scan", "remat": "remat", "dtype": "dtype", "attention": "attention"}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Input shapes and model sizes of a benchmark model (encoders share width/depth/heads/mlp)."""

    batch: int = 8
    text_len: int = 64
    vocab: int = 30522  # BERT's WordPiece vocabulary
    max_positions: int = 512  # BERT's position table
    image_size: int = 224
    channels: int = 3
    image_patch: int = 16
    frames: int = 500  # 5 s of 10 ms frames
    mels: int = 128
    audio_patch: int = 16  # AST cuts square patches
    time_stride: int = 16  # AST's own default is 10 (overlapping patches); 16: non-overlapping
    freq_stride: int = 16
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp: int = 1024
    fusion_depth: int = 2
    fusion_width: int = 256
    dropout: float = 0.0  # 0: deterministic steps, so the twins' losses can be compared

    def tokens(self) -> dict[str, int]:
        """Tokens per example of each encoder ([CLS]/distillation tokens included)."""
        time_patches = (self.frames - self.audio_patch) // self.time_stride + 1
        freq_patches = (self.mels - self.audio_patch) // self.freq_stride + 1
        return {
            "text": self.text_len,
            "image": (self.image_size // self.image_patch) ** 2 + 1,
            "audio": time_patches * freq_patches + 2,
        }


QUICK = dict(
    batch=2,
    text_len=8,
    vocab=100,
    max_positions=16,
    image_size=32,
    image_patch=16,
    frames=48,
    mels=32,
    width=32,
    depth=1,
    heads=2,
    mlp=64,
    fusion_depth=1,
    fusion_width=32,
)


def add_shape_flags(parser, defaults: Shapes) -> None:
    """One --flag per Shapes field (dashes for underscores), defaulting to `defaults`."""
    for field in dataclasses.fields(Shapes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag, type=field.type, default=None, help=f"default {getattr(defaults, field.name)}"
        )


def add_switch_flags(parser) -> None:
    parser.add_argument("--scan", action="store_true", help="model.scan=True (if the config has it)")
    parser.add_argument("--remat", default=None, help="model.remat (e.g. dots; if the config has it)")
    parser.add_argument(
        "--dtype", default=None, help="model.dtype: float32 | bfloat16 (if the config has it)"
    )
    parser.add_argument(
        "--attention", default=None, help="model.attention: xla | fused (if the config has it)"
    )


def shapes_from_args(args, defaults: Shapes) -> Shapes:
    """`defaults` (or QUICK's tiny sizes with --quick) with the flags given on the command line."""
    base = dataclasses.replace(defaults, **QUICK) if args.quick else defaults
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Shapes) if getattr(args, f.name) is not None
    }
    return dataclasses.replace(base, **given)


def switches_from_args(args) -> dict:
    """{model field: value} of the switch flags that were given."""
    values = {
        "scan": args.scan or None,
        "remat": args.remat,
        "dtype": args.dtype,
        "attention": args.attention,
    }
    return {SWITCHES[k]: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- mmjax side


def mmjax_config(s: Shapes, hf_dirs: Mapping[str, str] | None, switches: Mapping = (), arg: str = ""):
    """The AV-Digits experiment config reshaped to `s`: cross-attention fusion, encoders from `hf_dirs`
    (None: the scratch encoders of the config's own size). Returns (config, {task: classes}, applied
    switches). Switches the config lacks are left out (and reported by the caller)."""
    from mmjax.config import load_config
    from mmjax.data import av_digits

    # The text tower is trained here (a batch holds token ids, not a frozen tower's cached outputs).
    cfg = load_config(EXPERIMENT + ":" + ",".join(filter(None, ["text=scratch", arg])))
    m = cfg.model
    if hf_dirs is not None:
        m.width, m.depth, m.num_heads, m.mlp_dim = s.fusion_width, s.fusion_depth, s.heads, s.mlp
        m.fusion.name = "cross_attention"
        m.fusion.depth = s.fusion_depth
        m.dropout = s.dropout
        m.head_hidden = 0  # the PyTorch twin's heads are linear
        m.text.max_len = cfg.data.text_len = s.text_len
        m.text.vocab_size = s.vocab
        m.image.size, m.image.channels, m.image.patch_size = s.image_size, s.channels, s.image_patch
        m.audio.frames = cfg.data.audio_frames = s.frames
        m.audio.mels = s.mels
        # Only checked for divisibility (the AST port brings its own patches and strides).
        m.audio.patch_time, m.audio.patch_freq = 1, 1
        for mod in MODALITIES:
            m[mod].init_from = f"hf:{hf_dirs[mod]}"
    cfg.multitask.grad_norms = False  # per-task gradient norms are extra backward passes: not a train step
    return cfg, av_digits.task_classes(cfg.tasks), apply_switches(m, switches)


def apply_switches(model_cfg, switches: Mapping) -> dict:
    """Sets the switches ({model field: value}) the model config has; returns those it set."""
    applied = {}
    for field, value in dict(switches).items():
        if field in model_cfg:
            current = model_cfg[field]
            model_cfg[field] = bool(value) if isinstance(current, bool) else type(current)(value)
            applied[field] = model_cfg[field]
    return applied


def build_mmjax(cfg, tasks: Mapping[str, int], batch: Mapping, mesh=None, data=None):
    """(model, optimizer, objective, state, jitted train step) from the config; `batch` for init; `data`
    (an mmjax DataSet) for its streams, word vocabulary and task kinds (default: AV-Digits' three streams)."""
    import jax

    from mmjax import optim, parallel
    from mmjax.model import THREE_STREAMS, build_model, pretrained_params
    from mmjax.step import init_state, make_objective, make_train_step

    streams = data.streams if data is not None else THREE_STREAMS
    model = build_model(cfg.model, tasks, streams, data.text_vocab_size if data is not None else 0)
    optimizer = optim.make_optimizer(cfg.optim, total_steps=10_000)
    objective = make_objective(cfg, data)
    mesh = mesh or parallel.make_mesh(jax.devices()[:1])
    # Jitted as mmjax.train does: run op by op, init compiles hundreds of small programs (their memory stays).
    make_state = functools.partial(init_state, model, optimizer, objective, batch, cfg.seed)
    pretrained = pretrained_params(cfg.model, streams)
    state = jax.jit(make_state, out_shardings=parallel.replicated(mesh))(pretrained)
    step = make_train_step(model, optimizer, objective, mesh)
    return model, optimizer, objective, state, step


def twin_tasks(objective, tasks: Mapping[str, int]) -> dict[str, dict]:
    """{task: {outputs, kind, weight}} of a static objective, for torch_twin.twin_loss and build_twin."""
    kinds = objective.kinds or ("classes",) * len(objective.tasks)
    return {
        t: {"outputs": tasks[t], "kind": kind or "classes", "weight": w}
        for t, kind, w in zip(objective.tasks, kinds, objective.weights, strict=True)
    }


def random_batch(s: Shapes, tasks: Mapping[str, int], batch_size: int | None = None, seed: int = 0) -> dict:
    """A numpy batch in mmjax's layout: random tokens (the last quarter of the text padded in half of the
    examples), images, spectrograms and labels; every modality present, audio unpadded."""
    rng = np.random.default_rng(seed)
    b = batch_size or s.batch
    text_mask = np.ones((b, s.text_len), bool)
    text_mask[: b // 2, s.text_len - s.text_len // 4 :] = False
    text = rng.integers(1, s.vocab, (b, s.text_len)).astype(np.int32) * text_mask
    batch = {
        "text": text.astype(np.int32),
        "text_mask": text_mask,
        "image": rng.normal(size=(b, s.image_size, s.image_size, s.channels)).astype(np.float32),
        "audio": rng.normal(size=(b, s.frames, s.mels)).astype(np.float32),
        "audio_mask": np.ones((b, s.frames), bool),
        "present": {m: np.ones((b,), bool) for m in MODALITIES},
    }
    return batch | {f"labels/{t}": rng.integers(0, n, (b,)).astype(np.int32) for t, n in tasks.items()}


def flat_params(params: Mapping) -> dict[str, np.ndarray]:
    """{"a/b/c": numpy array} of a param tree."""
    from flax import traverse_util

    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}


def xla_costs(compiled) -> dict:
    """FLOPs, bytes accessed and memory sizes of a compiled jax function (XLA's own estimates)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out = {
        "xla_flops": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
    }
    mem = compiled.memory_analysis()
    if mem is not None:
        out["memory"] = {
            k: int(getattr(mem, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "alias", "generated_code")
            if hasattr(mem, f"{k}_size_in_bytes")
        }
        out["memory"]["peak_estimate"] = out["memory"]["argument"] + out["memory"]["temp"]
    return out


# ---------------------------------------------------------------- FLOPs, timing, machine


def analytic_flops(s: Shapes, tasks: Mapping[str, int], train: bool = True) -> float:
    """Matmul FLOPs of one step by formula: 2 * multiply-adds of every Dense, patch embedding and attention
    product, times 3 for training (forward + backward's two matmuls per forward one: the 6*N*T rule)."""
    tokens = s.tokens()
    d, f = s.width, s.mlp

    def encoder_layer(n: int, width: int) -> float:
        return 2 * n * (4 * width * width + 2 * width * f) + 4 * n * n * width

    fwd = sum(s.depth * encoder_layer(n, d) for n in tokens.values())
    fwd += 2 * (tokens["image"] - 1) * s.image_patch**2 * s.channels * d
    fwd += 2 * (tokens["audio"] - 2) * s.audio_patch**2 * d
    w, lq, lk = s.fusion_width, tokens["text"], tokens["image"] + tokens["audio"]
    if d != w:
        fwd += 2 * sum(tokens.values()) * d * w
    fwd += 2 * sum(tokens.values()) * w * w  # the fusion's per-modality projections
    cross = 2 * lq * 2 * w * w + 2 * lk * 2 * w * w + 4 * lq * lk * w
    fwd += s.fusion_depth * (encoder_layer(lq, w) + cross)  # fusion MLP width = s.mlp
    fwd += 2 * w * sum(tasks.values())
    return float(fwd * s.batch * (3 if train else 1))


def median_times(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Runs fn `warmup` times untimed, then `repeats` timed calls (fn must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summary(times)


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_s": statistics.median(times), "min_s": ordered[0], "p99_s": p99, "n": len(times)}


def jax_matmul_peak(n: int, repeats: int, dtype: str = "float32") -> float:
    """FLOP/s of the best of `repeats` n x n matmuls in jax (on its default device) in `dtype`."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    return 2 * n**3 / median_times(lambda: matmul(a, a).block_until_ready(), 1, repeats)["min_s"]


def torch_matmul_peak(n: int, repeats: int, device: str = "cpu", dtype: str = "float32") -> float:
    """FLOP/s of the best of `repeats` n x n matmuls in torch on `device` in `dtype`."""
    import torch

    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

    def matmul():
        a @ a
        if device != "cpu":
            torch.cuda.synchronize()

    return 2 * n**3 / median_times(matmul, 1, repeats)["min_s"]


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes: /proc's VmRSS and VmHWM on Linux; elsewhere
    getrusage's max RSS (which, after fork + exec, starts at the parent's: a small child shows its parent's
    peak)."""
    fields = {}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    peak = fields.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return fields.get("VmRSS", 0), peak


def mark_rss(stages: dict, name: str) -> None:
    """Records this process's (current, peak) RSS as stage `name` of a memory account."""
    current, peak = rss_bytes()
    stages[name] = {"current": current, "peak": peak}


def versions(packages=("jax", "jaxlib", "flax", "optax", "torch", "transformers")) -> dict:
    """Python, CPU count, platform and the versions of `packages` (those installed)."""
    out = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    for name in packages:
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def run_phase(script: str, argv: list[str]) -> dict:
    """Runs `python script argv` (one framework's phase); the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    if proc.returncode:
        return {"error": f"phase exited with {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_phases(
    script: str, argv: list[str], s: Shapes, save_encoders: bool = True
) -> tuple[dict, dict, float]:
    """Saves random HF encoders of `s` to a temporary folder (unless not `save_encoders`), then runs the
    script's jax phase and (unless it failed) its torch phase, each in its own process, with that folder
    for what they share. Returns (jax result, torch result, save seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}_") as folder:
        start = time.perf_counter()
        if save_encoders:
            bench_torch.save_hf_encoders(s, folder)
        save_s = time.perf_counter() - start
        phase_argv = [*without_flag(argv, "--out"), "--hf-dir", folder, "--phase"]  # phases only print
        jx = run_phase(script, [*phase_argv, "jax"])
        pt = run_phase(script, [*phase_argv, "torch"]) if "error" not in jx else {"error": "skipped"}
    return jx, pt, save_s


def emit_json(result: dict, out: str) -> None:
    """Prints the result as indented JSON, and writes it to `out` too unless that is empty."""
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def print_table(rows: list[list], header: list[str]) -> None:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
