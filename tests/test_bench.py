"""scripts/bench_*.py: quick runs give well-formed JSON, and the PyTorch twin
computes the same loss as mmjax from the same weights. No timing thresholds: timings depend on the machine."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_common as bc  # noqa: E402
import bench_profile  # noqa: E402
import bench_torch  # noqa: E402


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.parity
def test_torch_twin_loss_matches_mmjax(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from mmjax.step import task_losses

    s = bc.Shapes(**bc.QUICK)
    dirs = bench_torch.save_hf_encoders(s, tmp_path)
    cfg, tasks, _ = bc.mmjax_config(s, dirs)
    batch = bc.random_batch(s, tasks, seed=1)
    model, _, objective, state, _ = bc.build_mmjax(cfg, tasks, batch)
    outputs, _ = model.apply({"params": state.params}, batch, train=False)
    loss = float(np.sum(np.asarray(objective.weights) * task_losses(outputs, batch, objective)))

    import torch_twin

    twin = bench_torch.bench_twin(bench_torch.load_hf_encoders(dirs), s, tasks).eval()
    torch_twin.load_flax(twin, bc.flat_params(state.params))
    tbatch = bench_torch.torch_batch(batch)
    with torch.no_grad():
        twin_outputs = twin(tbatch)
        twin_loss = float(torch_twin.twin_loss(twin_outputs, tbatch, bc.twin_tasks(objective, tasks)))
    assert twin_loss == pytest.approx(loss, abs=1e-4)
    for task in tasks:
        np.testing.assert_allclose(twin_outputs[task].numpy(), np.asarray(outputs[task]), atol=1e-4)


def test_analytic_flops_counts_every_part():
    s = bc.Shapes()
    tokens = s.tokens()
    assert tokens == {"text": 64, "image": 197, "audio": 31 * 8 + 2}
    tasks = {"a": 10}
    train_flops, infer_flops = bc.analytic_flops(s, tasks), bc.analytic_flops(s, tasks, train=False)
    assert train_flops == 3 * infer_flops
    # The encoders' dense layers alone: 2 * tokens * 12 D^2 (D=256, mlp 4D) per layer and example.
    dense = 2 * sum(tokens.values()) * 12 * s.width**2 * s.depth * s.batch
    assert dense < infer_flops < 1.5 * dense


def test_profile_summary_splits_a_trace_by_kind_and_model_part(tmp_path):
    import gzip

    hlo = "\n".join(
        [
            '  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%p), kind=kCustom, metadata={op_name="jit(step)/'
            'jvp(MultimodalModel)/MultimodalModel.forward/audio/encoder/layer_0/mlp/fc1/dot_general"}',
            '  %copy_bitcast_fusion.1 = f32[4,8]{1,0} fusion(%q), kind=kLoop, metadata={op_name="jit(step)/'
            'transpose(jvp(MultimodalModel))/MultimodalModel.forward/fusion/split"}',
            '  ROOT %add_sqrt_fusion = f32[4]{0} fusion(%r), kind=kLoop, metadata={op_name="jit(step)/add"}',
        ]
    )
    events = [
        {"ph": "X", "name": "ynn_fusion.3", "dur": 4000},
        {"ph": "X", "name": "ynn_fusion.3", "dur": 2000},
        {"ph": "X", "name": "copy_bitcast_fusion.1", "dur": 1000},
        {"ph": "X", "name": "add_sqrt_fusion", "dur": 500},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000},  # not an HLO op: left out
        {"ph": "M", "name": "thread_name"},
    ]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    (folder / "host.trace.json.gz").write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))

    summary = bench_profile.profile_summary(tmp_path, hlo, steps=2)
    assert summary["busy_ms_per_step"] == pytest.approx(3.75)
    assert summary["by_kind_ms"] == pytest.approx({"matmul": 3.0, "layout copy": 0.5, "other": 0.25})
    assert summary["by_component_ms"] == pytest.approx(
        {"audio/encoder": 3.0, "fusion": 0.5, "optimizer and loss": 0.25}
    )
    assert [op["op"] for op in summary["top_ops"]] == [
        "ynn_fusion.3",
        "copy_bitcast_fusion.1",
        "add_sqrt_fusion",
    ]


@pytest.mark.slow
def test_bench_train_quick(tmp_path):
    import bench_train

    out = tmp_path / "train.json"
    bench_train.main(["--quick", "--profile", str(tmp_path / "trace"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"machine", "shapes", "flops", "summary", "mmjax", "torch"} <= set(result)
    for key in ("cpu_count", "jax", "torch", "transformers"):
        assert key in result["machine"]
    for key in ("xla_cost_analysis", "formula", "torch_flop_counter", "matmul_peak_flops"):
        assert _positive(result["flops"][key]), key
    assert set(result["summary"]) == {"mmjax", "torch_eager"}  # --quick skips torch.compile
    for row in result["summary"].values():
        for key in ("step_s", "examples_per_s", "achieved_flops", "mfu", "peak_rss_bytes"):
            assert _positive(row[key]), key
    assert _positive(result["summary"]["mmjax"]["compile_s"])
    assert _positive(result["summary"]["mmjax"]["speedup_vs_torch_eager"])
    assert _positive(result["summary"]["mmjax"]["peak_memory_bytes"])
    assert result["twin_loss_abs_diff"] < 1e-4
    memory = result["memory"]
    assert list(memory["mmjax"]) == ["imports", "state", "compiled", "steps"]
    assert list(memory["torch"]) == ["imports", "state", "steps"]
    for stages in (memory["mmjax"], memory["torch"]):
        peaks = [stage["peak_mib"] for stage in stages.values()]
        assert peaks == sorted(peaks) and all(stage["current_mib"] > 0 for stage in stages.values())
        assert sum(stage["peak_growth_mib"] for stage in stages.values()) == pytest.approx(peaks[-1])
    assert memory["mmjax"]["steps"]["peak_mib"] * 2**20 == result["summary"]["mmjax"]["peak_rss_bytes"]
    assert _positive(memory["mmjax_xla_step_mib"]["temp"])
    for profile in (result["mmjax"]["profile"], result["torch"]["eager"]["profile"]):
        assert _positive(profile["by_kind_ms"]["matmul"]) and profile["top_ops"]
        assert sum(profile["by_kind_ms"].values()) == pytest.approx(profile["busy_ms_per_step"])


@pytest.mark.slow
def test_bench_infer_quick(tmp_path):
    import bench_infer

    out = tmp_path / "infer.json"
    bench_infer.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"machine", "shapes", "summary", "mmjax", "torch"} <= set(result)
    assert set(result["summary"]) == {"mmjax av_digits", "mmjax twin", "torch eager"}
    for row in result["summary"].values():
        for key in ("batch1_p50_ms", "batch1_p99_ms", "batch32_examples_per_s"):
            assert _positive(row[key]), key
    assert _positive(result["summary"]["mmjax twin"]["throughput_speedup_vs_torch_eager"])
    assert _positive(result["mmjax"]["twin"]["xla_flops_batch32"])
    assert _positive(result["torch"]["flop_counter_flops_batch32"])
    assert result["twin_logits_max_abs_diff"] < 1e-4


@pytest.mark.xdist_group("smoke_run")  # with the other smoke_run tests (tests/test_predict.py)
def test_bench_infer_times_a_trained_run_through_the_predictor(smoke_run):
    import bench_infer

    from mmjax.data import av_digits_questions

    timing = bench_infer.predictor_latency(argparse.Namespace(workdir=str(smoke_run), warmup=1, calls=5))
    assert 0 < timing["model_p50_ms"] <= timing["model_p99_ms"]
    assert timing["call_p50_ms"] > timing["model_p50_ms"]  # decoding, features and tokenising come on top
    assert timing["restore_and_compile_s"] > 0 and timing["prediction"] in av_digits_questions.ANSWERS


@pytest.mark.slow
def test_bench_peft_quick(tmp_path):
    import bench_peft

    out = tmp_path / "peft.json"
    bench_peft.main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["variants"]
    assert set(rows) == {"full", "lora", "frozen"}
    trainable = {name: row["trainable_params"] for name, row in rows.items()}
    assert trainable["frozen"] < trainable["lora"] < trainable["full"] == rows["full"]["total_params"]
    assert rows["lora"]["total_params"] > rows["full"]["total_params"] == rows["frozen"]["total_params"]
    assert rows["full"]["speed_vs_full"] == 1.0
    # No weight gradients for frozen kernels; LoRA still back-propagates through the tower's activations.
    assert rows["frozen"]["step_gflop"] < rows["lora"]["step_gflop"] < rows["full"]["step_gflop"]
    for row in rows.values():
        assert _positive(row["examples_per_s"]) and row["n"] == 3
        assert row["examples_per_s"] == pytest.approx(row["batch_size"] / row["median_s"])


@pytest.mark.slow
def test_bench_port_quick(tmp_path):
    import bench_port

    out = tmp_path / "port.json"
    bench_port.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"vit_base", "bert_base"}
    for model in result["models"].values():
        assert _positive(model["checkpoint_bytes"])
        for loader in ("mmjax", "whole_file", "transformers"):
            for key in ("seconds_per_gb", "peak_over_checkpoint", "anonymous_peak_over_checkpoint"):
                assert _positive(model[loader][key]), (loader, key)
        assert _positive(model["mmjax"]["speedup_vs_transformers"])


@pytest.mark.slow
def test_bench_sharding_quick(tmp_path):
    import bench_sharding

    out = tmp_path / "sharding.json"
    bench_sharding.main(["--quick", "--batch", "8", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {row["mesh"]: row for row in result["meshes"]}
    assert list(rows) == ["data:8", "data:2,fsdp:4", "fsdp:8", "data:2,fsdp:2,tensor:2"]
    assert result["peer"] == "data:8" and rows["data:8"]["step_time_vs_peer"] == 1.0
    held = {mesh: row["state_bytes_per_device"] for mesh, row in rows.items()}
    assert held["data:8"] == rows["data:8"]["state_bytes_replicated"] > held["data:2,fsdp:4"] > held["fsdp:8"]
    for row in rows.values():  # the same model and batch: the same first loss on every mesh
        assert row["first_loss"] == pytest.approx(rows["data:8"]["first_loss"], rel=1e-5)
        assert _positive(row["step"]["median_s"]) and _positive(row["xla_bytes_per_device"]["argument"])
