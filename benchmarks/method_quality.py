"""How good each search method's policy is, on the same problems (design §11).

For every problem (model, hardware, budget) it prints fp32, uniform 8-bit and the best
uniform policy that meets the budget, then one row per search method: test accuracy mean
± std over seeds, the policy's cost relative to uniform 8-bit, evaluations used and wall
time, and whether it clears the bar: test accuracy >= the best feasible uniform policy and
within 1 pt of fp32 (goal: 0.5 pt).

Adding a method is one line in ``METHODS``. The column ``exhaustive`` is the accuracy limit
on a small sub-space: plug a function into ``EXHAUSTIVE`` (see its comment).

    python benchmarks/method_quality.py           # 3 seeds, every problem
    python benchmarks/method_quality.py --quick   # 1 seed, first problem, 30 episodes (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from haq.api import SearchConfig, Workspace, make_problem, prepare, search
from haq.errors import BudgetError


@dataclass(frozen=True)
class Problem:
    model: str
    hardware: str
    budget: str

    def __str__(self) -> str:
        return f"{self.model} / {self.hardware} / {self.budget}"


@dataclass(frozen=True)
class MethodRow:
    """One method in the table: its name, evaluations per search (None: the method's
    default) and options (``haq.api.search`` keyword arguments)."""

    method: str
    evaluations: int | None = None
    label: str = ""  #: table label; default "<method> <evaluations>"
    options: dict[str, Any] = field(default_factory=dict)
    quick_evaluations: int = 30
    quick_options: dict[str, Any] = field(default_factory=dict)


PROBLEMS = [
    Problem("digits-mobilenet", "bitfusion", "latency=0.5"),  # the issue's; below BitFusion's reach on 8x8 images
    Problem("digits-mobilenet", "bitfusion", "latency=0.7"),  # haq's default problem
    Problem("digits-mobilenet", "bismo-edge", "latency=0.5"),
    Problem("digits-mobilenet", "bitfusion", "energy=0.8"),
]

METHODS = [
    MethodRow("rl", evaluations=300, quick_options={"warmup_episodes": 10}),  # HAQ, the speed goal's length
    MethodRow("rl", evaluations=600, quick_evaluations=0),  # HAQ's own length (rl_quantize.py --train_episode)
]

# Hook for the limit column: a function (workspace, problem) -> best test accuracy in [0, 1]
# of an exhaustive search over a small sub-space (e.g. two bit choices for a few layers,
# the rest fixed), or None. Left empty until that search exists.
EXHAUSTIVE: Callable[[Workspace, Problem], float | None] | None = None


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, one problem, few evaluations")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else list(range(args.seeds))
    methods = [m for m in METHODS if args.methods is None or m.method in args.methods.split(",")]
    problems = PROBLEMS
    print(f"torch threads {torch.get_num_threads()}, seeds {seeds}")
    done_one = False
    workspaces: dict[tuple[str, str], Workspace] = {}
    for prob in problems:
        if args.quick and done_one:
            break
        key = (prob.model, prob.hardware)
        if key not in workspaces:
            workspaces[key] = prepare(SearchConfig(model=prob.model, hardware=prob.hardware))
        ws = workspaces[key]
        cfg = SearchConfig(model=prob.model, hardware=prob.hardware, budget=(prob.budget,), method="uniform")
        print(f"\n## {prob}")
        try:
            problem = make_problem(cfg, ws)
        except BudgetError as exc:
            print(f"unreachable: {exc}")
            continue
        done_one = True
        primary = problem.budget.primary
        field_name = {"latency": "latency_ms", "energy": "energy_mj", "size": "size_mib", "bops": "bops_g"}[primary]
        ref = ws.costs.uniform(8).get(primary)
        eight = np.full(len(ws.layers), 8)
        fp32 = ws.evaluator.fp32_accuracy("test")
        acc8 = ws.evaluator.evaluate(eight, eight, "test")
        uni = search(prob.model, prob.hardware, prob.budget, method="uniform", workspace=ws)
        up = uni.best_policy
        u_acc, u_ratio = up.metrics["accuracy"], up.metrics[field_name] / ref
        limit = EXHAUSTIVE(ws, prob) if EXHAUSTIVE is not None else None
        print(f"fp32 test accuracy {pct(fp32)}%; uniform 8-bit {pct(acc8)}% at {primary} 1.000; "
              f"best feasible uniform w{up.w_bits[1]}a{up.a_bits[1]} {pct(u_acc)}% at {u_ratio:.3f} "
              f"({uni.evaluations} evaluations)")
        print(f"exhaustive optimum on a sub-space: {'n/a (hook EXHAUSTIVE)' if limit is None else pct(limit) + '%'}")
        print(f"| method | test acc % (mean ± std, {len(seeds)} seeds) | val acc % | {primary} / uniform-8 | "
              "evaluations | wall s | >= best uniform | fp32 - acc (pt) | bar (1 pt) | goal (0.5 pt) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in methods:
            n = row.quick_evaluations if args.quick else row.evaluations
            if n == 0:
                continue
            opts = {**row.options, **(row.quick_options if args.quick else {})}
            accs, vals, ratios, evals, walls = [], [], [], [], []
            for seed in seeds:
                t = time.perf_counter()
                res = search(prob.model, prob.hardware, prob.budget, method=row.method, workspace=ws, seed=seed,
                             max_evaluations=n, **opts)
                walls.append(time.perf_counter() - t)
                m = res.best_policy.metrics
                accs.append(m["accuracy"])
                vals.append(m["val_accuracy"])
                ratios.append(m[field_name] / ref)
                evals.append(res.evaluations)
            mean = statistics.fmean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            drop = 100 * (fp32 - mean)
            label = row.label or f"{row.method} {n if n is not None else '(default)'}"
            print(f"| {label} | {pct(mean)} ± {100 * std:.2f} | {pct(statistics.fmean(vals))} | "
                  f"{statistics.fmean(ratios):.3f} | {statistics.fmean(evals):.0f} | {statistics.fmean(walls):.0f} | "
                  f"{'yes' if mean >= u_acc else 'no'} | {drop:.2f} | {'yes' if drop <= 1.0 else 'no'} | "
                  f"{'yes' if drop <= 0.5 else 'no'} |")


if __name__ == "__main__":
    main()
