"""One JSON from scripts/gpu_check.sh's parts: the parity tests' JUnit XML and each bench_train.py run's JSON
(a run without one is reported with the end of its log), with a table of step times and speed ratios.

  python scripts/gpu_report.py --parity parity.xml --logs DIR --out gpu_check.json NAME=RUN.json ...
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402


def parity_summary(path: Path) -> dict:
    """Counts of the JUnit report's tests by outcome, and the ids of those that failed or errored."""
    if not path.is_file():
        return {"error": f"no test report at {path} (pytest did not finish)"}
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "")
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(outcome, "passed")
        counts[key] += 1
        if key in ("failed", "errors"):
            failures.append(f"{case.get('classname')}::{case.get('name')}")
    return counts | {"failures": failures}


def run_result(name: str, path: Path, logs: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    log = logs / f"{name}.log"
    tail = log.read_text()[-3000:] if log.is_file() else ""
    return {"error": f"no result (timed out or failed); log tail: {tail}"}


def summary_rows(runs: dict[str, dict]) -> list[list]:
    """[run, device, mmjax step s, torch eager s, torch.compile s, speed vs eager, vs compile, loss diff]."""
    rows = []
    for name, result in runs.items():
        s = result.get("summary")
        if not s:
            rows.append([name, "error", "-", "-", "-", "-", "-", "-"])
            continue
        step = {k: v["step_s"] for k, v in s.items()}
        device = result["torch"].get("device", "cpu")
        rows.append(
            [
                name,
                device,
                step["mmjax"],
                step["torch_eager"],
                step.get("torch_compile", "-"),
                s["mmjax"]["speedup_vs_torch_eager"],
                s["mmjax"].get("speedup_vs_torch_compile", "-"),
                result["twin_loss_abs_diff"],
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parity", required=True, help="pytest's --junitxml report")
    p.add_argument("--logs", required=True, help="folder of the runs' NAME.log files")
    p.add_argument("--out", required=True, help="the JSON to write")
    p.add_argument("runs", nargs="*", help="NAME=PATH of each bench_train.py JSON")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        runs[name] = run_result(name, Path(path), Path(args.logs))
    rows = summary_rows(runs)
    header = ["run", "torch device", "mmjax s", "eager s", "compile s", "vs eager", "vs compile", "loss diff"]
    result = {
        "machine": bc.versions(),
        "parity": parity_summary(Path(args.parity)),
        "summary": [dict(zip(header, row, strict=True)) for row in rows],
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    parity = result["parity"]
    print("parity tests:", {k: v for k, v in parity.items() if k != "failures"}, *parity.get("failures", []))
    bc.print_table(rows, header)
    print(f"mmjax gpu_check: wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
