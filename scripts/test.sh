#!/usr/bin/env bash
# Set up .venv with the dev extra and run the test suite (8 fake CPU devices). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m pytest -q "$@"
