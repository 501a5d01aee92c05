#!/usr/bin/env bash
# Set up .venv (dev tools, transformers + torch for the parity tests) and run the test suite on 8 fake CPU
# devices. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,parity
# Two pytest workers: XLA compiles on one thread, so two test processes keep both cores busy. loadgroup keeps
# the tests of one xdist_group (those sharing a trained run) on one worker. A crashed worker (e.g. out of memory)
# ends the run instead of hanging it (loadgroup does not hand a dead worker's tests to its replacement). The 15
# slowest tests are listed at the end, to keep the default run within its time budget.
.venv/bin/python -m pytest -q -n 2 --dist loadgroup --max-worker-restart=0 --durations=15 "$@"
