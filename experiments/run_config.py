"""Run a search from a JSON config: one of experiments/configs/*.json, or any run's
config.json (which reruns that run exactly).

    .venv/bin/python experiments/run_config.py experiments/configs/rl_bitfusion.json --out runs/rl
    .venv/bin/python experiments/run_config.py runs/rl/config.json --out runs/rl-again
"""

from __future__ import annotations

import argparse
import json
import sys

from haq.api import SearchConfig
from haq.errors import HaqError
from haq.runs import run_search


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a SearchConfig as JSON")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    try:
        with open(args.config) as f:
            config = SearchConfig.from_dict(json.load(f))
        result = run_search(config, args.out, resume=args.resume)
    except (HaqError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.best_policy.metrics
    print(f"{config.method}: test accuracy {100 * m['accuracy']:.2f}% at latency {m['latency_ms']} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
