#!/usr/bin/env bash
# Create or refresh .venv at the repo root with haq and its pinned dependencies.
# Reused as long as pyproject.toml is unchanged (its hash is stored in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=".venv/.haq-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "haq: setting up .venv (torch==2.14.1 and friends; a few minutes the first time)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,ray]" 2>&1 \
  | grep -v "^WARNING: Location '.*' is ignored" >&2 || true
.venv/bin/python -c "import haq, torch, torchvision, stable_baselines3, xgboost" \
  || { echo "haq: setup failed; see the pip output above" >&2; exit 1; }
rm -f .venv/.haq-setup-*
touch "$stamp"
