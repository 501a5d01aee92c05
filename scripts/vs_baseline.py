"""A trained AV-Digits run's test answer accuracy beside the classical baseline's, overall and per question
type (the last step of scripts/demo.sh).

    .venv/bin/python scripts/vs_baseline.py WORKDIR [--eval eval_test.json]
        [--baseline experiments/results/classical_baseline.json]

The baseline JSON is what scripts/classical_baseline.py writes (deterministic; rerun it to check). Each row
says whether the run is above, level with (both perfect) or below the baseline.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASELINE = ROOT / "experiments" / "results" / "classical_baseline.json"


def rows(run_metrics: dict, baseline: dict) -> list[tuple[str, float, float]]:
    """(question type or "all questions", run accuracy, baseline accuracy), in the baseline's order."""
    table = [("all questions", run_metrics["answer/accuracy"], baseline["answer"])]
    for qtype, value in baseline["answer_by_question_type"].items():
        key = f"answer/accuracy/{qtype}"
        if key not in run_metrics:
            raise ValueError(f"the evaluation has no {key}: was it run on AV-Digits' test split?")
        table.append((qtype, run_metrics[key], value))
    return table


def verdict(ours: float, theirs: float) -> str:
    if round(ours, 3) > round(theirs, 3):
        return "above"
    if round(ours, 3) == round(theirs, 3):
        return "level (both perfect)" if round(ours, 3) == 1.0 else "level"
    return "BELOW"


def format_rows(table: list[tuple[str, float, float]]) -> str:
    lines = [f"{'test answer accuracy':<22}{'mmjax':>8}{'classical':>11}"]
    lines += [
        f"{name:<22}{ours:>8.3f}{theirs:>11.3f}   {verdict(ours, theirs)}" for name, ours, theirs in table
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/vs_baseline.py", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--eval", default="eval_test.json", help="the run's evaluation file")
    parser.add_argument("--baseline", type=pathlib.Path, default=BASELINE)
    args = parser.parse_args(argv)
    path = args.workdir / args.eval
    if not path.is_file():
        sys.exit(f"scripts/vs_baseline.py: {path} does not exist: run python -m mmjax.evaluate first")
    report = json.loads(path.read_text())
    print(format_rows(rows(report["metrics"], json.loads(args.baseline.read_text()))))


if __name__ == "__main__":
    main(sys.argv[1:])
