#!/usr/bin/env bash
# Static checks of the package as it is installed (haq, haq.envs, haq.simulators): mypy, and
# the import contracts of pyproject.toml with import-linter. Neither tool can follow
# setuptools' editable package-dir mapping, so both check a copy laid out like the installed
# package; error paths read haq/envs/... for envs/... and haq/simulators/... for simulators/...
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r haq "$tmp/haq"
cp -r envs "$tmp/haq/envs"
cp -r simulators "$tmp/haq/simulators"
(cd "$tmp" && "$repo/.venv/bin/mypy" -p haq --config-file "$repo/pyproject.toml" --cache-dir "$repo/.mypy_cache")
(cd "$tmp" && PYTHONPATH="$tmp" "$repo/.venv/bin/lint-imports" --no-logo --no-cache "$repo/pyproject.toml")
