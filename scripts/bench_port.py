"""Porting big checkpoints: seconds per GB and peak memory of `mmjax.port.from_hf` on generated base-size
checkpoints (ViT-B/16 and BERT-base shapes, float32 safetensors), against two peers measured in the same run:
reading the whole file first (safetensors `load_file`, then the same merge: the pre-streaming path) and
transformers' `from_pretrained` in PyTorch. Each load runs in its own process; its peak RSS (which counts the
memory-mapped file's pages) and its peak anonymous memory (without them; sampled every 5 ms) are reported
above the process's values after imports, as multiples of the checkpoint's size. Prints one JSON object.

Full run:          .venv/bin/python scripts/bench_port.py --out runs/bench_port.json
Seconds-long run:  .venv/bin/python scripts/bench_port.py --quick
"""

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time
from unittest import mock

import jax
import numpy as np

import mmjax.port

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_common as bc  # noqa: E402

# Model -> (mmjax encoder fields, init input shape) at base size and at --quick size.
SIZES = {
    "vit_base": (dict(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072), (1, 224, 224, 3)),
    "bert_base": (
        dict(vocab_size=30522, max_len=512, width=768, depth=12, num_heads=12, mlp_dim=3072),
        (1, 8),
    ),
}
QUICK = {
    "vit_base": (dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128), (1, 32, 32, 3)),
    "bert_base": (dict(vocab_size=500, max_len=64, width=64, depth=2, num_heads=2, mlp_dim=128), (1, 8)),
}
LOADERS = ("mmjax", "whole_file", "transformers")


def make_checkpoint(name: str, quick: bool, folder: pathlib.Path) -> int:
    """Writes a random `name` checkpoint (HF layout, via mmjax.port.to_hf) to `folder`; returns its bytes."""
    from mmjax.encoders.image import ViTEncoder
    from mmjax.encoders.text import TextEncoder
    from mmjax.port import to_hf

    fields, shape = (QUICK if quick else SIZES)[name]
    if name.startswith("vit"):
        module, dummy = ViTEncoder(**fields, pooler=True), np.zeros(shape, np.float32)
    else:
        module, dummy = TextEncoder(**fields, pre_ln=False, pooler=True), np.zeros(shape, np.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
    to_hf(module, params, folder)
    return (folder / "model.safetensors").stat().st_size


def load(loader: str, folder: str) -> dict:
    """One load of `folder` by `loader` in this process: seconds and peak RSS above the RSS after imports."""
    if loader == "transformers":
        import transformers

        def run():
            return transformers.AutoModel.from_pretrained(folder)
    else:
        from safetensors.numpy import load_file

        from mmjax.port import from_hf

        def whole_file(path: pathlib.Path) -> dict:  # the pre-streaming reader: all tensors before the merge
            return load_file(path / "model.safetensors")

        reader = whole_file if loader == "whole_file" else mmjax.port.read_state_dict

        def run():
            with mock.patch("mmjax.port.read_state_dict", reader):
                _, params = from_hf(folder)
            return jax.block_until_ready(params)

    jax.block_until_ready(jax.numpy.zeros(8) + 1)  # the backend's own memory belongs to the baseline
    baseline, _ = bc.rss_bytes()
    anon_baseline = anonymous_rss()
    anon_peak, done = [anon_baseline], threading.Event()

    def sample():  # RssAnon has no peak counter: poll it
        while not done.wait(0.005):
            anon_peak[0] = max(anon_peak[0], anonymous_rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    _, peak = bc.rss_bytes()
    return {
        "seconds": seconds,
        "baseline_rss_bytes": baseline,
        "peak_above_baseline_bytes": peak - baseline,
        "anonymous_peak_above_baseline_bytes": anon_peak[0] - anon_baseline,
    }


def anonymous_rss() -> int:
    """Resident anonymous memory (RssAnon: not the checkpoint's memory-mapped file pages) in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(quick: bool) -> dict:
    """Every model, every loader, each load in a fresh process."""
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench_port_") as tmp:
        for name in SIZES:
            folder = pathlib.Path(tmp) / name
            size = make_checkpoint(name, quick, folder)
            rows = {}
            for loader in LOADERS:
                row = bc.run_phase(__file__, ["--phase", loader, "--folder", str(folder)])
                if "error" not in row:
                    row["seconds_per_gb"] = row["seconds"] / (size / 1e9)
                    row["peak_over_checkpoint"] = row["peak_above_baseline_bytes"] / size
                    row["anonymous_peak_over_checkpoint"] = row["anonymous_peak_above_baseline_bytes"] / size
                rows[loader] = row
            ours = rows["mmjax"]
            for peer in LOADERS[1:]:
                if "error" not in rows[peer] and "error" not in ours:
                    ours[f"peak_ratio_vs_{peer}"] = ours["peak_above_baseline_bytes"] / max(
                        rows[peer]["peak_above_baseline_bytes"], 1
                    )
                    ours[f"speedup_vs_{peer}"] = rows[peer]["seconds"] / ours["seconds"]
            result[name] = {"checkpoint_bytes": size, **rows}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints (seconds; for tests)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--phase", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        row = load(args.phase, args.folder)
        print(json.dumps(row))
        return row
    result = {"machine": bc.versions(), "quick": args.quick, "models": measure(args.quick)}
    rows = [
        [f"{name} {loader}"]
        + [
            m[loader].get(k, "-")
            for k in ("seconds_per_gb", "peak_over_checkpoint", "anonymous_peak_over_checkpoint")
        ]
        for name, m in result["models"].items()
        for loader in LOADERS
    ]
    bc.print_table(rows, ["model loader", "s/GB", "peak RSS / checkpoint", "anonymous peak / checkpoint"])
    bc.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
