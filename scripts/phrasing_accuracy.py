"""Answer accuracy of an AV-Digits run for each phrasing of question files, scored alone.

    .venv/bin/python scripts/phrasing_accuracy.py WORKDIR FILE [FILE ...] [--split test]

A question file ({question_type: [phrasings]}) gives each test question one of its type's phrasings, so a
file's accuracy mixes them. This evaluates the run once per slot i, every type asking its i-th phrasing
(types with fewer phrasings ask their last), and prints each phrasing's accuracy on its type's questions.
The evaluations are written as eval_<split>_questions-<file stem>-<i>.json in WORKDIR.
"""

import argparse
import contextlib
import io
import json
import pathlib
import sys
import tempfile

from mmjax import evaluate
from mmjax.data.av_digits_questions import load_questions


def slots(questions: dict[str, list[str]]) -> list[dict[str, list[str]]]:
    """One question file per slot i: every type asks its i-th phrasing (its last if it has fewer)."""
    count = max(len(p) for p in questions.values())
    return [{t: [p[min(i, len(p) - 1)]] for t, p in questions.items()} for i in range(count)]


def phrasing_accuracy(workdir: pathlib.Path, file: pathlib.Path, split: str) -> list[tuple[str, str, float]]:
    """(question type, phrasing, answer accuracy on that type's questions) for every phrasing of `file`."""
    questions = load_questions(file)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, one in enumerate(slots(questions)):
            path = pathlib.Path(tmp) / f"{file.stem}-{i}.json"
            path.write_text(json.dumps(one))
            with contextlib.redirect_stdout(io.StringIO()):
                summary = evaluate.main(workdir, split, questions=str(path))
            rows += [
                (t, p[0], summary[f"answer/accuracy/{t}"]) for t, p in one.items() if i < len(questions[t])
            ]
    return rows


def main(argv: list[str]) -> dict[str, list[tuple[str, str, float]]]:
    parser = argparse.ArgumentParser(prog="scripts/phrasing_accuracy.py", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("files", type=pathlib.Path, nargs="+")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    args = parser.parse_args(argv)
    results = {}
    for file in args.files:
        results[file.stem] = phrasing_accuracy(args.workdir, file, args.split)
        for qtype, phrasing, accuracy in results[file.stem]:
            print(f"{file.stem:<24}{qtype:<15}{accuracy:7.3f}  {phrasing}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
