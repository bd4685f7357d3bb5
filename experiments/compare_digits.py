"""Every method on both embedded models and two hardware targets, same evaluation limit.

One readable file (CleanRL-style): the settings on top, a linear body. Writes
runs/compare-<model>-<hardware>/ per problem and prints each comparison table.

    .venv/bin/python experiments/compare_digits.py            # full: 3 seeds, 100 evaluations
    .venv/bin/python experiments/compare_digits.py --quick    # 1 seed, 30 evaluations
    ... --resume continues interrupted comparisons, --force overwrites finished ones
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from haq.compare import compare, to_markdown
from haq.config import SearchConfig


@dataclass
class Args:
    models: tuple[str, ...] = ("digits-mobilenet", "digits-resnet")
    problems: tuple[tuple[str, str], ...] = (("bitfusion", "latency=0.7"), ("bismo-edge", "latency=0.6"))
    methods: tuple[str, ...] = ("rl", "hawq", "hago", "quantune", "random", "uniform")
    max_evaluations: int = 100
    seeds: int = 3


args = Args(max_evaluations=30, seeds=1) if "--quick" in sys.argv else Args()
for model in args.models:
    for hardware, budget in args.problems:
        config = SearchConfig(model=model, hardware=hardware, budget=(budget,), max_evaluations=args.max_evaluations)
        table = compare(config, list(args.methods), seeds=args.seeds, out=f"runs/compare-{model}-{hardware}",
                        resume=Path(f"runs/compare-{model}-{hardware}/config.json").is_file() and "--resume" in sys.argv,
                        force="--force" in sys.argv)
        print(f"\n## {model} on {hardware}, budget {budget}\n")
        print(to_markdown(table))
