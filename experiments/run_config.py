"""Run a search from a config file: one of experiments/configs/*.json, or any run's
config.json (which reruns that run exactly). The CLI does the same with
``haq search --config FILE --out DIR``.

    .venv/bin/python experiments/run_config.py experiments/configs/rl_bitfusion.json --out runs/rl
    .venv/bin/python experiments/run_config.py runs/rl/config.json --out runs/rl-again
"""

from __future__ import annotations

import argparse
import sys

from haq.api import search
from haq.config import SearchConfig
from haq.errors import HaqError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a SearchConfig as JSON or TOML")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    try:
        config = SearchConfig.from_file(args.config)
        result = search(config, out=args.out, resume=args.resume)
    except (HaqError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = result.best_policy.metrics
    print(f"{config.method}: test accuracy {100 * m['accuracy']:.2f}% at latency {m['latency_ms']} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
