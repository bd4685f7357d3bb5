#!/usr/bin/env bash
# One command: set up .venv (reused when current), run the test suite, then every
# benchmark in its quick mode (they print their figures and fail on a missed target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HAQ_CACHE_DIR="${HAQ_CACHE_DIR:-$PWD/.cache/haq}"
export MPLBACKEND=Agg
.venv/bin/python -m pytest -q -ra --timeout=900 "$@"
if [ "$#" -eq 0 ]; then
  .venv/bin/python benchmarks/run_all.py --quick
fi
