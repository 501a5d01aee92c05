"""Data benchmarks: the jitted log-mel/MFCC frontend against librosa; the grain training stream against the
train step's consumption rate, on AV-Digits and on an own-data folder (RGB JPEGs, 44.1 kHz FLAC, a CSV and a
JSONL split: scripts/make_example_folder.py); and the folder build's rows/s and peak memory at two sizes
(memory must stay flat as the row count grows). Prints one JSON object on stdout (a table on stderr).

Full run (on an idle machine):  .venv/bin/python scripts/bench_data.py --out runs/bench_data.json
Seconds-long smoke run:         .venv/bin/python scripts/bench_data.py --quick
"""

import argparse
import contextlib
import functools
import glob
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import librosa
import numpy as np

from mmjax.data import audio, datasets
from mmjax.data.av_digits_sources import resolve_data_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_common as bc  # noqa: E402

SAMPLE_RATE = 16000
# The librosa arguments of the data pipeline's log_mel (mmjax.data.audio.log_mel), shared by MFCC.
STFT = dict(n_fft=512, win_length=400, hop_length=160, n_mels=64)
N_MFCC = 20
ERROR_DEFINITIONS = {
    "log_mel": "max |jax - librosa| over log(mel + 1e-6) = max relative error of the floored mel power",
    "mfcc": "max |jax - librosa| / max(|librosa|, 1) over MFCC values (dB units)",
}


def load_clips(count: int, seconds: float) -> np.ndarray:
    """`count` FSDD recordings spread over speakers and digits, at 16 kHz, zero-padded/cropped: [count, S]."""
    files = sorted(glob.glob(str(resolve_data_dir() / "fsdd" / "recordings" / "*.wav")))
    if not files:
        raise FileNotFoundError(f"no FSDD recordings under {resolve_data_dir()}")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, count).astype(int)]
    clips = np.zeros((count, int(seconds * SAMPLE_RATE)), np.float32)
    for row, path in zip(clips, picked, strict=True):
        wave, rate = audio.load_wav(path)
        wave = audio.resample(wave, rate, SAMPLE_RATE)[: row.size]
        row[: wave.size] = wave
    return clips


def _librosa_mfcc(wave: np.ndarray) -> np.ndarray:
    return librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, n_mfcc=N_MFCC, **STFT).T


FRONTENDS = {  # name: (librosa per clip [frames, F], jitted JAX per batch [B, frames, F])
    "log_mel": (functools.partial(audio.log_mel, sample_rate=SAMPLE_RATE, **STFT), audio.log_mel_jax),
    "mfcc": (_librosa_mfcc, functools.partial(audio.mfcc_jax, n_mfcc=N_MFCC, **STFT)),
}


def bench_frontend(name: str, clips: np.ndarray, batch_size: int, repeats: int) -> dict:
    """clips/s of librosa looping over clips and of the JAX frontend on whole batches; their difference."""
    host_fn, jax_fn = FRONTENDS[name]
    batches = [clips[i : i + batch_size] for i in range(0, len(clips), batch_size)]

    def run_host():
        return np.stack([host_fn(wave) for wave in clips])

    def run_jax():
        return [jax.block_until_ready(jax_fn(batch)) for batch in batches]

    want, got = run_host(), np.concatenate([np.asarray(out) for out in run_jax()])  # run_jax compiles here
    host_s, jax_s = (bc.median_times(fn, 1, repeats)["median_s"] for fn in (run_host, run_jax))
    diff = np.abs(got - want)
    rel = diff.max() if name == "log_mel" else (diff / np.maximum(np.abs(want), 1.0)).max()
    return {
        "clips": len(clips),
        "seconds_per_clip": clips.shape[1] / SAMPLE_RATE,
        "batch_size": batch_size,
        "librosa_clips_per_sec": len(clips) / host_s,
        "jax_clips_per_sec": len(clips) / jax_s,
        "speedup": host_s / jax_s,
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel),
    }


def _config(spec: str, batch_size: int | None, overrides: list[str] = ()):
    from mmjax.config import load_config

    config = load_config(spec, overrides)
    if batch_size:
        config.data.batch_size = batch_size
    return config


def _train_stream(config, workers: int):
    """The experiment's training stream, as mmjax.train.main reads it (any data set)."""
    from mmjax.data import pipeline

    data = datasets.from_config(config)
    return pipeline.train_iterator(
        data.load("train"),
        batch_size=config.data.batch_size,
        seed=config.seed,
        preprocess_fn=data.preprocess,
        worker_count=workers,
        **data.iterator_args,
    )


def bench_pipeline(config, workers: int, batches: int) -> dict:
    """examples/s of the training stream after its first batch (worker start-up, reported separately)."""
    start = time.perf_counter()
    stream = _train_stream(config, workers)
    next(stream)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    elapsed = time.perf_counter() - start
    with contextlib.suppress(Exception):  # stop grain's worker processes now
        stream.close()
    return {
        "workers": workers,
        "batches": batches,
        "batch_size": config.data.batch_size,
        "first_batch_s": first_s,
        "examples_per_sec": batches * config.data.batch_size / elapsed,
    }


