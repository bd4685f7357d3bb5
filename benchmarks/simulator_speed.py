"""Speed of a policy's hardware cost: µs per query after the per-model table is built.

Design target: <= 100 µs per query for a 50-layer model (issue goal <= 20 µs). Prints, per
hardware model on torchvision ResNet-50 (54 layers): the one-time table build, and the
median µs of one full cost query (latency + energy + size + BOPs via CostModel.cost) and
of the bare latency/energy gather (CostTable.cost) over random mixed policies.

    .venv/bin/python benchmarks/simulator_speed.py [--quick]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torchvision

from haq.api import bit_choices
from haq.budget import CostModel
from haq.layers import describe
from haq.simulators import get_hardware

TARGET_US = 100.0
GOAL_US = 20.0


def main(quick: bool) -> int:
    layers = describe(torchvision.models.resnet50(), (3, 224, 224))
    n_queries = 2_000 if quick else 20_000
    rng = np.random.default_rng(0)
    print(f"resnet50: {len(layers)} layers, {n_queries} random policies per hardware model")
    print(f"{'hardware':<12} {'build s':>8} {'cost µs':>8} {'gather µs':>9}")
    worst = 0.0
    for name in ("bitfusion", "bismo-edge", "bismo-cloud", "gpu-h100", "cpu"):
        if quick and name == "cpu":
            continue  # profiling ResNet-50's shapes takes minutes; the cost query is the same code
        hw = get_hardware(name)
        t = time.perf_counter()
        table = hw.cost_table(layers)
        build = time.perf_counter() - t
        costs = CostModel(layers, table)
        choices = bit_choices(hw, layers)
        ws = np.array([[rng.choice(c) for c in choices] for _ in range(256)])
        as_ = np.array([[rng.choice(c) for c in choices] for _ in range(256)])
        full, gather = [], []
        for _rep in range(n_queries // 256 + 1):
            t = time.perf_counter()
            for w, a in zip(ws, as_, strict=True):
                costs.cost(w, a)
            full.append((time.perf_counter() - t) / len(ws))
            t = time.perf_counter()
            for w, a in zip(ws, as_, strict=True):
                table.cost(w, a)
            gather.append((time.perf_counter() - t) / len(ws))
        us, gus = 1e6 * float(np.median(full)), 1e6 * float(np.median(gather))
        worst = max(worst, us)
        print(f"{name:<12} {build:>8.3f} {us:>8.1f} {gus:>9.1f}")
    verdict = "goal met" if worst <= GOAL_US else ("target met" if worst <= TARGET_US else "TARGET MISSED")
    print(f"worst full query {worst:.1f} µs (goal {GOAL_US:.0f}, target {TARGET_US:.0f}): {verdict}")
    return 0 if worst <= TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
