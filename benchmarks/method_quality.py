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

from haq.api import Workspace, make_problem, prepare, search
from haq.config import SearchConfig
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
    Problem("digits-mobilenet", "bitfusion", "latency=0.5"),  # the issues'; below BitFusion's reach on 8x8 images
    Problem("digits-mobilenet", "bitfusion", "latency=0.7"),  # haq's default problem
    Problem("digits-mobilenet", "bismo-edge", "latency=0.6"),
    Problem("digits-mobilenet", "bitfusion", "energy=0.8"),
    Problem("digits-resnet", "bitfusion", "latency=0.7"),
    Problem("digits-resnet", "bismo-edge", "latency=0.6"),
]

LIMIT = 300  #: the same evaluation limit for every method (a method may use fewer)
METHODS = [
    MethodRow("rl", evaluations=LIMIT, quick_options={"warmup_episodes": 10}),  # HAQ
    MethodRow("hawq", evaluations=LIMIT, quick_evaluations=3),  # HAWQ-V3 (uses ~5: ILP optimum + next-best)
    MethodRow("hago", evaluations=LIMIT),  # HAGO greedy walk + budget phase
    MethodRow("quantune", evaluations=LIMIT),  # XGBoost surrogate over schemes and bits
    MethodRow("pareto", evaluations=LIMIT),  # NSGA-II front (beyond the seeds)
    MethodRow("random", evaluations=LIMIT),
]


def exhaustive_limit(ws: Workspace, prob: Problem) -> tuple[float, float, int] | None:
    """The best policy of a sub-space small enough to enumerate, chosen on validation.

    Sub-space: every free layer group takes 4 or 8 bits (weights and activations alike),
    pinned layers stay at 8. Groups are single layers when there are at most 10 free
    layers (digits-resnet: 2^8 policies), else blocks - the module path up to its second
    component, e.g. ``features.3`` (digits-mobilenet: 2^6). Returns (test accuracy of the
    best feasible by validation, its validation accuracy, policies measured), or None when
    nothing in the sub-space meets the budget.
    """
    import itertools

    problem = make_problem(SearchConfig(model=prob.model, hardware=prob.hardware, budget=(prob.budget,),
                                        method="uniform"), ws)
    free = problem.free_layers
    if len(free) <= 10:
        groups = [[i] for i in free]
    else:
        by_block: dict[str, list[int]] = {}
        for i in free:
            by_block.setdefault(".".join(ws.layers[i].name.split(".")[:2]), []).append(i)
        groups = list(by_block.values())
    best: tuple[float, np.ndarray] | None = None
    measured = 0
    for combo in itertools.product((4, 8), repeat=len(groups)):
        bits = np.full(problem.n_layers, 8)
        for g, b in zip(groups, combo, strict=True):
            bits[g] = b
        if not problem.feasible(bits, bits):
            continue
        acc = ws.evaluator.evaluate(bits, bits, "val")
        measured += 1
        if best is None or acc > best[0]:
            best = (acc, bits)
    if best is None:
        return None
    return ws.evaluator.evaluate(best[1], best[1], "test"), best[0], measured


EXHAUSTIVE: Callable[[Workspace, Problem], tuple[float, float, int] | None] | None = exhaustive_limit


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
        primary = problem.primary
        field_name = {"latency": "latency_ms", "energy": "energy_mj", "size": "size_mib", "bops": "bops_g"}[primary]
        ref = ws.costs.uniform(8).get(primary)
        eight = np.full(len(ws.layers), 8)
        fp32 = ws.evaluator.fp32_accuracy("test")
        acc8 = ws.evaluator.evaluate(eight, eight, "test")
        uni = search(model=prob.model, hardware=prob.hardware, budget=prob.budget, method="uniform", workspace=ws)
        up = uni.best_policy
        u_acc, u_ratio = up.metrics["accuracy"], up.metrics[field_name] / ref
        limit = EXHAUSTIVE(ws, prob) if EXHAUSTIVE is not None and not args.quick else None
        print(f"fp32 test accuracy {pct(fp32)}%; uniform 8-bit {pct(acc8)}% at {primary} 1.000; "
              f"best feasible uniform w{up.w_bits[1]}a{up.a_bits[1]} {pct(u_acc)}% at {u_ratio:.3f} "
              f"({uni.evaluations} evaluations)")
        if limit is None:
            print("exhaustive optimum on the {4,8}-per-group sub-space: n/a (skipped in --quick, or none feasible)")
        else:
            print(f"exhaustive optimum on the {{4,8}}-per-group sub-space ({limit[2]} feasible policies measured): "
                  f"test {pct(limit[0])}% (val {pct(limit[1])}%)")
        print(f"| method | test acc % (mean ± std, {len(seeds)} seeds) | val acc % | {primary} / uniform-8 | "
              "evaluations | wall s | >= best uniform | fp32 - acc (pt) | bar (1 pt) | goal (0.5 pt) | gap to limit (pt) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in methods:
            n = row.quick_evaluations if args.quick else row.evaluations
            if n == 0:
                continue
            opts = {**row.options, **(row.quick_options if args.quick else {})}
            accs, vals, ratios, evals, walls = [], [], [], [], []
            for seed in seeds:
                t = time.perf_counter()
                res = search(model=prob.model, hardware=prob.hardware, budget=prob.budget, method=row.method, workspace=ws, seed=seed,
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
                  f"{'yes' if drop <= 0.5 else 'no'} | "
                  f"{'n/a' if limit is None else f'{100 * (limit[0] - mean):+.2f}'} |")


if __name__ == "__main__":
    main()