def bench_train_step(config, steps: int) -> dict:
    """examples/s of the jitted train step of the config's model (built as mmjax.train.main does)."""
    from mmjax import optim, parallel, train
    from mmjax.step import init_state, make_objective, make_train_step

    data = datasets.from_config(config)
    tasks = data.head_sizes()
    model = train.build_model(config.model, tasks, data.streams, data.text_vocab_size)
    optimizer = optim.make_optimizer(config.optim, 1000)
    objective = make_objective(config, data)
    mesh = parallel.make_mesh()
    example = train.dummy_batch(config.model, tasks, streams=data.streams)
    make_state = functools.partial(init_state, model, optimizer, objective, example, config.seed)
    state = jax.jit(make_state, out_shardings=parallel.replicated(mesh))(
        train.pretrained_params(config.model, data.streams)
    )
    step_fn = make_train_step(model, optimizer, objective, mesh)
    batch = parallel.to_global(next(_train_stream(config, 0)), mesh)
    holder = {"state": state}

    def one_step():
        holder["state"], scalars = step_fn(holder["state"], batch)
        jax.block_until_ready((holder["state"], scalars))

    step_s = bc.median_times(one_step, 2, steps)["median_s"]  # 2 untimed: compile and warm up
    return {
        "source": "measured",
        "steps": steps,
        "batch_size": config.data.batch_size,
        "step_ms": 1e3 * step_s,
        "examples_per_sec": config.data.batch_size / step_s,
    }


LABELS = "same+digits+total"  # the example folder's label columns: classes, multi-label, regression


def make_folder(out: pathlib.Path, rows: int) -> dict:
    """Writes the example own-data folder with `rows` train rows (and rows // 10 test rows); its seconds."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_example_folder

    start = time.perf_counter()
    make_example_folder.make_folder(out, rows, max(rows // 10, 8))
    return {"rows": rows, "test_rows": max(rows // 10, 8), "write_s": time.perf_counter() - start}


def build_folder(root: str, cache: str, workers: int) -> None:
    """(in a child process) Builds the folder and prints its rows/s and this process's and its build
    workers' peak RSS as one JSON line."""
    from mmjax.data import folder

    config = folder.FolderConfig(root=root, labels=tuple(LABELS.split("+")), ignore=("speaker",))
    start = time.perf_counter()
    built = folder.build(config, cache, workers=workers)
    seconds = time.perf_counter() - start
    rows = sum(json.loads((built / "schema.json").read_text())["splits"].values())
    bad = len(folder.read_bad_inputs(built))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    peak = bc.rss_bytes()[1]
    print(
        json.dumps(
            {
                "build_s": seconds,
                "rows_per_sec": (rows + bad) / seconds,
                "examples": rows,
                "bad": bad,
                "peak_rss_mb": peak / 2**20,
                "workers_peak_rss_mb": children / 2**20,
            }
        )
    )


