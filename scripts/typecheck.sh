#!/usr/bin/env bash
# Type-check the package as it is installed (haq, haq.envs, haq.simulators). mypy cannot
# follow setuptools' editable package-dir mapping, so it checks a copy laid out like the
# installed package; error paths read haq/envs/... for envs/... and haq/simulators/... for
# simulators/...
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r haq "$tmp/haq"
cp -r envs "$tmp/haq/envs"
cp -r simulators "$tmp/haq/simulators"
(cd "$tmp" && "$OLDPWD/.venv/bin/mypy" -p haq --ignore-missing-imports --cache-dir "$OLDPWD/.mypy_cache")
