#!/usr/bin/env bash
# One command: set up .venv (reused when current), lint and type-check, run the test
# suite, then every benchmark in its quick mode (they print their figures and fail on a
# missed target). Arguments go to pytest and skip the rest (e.g. scripts/test.sh tests/test_policy.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HAQ_CACHE_DIR="${HAQ_CACHE_DIR:-$PWD/.cache/haq}"
export MPLBACKEND=Agg
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -ra "$@"
fi
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy + import contracts" && bash scripts/typecheck.sh
echo "== pytest" && .venv/bin/python -m pytest -q -ra --timeout=900
echo "== benchmarks (quick)" && .venv/bin/python benchmarks/run_all.py --quick
