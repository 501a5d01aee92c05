"""scripts/gpu_check.sh --cpu: the GPU check runs end to end at tiny sizes on the CPU (parity test, four timed
runs, one JSON), so the script is ready for a GPU machine; gpu_report.py reads failed parts as failures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_report  # noqa: E402


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["parity"]["passed"] >= 1 and result["parity"]["failed"] == result["parity"]["errors"] == 0
    runs = result["runs"]
    assert set(runs) == {"bench_float32", "bench_bfloat16", "experiment_float32", "experiment_bfloat16"}
    for name, run in runs.items():
        assert "summary" in run, (name, run.get("error", "")[-2000:])
        assert run["torch"]["device"] == "cpu" and run["torch"]["dtype"] == name.split("_")[1]
        assert run["mmjax"]["switches"]["dtype"] == name.split("_")[1]
    assert runs["experiment_float32"]["shapes"]["experiment"] == "av_digits:size=tiny,text=cached"
    assert runs["bench_float32"]["twin_loss_abs_diff"] < 1e-4
    assert [row["run"] for row in result["summary"]] == list(runs)
    assert "mmjax gpu_check: wrote" in proc.stdout


def test_report_counts_parity_outcomes_and_reports_a_run_without_json(tmp_path):
    (tmp_path / "parity.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><failure message="x"/></testcase>'
        '<testcase classname="tests.b" name="t3"><skipped/></testcase></testsuite></testsuites>'
    )
    (tmp_path / "bench_float32.log").write_text("Traceback ...\nRuntimeError: CUDA out of memory")
    out = tmp_path / "out.json"
    result = gpu_report.main(
        [
            "--parity",
            str(tmp_path / "parity.xml"),
            "--logs",
            str(tmp_path),
            "--out",
            str(out),
            f"bench_float32={tmp_path / 'missing.json'}",
        ]
    )
    assert result["parity"] == {
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "skipped": 1,
        "failures": ["tests.a::t2"],
    }
    assert "CUDA out of memory" in result["runs"]["bench_float32"]["error"]
    assert result["summary"][0]["torch device"] == "error"
    assert json.loads(out.read_text()) == result
    missing = gpu_report.parity_summary(tmp_path / "none.xml")
    assert "did not finish" in missing["error"]
