#!/usr/bin/env bash
# Set up .venv, train the default AV-Digits experiment (cross-attention fusion), evaluate it on the test split
# (with 6 attention maps) and write its report ($workdir/report.html).
# Extra arguments go to the trainer, e.g. `scripts/demo.sh --config.train.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir="${MMJAX_DEMO_WORKDIR:-runs/av_digits}"
.venv/bin/python -m mmjax.train --config experiments/av_digits.py --workdir "$workdir" "$@"
.venv/bin/python -m mmjax.evaluate --workdir "$workdir" --split test --explain 6
.venv/bin/python -m mmjax.report "$workdir"
.venv/bin/python scripts/vs_baseline.py "$workdir"
