"""Where a step's time goes: op-level summaries of a jax.profiler trace (read with the step's compiled HLO)
and of a torch.profiler run, by kind (matmul / layout copy / other) and by model component.
"""

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path


def _hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (its opcode or fusion name prefix, op_name metadata)} of a compiled HLO module."""
    ops = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = \S+ ([\w-]+)\(", line)
        if match:
            meta = re.search(r'op_name="([^"]*)"', line)
            ops[match.group(1)] = (match.group(2), meta.group(1) if meta else "")
    return ops


def _op_kind(name: str, opcode: str) -> str:
    """matmul | layout copy | other (elementwise, reductions, scatter, ...), from an HLO op's name/opcode."""
    if opcode in ("dot", "convolution") or re.match(r"(ynn|xnn|onednn)_fusion", name):
        return "matmul"
    if opcode in ("copy", "transpose") or re.match(r"(copy|transpose)", name):
        return "layout copy"
    return "other"


def _component(op_name: str) -> str:
    """The model part an op belongs to (text/image/audio encoder, fusion, heads) or `optimizer`."""
    match = re.search(r"MultimodalModel\.forward/([^/]+)(?:/(encoder))?", op_name)
    if not match:
        return "optimizer and loss"
    return "/".join(g for g in match.groups() if g)


def profile_summary(trace_dir: str | Path, hlo_text: str, steps: int, top: int = 12) -> dict:
    """Device busy time per step of the ops of `hlo_text` in a jax.profiler trace of `steps` steps, by kind
    (matmul / layout copy / other), by model component, and the `top` costliest ops. Busy time sums the
    ops on all threads, so it exceeds the wall time when the runtime runs ops concurrently."""
    ops = _hlo_ops(hlo_text)
    busy: dict[str, float] = {}
    kinds: dict[str, float] = {}
    parts: dict[str, float] = {}
    for path in Path(trace_dir).glob("plugins/profile/*/*.trace.json.gz"):
        for event in json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]:
            if event.get("ph") != "X" or event.get("name") not in ops:
                continue
            ms = event["dur"] / 1000 / steps
            opcode, op_name = ops[event["name"]]
            busy[event["name"]] = busy.get(event["name"], 0.0) + ms
            kind = _op_kind(event["name"], opcode)
            kinds[kind] = kinds.get(kind, 0.0) + ms
            part = _component(op_name)
            parts[part] = parts.get(part, 0.0) + ms
    costly = sorted(busy.items(), key=lambda kv: -kv[1])[:top]
    return {
        "busy_ms_per_step": sum(busy.values()),
        "by_kind_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "by_component_ms": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "top_ops": [
            {"op": n, "ms": ms, "kind": _op_kind(n, ops[n][0]), "op_name": ops[n][1]} for n, ms in costly
        ],
    }


TORCH_MATMULS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::convolution_backward",
    "aten::mkldnn_convolution",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)
TORCH_COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")


def torch_profile_summary(run_step: Callable[[], object], steps: int, top: int = 12) -> dict:
    """torch.profiler self CPU time per step of `steps` calls of run_step, by the kinds of profile_summary."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run_step()
    rows = [(e.key, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()]
    kinds = {"matmul": 0.0, "layout copy": 0.0, "other": 0.0}
    for key, ms in rows:
        kinds["matmul" if key in TORCH_MATMULS else "layout copy" if key in TORCH_COPIES else "other"] += ms
    return {
        "busy_ms_per_step": sum(ms for _, ms in rows),
        "by_kind_ms": kinds,
        "top_ops": [{"op": k, "ms": ms} for k, ms in sorted(rows, key=lambda r: -r[1])[:top]],
    }