def bench_folder_build(out: pathlib.Path, rows: int, workers: int) -> dict:
    """Writes an example folder of `rows` rows and builds it in a fresh process: rows/s and peak RSS."""
    written = make_folder(out / f"rows{rows}", rows)
    command = [sys.executable, __file__, "--build-folder", str(out / f"rows{rows}"), str(out / "cache")]
    done = subprocess.run(command + ["--build-workers", str(workers)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the {rows}-row folder failed:\n{done.stderr[-3000:]}")
    return written | {"workers": workers} | json.loads(done.stdout.strip().splitlines()[-1])


def folder_config(root: pathlib.Path, cache: pathlib.Path, args) -> object:
    spec = f"{REPO / 'experiments' / 'folder.py'}:dir={root},labels={LABELS}" + (
        ",smoke" if args.quick else ""
    )
    overrides = [f"data.tfds_dir={cache}", "data.ignore=speaker"]
    return _config(spec, args.train_batch_size, overrides)


def bench_own_data(out: pathlib.Path, args) -> dict:
    """The folder build at each size in args.folder_rows, then the own-data training stream against its
    train step, on the smallest folder."""
    build = [bench_folder_build(out, rows, args.build_workers) for rows in args.folder_rows]
    config = folder_config(out / f"rows{min(args.folder_rows)}", out / "cache", args)
    pipeline = [bench_pipeline(config, workers, args.pipeline_batches) for workers in args.workers]
    step = {"source": "given", "examples_per_sec": args.step_examples_per_sec}
    if not args.step_examples_per_sec:
        step = bench_train_step(config, args.steps)
    peaks = [row["peak_rss_mb"] + row["workers_peak_rss_mb"] for row in build]
    return {
        "build": build,
        "peak_rss_ratio_largest_vs_smallest": peaks[-1] / peaks[0],
        "rows_ratio_largest_vs_smallest": build[-1]["rows"] / build[0]["rows"],
        "pipeline": pipeline,
        "train_step": step,
        "pipeline_vs_step": max(row["examples_per_sec"] for row in pipeline) / step["examples_per_sec"],
    }


def machine_info() -> dict:
    machine = bc.versions(("jax", "jaxlib", "librosa", "numpy", "grain"))
    return machine | {"jax_backend": jax.default_backend(), "jax_devices": jax.device_count()}


def table(result: dict) -> str:
    lines = [
        f"{'frontend':<10}{'clip s':>7}{'librosa c/s':>13}{'jax c/s':>11}{'x':>8}"
        f"{'max abs':>10}{'max rel':>10}"
    ]
    for row in result["frontend"]:
        lines.append(
            f"{row['feature']:<10}{row['seconds_per_clip']:>7g}{row['librosa_clips_per_sec']:>13.1f}"
            f"{row['jax_clips_per_sec']:>11.1f}{row['speedup']:>8.1f}{row['max_abs_diff']:>10.2e}"
            f"{row['max_rel_diff']:>10.2e}"
        )
    lines.append(f"{'pipeline workers':<20}{'examples/s':>12}{'first batch s':>15}{'vs step':>9}")
    step_rate = result["train_step"]["examples_per_sec"]
    for row in result["pipeline"]:
        lines.append(
            f"{row['workers']:<20}{row['examples_per_sec']:>12.1f}{row['first_batch_s']:>15.2f}"
            f"{row['examples_per_sec'] / step_rate:>9.2f}"
        )
    lines.append(f"train step ({result['train_step']['source']}): {step_rate:.1f} examples/s")
    if "folder" in result:
        own = result["folder"]
        lines.append(f"{'folder rows':<14}{'rows/s':>9}{'peak MB':>9}{'workers MB':>12}")
        for row in own["build"]:
            lines.append(
                f"{row['rows']:<14}{row['rows_per_sec']:>9.1f}{row['peak_rss_mb']:>9.0f}"
                f"{row['workers_peak_rss_mb']:>12.0f}"
            )
        step = own["train_step"]["examples_per_sec"]
        for row in own["pipeline"]:
            lines.append(
                f"own-data pipeline, {row['workers']} workers: {row['examples_per_sec']:.1f} examples/s "
                f"({row['examples_per_sec'] / step:.2f}x the train step's {step:.1f})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long run with tiny sizes")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--clips", type=int, default=256, help="FSDD clips per frontend benchmark")
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 5.0], help="clip lengths")
    parser.add_argument("--batch-size", type=int, default=64, help="frontend batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--config", default=str(REPO / "experiments" / "av_digits.py"), help="stream's config"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="grain worker counts")
    parser.add_argument("--pipeline-batches", type=int, default=50)
    parser.add_argument("--train-batch-size", type=int, help="override config.data.batch_size")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--step-examples-per-sec", type=float, help="skip the train step; use this rate")
    parser.add_argument("--tfds-dir", help="built AV-Digits (default $MMJAX_TFDS_DIR or ~/.cache/mmjax/...)")
    parser.add_argument("--folder-rows", type=int, nargs="*", default=[1000, 10000], help="own-data sizes")
    parser.add_argument("--folder-dir", help="where the own-data folders and builds go (default: a temp dir)")
    parser.add_argument("--build-workers", type=int, default=0, help="folder build processes (0: per core)")
    parser.add_argument("--build-folder", nargs=2, metavar=("ROOT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_folder:
        build_folder(*args.build_folder, args.build_workers)
        return {}
    if args.quick:
        args.clips, args.seconds, args.batch_size, args.repeats = 8, [0.5], 8, 1
        args.workers, args.pipeline_batches, args.steps = [0], 2, 2
        args.folder_rows = [40, 80]
        args.config += ",smoke" if ":" in args.config else ":smoke"
        args.train_batch_size = args.train_batch_size or 8

    result = {"machine": machine_info(), "args": vars(args), "error_definitions": ERROR_DEFINITIONS}
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON
        result["frontend"] = []
        for seconds in args.seconds:
            clips = load_clips(args.clips, seconds)
            for name in FRONTENDS:
                row = bench_frontend(name, clips, args.batch_size, args.repeats)
                result["frontend"].append({"feature": name, **row})
        overrides = [f"data.tfds_dir={args.tfds_dir}"] if args.tfds_dir else []
        config = _config(args.config, args.train_batch_size, overrides)
        result["pipeline"] = [
            bench_pipeline(config, workers, args.pipeline_batches) for workers in args.workers
        ]
        if args.step_examples_per_sec:
            result["train_step"] = {"source": "given", "examples_per_sec": args.step_examples_per_sec}
        else:
            result["train_step"] = bench_train_step(config, args.steps)
        if args.folder_rows:
            with contextlib.ExitStack() as stack:
                out = args.folder_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="mmjax_own_"))
                result["folder"] = bench_own_data(pathlib.Path(out), args)
    print(table(result), file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
