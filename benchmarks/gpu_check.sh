#!/usr/bin/env bash
# One command for a lent GPU (<= 7 minutes): prints the figures issue 10 asks for.
#   1. benchmarks/real_model_scale.py on CUDA (ResNet-18/50, MobileNetV2 at 224);
#   2. `haq profile --hardware gpu` of ResNet-50 and MobileNetV2 compared row by row with
#      ../shared/reference/h100_layer_latency.csv (median ratio measured / H100 per precision,
#      and the card's name);
#   3. a 100-episode RL search of ResNet-18 on a generated ImageFolder (episodes/s).
# Usage (repo root, .venv set up): bash benchmarks/gpu_check.sh [OUT_DIR]
# On a GPU machine with its own torch and no network (the lent H200: Python 3.12, torch 2.11),
# carry haq's missing dependencies as wheels (gymnasium, farama-notifications,
# stable-baselines3, xgboost-cpu, jsonschema and its referencing/rpds-py/specifications,
# platformdirs, typer, click, pydantic and pydantic-core, annotated-types, typing-inspection,
# typing-extensions) plus `pip wheel --no-deps .`, install them with
# `pip install --no-index --no-deps --target /tmp/site`, export PYTHONPATH=/tmp/site, and run
# with PYTHON=python3 and HAQ a wrapper that runs `python3 -P -c 'from haq.cli import main; main()'`
# (-P: the repo's haq/ folder must not shadow the installed package). Run pytest from another
# directory with --import-mode=append for the same reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
HAQ=${HAQ:-.venv/bin/haq}
OUT=${1:-${OUT:-/tmp/haq-gpu-check}}
REF=${REF:-../shared/reference/h100_layer_latency.csv}
mkdir -p "$OUT"
export HAQ_CACHE_DIR=${HAQ_CACHE_DIR:-$PWD/.cache/haq} MPLBACKEND=Agg
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script needs a GPU')"
"$PY" -c "import torch; print('card:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

echo "== 1. real models on CUDA (timeout 170 s)"
timeout 170 "$PY" benchmarks/real_model_scale.py --device cuda --images 500 --repeats 5 || echo "real_model_scale: exit $?"

echo "== 2. haq profile --hardware gpu vs $REF (timeout 120 s)"
for m in resnet50 mobilenet_v2; do
  timeout 60 "$HAQ" profile --hardware gpu --model "$m" --batch 1 --quiet --out "$OUT/$m-gpu.csv" || echo "profile $m: exit $?"
done
"$PY" - "$OUT" "$REF" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
out, ref_path = Path(sys.argv[1]), Path(sys.argv[2])
if not ref_path.is_file():
    sys.exit(f"reference {ref_path} not found (set REF=...)")
ref = pd.read_csv(ref_path, comment="#")
for model in ("resnet50", "mobilenet_v2"):
    p = out / f"{model}-gpu.csv"
    if not p.is_file():
        print(f"{model}: no profile written"); continue
    got = pd.read_csv(p, comment="#")
    r = ref[(ref["model"] == model) & (ref["batch"] == 1)]
    both = got.merge(r, on="layer", suffixes=("", "_ref"))
    cols = [c for c in got.columns if c.endswith("_ms") and c in r.columns]
    print(f"{model}: {len(got)} rows measured, {len(r)} in the reference, {len(both)} matched by layer")
    for c in cols:
        ratio = (both[c] / both[c + "_ref"]).replace([float("inf")], float("nan")).dropna()
        if len(ratio):
            print(f"  {c}: median measured/H100 {ratio.median():.2f} (p10 {ratio.quantile(0.1):.2f}, p90 {ratio.quantile(0.9):.2f}, {len(ratio)} rows)")
PYEOF

echo "== 3. 100-episode RL search of ResNet-18 on a generated ImageFolder (timeout 140 s)"
DATA="$OUT/imagefolder"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from _imagefolder import make_imagefolder; from pathlib import Path; make_imagefolder(Path('$DATA'), 200, size=256)"
rm -rf "$OUT/rl-run"
start=$(date +%s.%N)
timeout 140 "$HAQ" search --model resnet18 --data "imagefolder:$DATA" --hardware bitfusion --method rl --episodes 100 \
  --device cuda --quiet --out "$OUT/rl-run" > "$OUT/rl.log" 2>&1 || echo "rl search: exit $? (see $OUT/rl.log)"
end=$(date +%s.%N)
"$PY" - "$OUT/rl-run/history.csv" "$start" "$end" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
h, start, end = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n = len(pd.read_csv(h)) if h.is_file() else 0
wall = end - start
print(f"rl: {n} episodes in {wall:.1f} s (with start-up) = {n / wall:.2f} episodes/s")
PYEOF
