"""Which selection rule picks a policy that holds on data the search never saw (issue 9).

For each method, each problem of ``benchmarks/method_quality.py`` (the feasible ones) and each
seed, one search is run (the methods' proposals do not depend on the selection rule), then
every rule chooses from the same measured trials:

* ``val`` - the highest validation accuracy (HAQ's rule);
* ``kl`` / ``agreement`` - the top-k (16) distinct feasible trials by validation accuracy; those
  within one standard error of the best validation accuracy re-ranked by KL divergence to /
  top-1 agreement with fp32 on the fidelity set (every non-test image)
  (:func:`haq.methods.base.rerank`, what a search runs).

It prints, per method, problem and rule, the mean test accuracy of the chosen policy, its gap
to the oracle (the best test accuracy among the distinct feasible policies the search
measured) and the validation-test gap. Goal: the default rule's mean gap to the oracle <= 0.5
pt and never worse than ``val`` by more than one test image on any problem (method x problem,
mean over seeds).

    python benchmarks/selection_quality.py                  # 3 seeds, 300 evaluations (quantune 100)
    python benchmarks/selection_quality.py --save sel.json  # also keep every run's candidates
    python benchmarks/selection_quality.py --rescore sel.json   # the tables again, no search
    python benchmarks/selection_quality.py --quick          # 1 seed, 24 evaluations, 2 methods (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_quality import PROBLEMS  # noqa: E402

from haq.api import make_problem, method_options, open_ledger, prepare  # noqa: E402
from haq.config import DEFAULT_SELECT, SELECT_RULES, SearchConfig  # noqa: E402
from haq.errors import HaqError  # noqa: E402
from haq.methods import get_method, run_method  # noqa: E402
from haq.methods.base import rerank  # noqa: E402

METHODS = ("rl", "hawq", "hago", "quantune", "pareto", "random", "uniform")
EVALUATIONS = {"quantune": 100}  #: its default; the others get --evaluations
TOP_K = 16  #: the default --select-top-k
SKIP = {("digits-mobilenet", "bitfusion", "latency=0.5")}  #: beyond BitFusion's reach: nothing feasible to choose


def search_candidates(model: str, hardware: str, budget: str, method: str, seed: int, n_eval: int,
                      ws: Any) -> dict[str, Any]:
    """One search; every distinct feasible policy it measured with its validation accuracy,
    cost and test accuracy, and KL/agreement for the top ``TOP_K`` by validation accuracy."""
    cfg = SearchConfig(model=model, hardware=hardware, budget=(budget,), method=method, seed=seed,
                       max_evaluations=n_eval, select="val")
    spec, opts = get_method(method), method_options(cfg)
    problem = make_problem(cfg, ws, opts)
    ledger = open_ledger(problem, ws, spec)
    run_method(spec, problem, ledger, opts)
    key = problem.primary
    seen: dict[tuple, Any] = {}
    for t in ledger.trials:
        if t.feasible:
            seen.setdefault((t.w_bits.tobytes(), t.a_bits.tobytes(), t.scheme), t)
    # the order a search ranks them in: validation accuracy, then cost, then first measured
    pool = sorted(seen.values(), key=lambda t: (-t.accuracy, t.cost.get(key) or 0.0, t.index))
    test = ws.evaluator.accuracies([(t.w_bits, t.a_bits, t.scheme or problem.scheme) for t in pool], "test")
    fid = ledger.fidelities(pool[:TOP_K])
    rows = [{"val": float(t.accuracy), "test": float(a), "cost": t.cost.get(key) or 0.0,
             "kl": fid[i][0] if i < len(fid) else None, "agreement": fid[i][1] if i < len(fid) else None}
            for i, (t, a) in enumerate(zip(pool, test, strict=True))]
    return {"model": model, "hardware": hardware, "budget": budget, "method": method, "seed": seed,
            "n_val": ledger.split_size("val"), "n_test": ledger.split_size("test"), "candidates": rows}


def chosen(run: dict[str, Any], rule: str) -> dict[str, Any]:
    """The candidate ``rule`` returns (what :func:`haq.methods.base.choose` does), as its row."""
    rows = run["candidates"]
    if rule == "val":
        return rows[0]
    top = rows[:TOP_K]
    i, _ = rerank(rule, [r["val"] for r in top], [r["kl"] for r in top], [r["agreement"] for r in top], run["n_val"])
    return top[i]


def report(runs: list[dict[str, Any]]) -> bool:
    """Print the table and the verdict; True when the goal is met."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run["candidates"]:
            groups.setdefault((run["method"], run["model"], run["hardware"], run["budget"]), []).append(run)
    gaps: dict[str, list[float]] = {r: [] for r in SELECT_RULES}
    worse_than_val: list[str] = []
    print("| method | problem | rule | test acc % (chosen) | gap to oracle (pt) | val - test (pt) |")
    print("|---|---|---|---|---|---|")
    for (method, model, hardware, budget), group in groups.items():
        mean_acc: dict[str, float] = {}
        for rule in SELECT_RULES:
            accs = [chosen(run, rule)["test"] for run in group]
            oracle = [max(r["test"] for r in run["candidates"]) for run in group]
            val = [chosen(run, rule)["val"] for run in group]
            mean_acc[rule] = statistics.mean(accs)
            gap = statistics.mean(o - a for o, a in zip(oracle, accs, strict=True))
            gaps[rule].append(gap)
            vt = statistics.mean(v - a for v, a in zip(val, accs, strict=True))
            print(f"| {method} | {model}, {hardware} {budget} | {rule}{' (default)' if rule == DEFAULT_SELECT else ''} | "
                  f"{100 * mean_acc[rule]:.2f} | {100 * gap:.2f} | {100 * vt:+.2f} |", flush=True)
        n_test = group[0]["n_test"]
        loss = mean_acc["val"] - mean_acc[DEFAULT_SELECT]
        if loss > 1.0 / n_test + 1e-12:
            worse_than_val.append(f"{method} on {model} {hardware} {budget} ({loss * n_test:.1f} images)")
    print()
    _compact(groups)
    print()
    for rule in SELECT_RULES:
        print(f"{rule:10s} mean gap to the oracle over {len(gaps[rule])} method x problem pairs: "
              f"{100 * statistics.mean(gaps[rule]):.2f} pt")
    mean_default = statistics.mean(gaps[DEFAULT_SELECT])
    print(f"default rule {DEFAULT_SELECT}: mean gap {100 * mean_default:.2f} pt (goal <= 0.5); worse than val by more "
          f"than one test image: {', '.join(worse_than_val) or 'nowhere'}")
    return mean_default <= 0.005 and not worse_than_val


def _compact(groups: dict[tuple[str, str, str, str], list[dict[str, Any]]]) -> None:
    """The README's method table: per problem (rows) and method (columns), mean test accuracy
    % of the policy the default rule returns, and in brackets that of ``val``'s."""
    methods = list(dict.fromkeys(k[0] for k in groups))
    problems = list(dict.fromkeys(k[1:] for k in groups))
    print(f"test accuracy %, mean over seeds: {DEFAULT_SELECT} (default) and, in brackets, val (HAQ's rule)")
    print("| problem | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for prob in problems:
        cells = []
        for m in methods:
            group = groups.get((m, *prob))
            if not group:
                cells.append("-")
                continue
            acc = {r: statistics.mean(chosen(run, r)["test"] for run in group) for r in ("val", DEFAULT_SELECT)}
            cells.append(f"{100 * acc[DEFAULT_SELECT]:.2f} ({100 * acc['val']:.2f})")
        print(f"| {prob[0]}, {prob[1]}, {prob[2].replace('=', ' ')} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 24 evaluations, random and quantune, one problem")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--evaluations", type=int, default=300)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--save", metavar="FILE", help="write every run's candidates to FILE (JSON), after each run")
    ap.add_argument("--rescore", metavar="FILE", help="print the tables from a --save file, without searching")
    args = ap.parse_args()
    if args.rescore:
        ok = report(json.loads(Path(args.rescore).read_text()))
        print("goal met" if ok else "goal missed")
        return 0 if ok else 1
    seeds = range(1 if args.quick else args.seeds)
    problems = [(p.model, p.hardware, p.budget) for p in PROBLEMS if (p.model, p.hardware, p.budget) not in SKIP]
    methods = ("random", "quantune") if args.quick else tuple(args.methods.split(","))
    if args.quick:
        problems = [("digits-mobilenet", "bismo-edge", "latency=0.6")]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for model, hardware, budget in problems:
        ws = prepare(SearchConfig(model=model, hardware=hardware))
        for method in methods:
            for seed in seeds:
                n = 24 if args.quick else EVALUATIONS.get(method, args.evaluations)
                try:
                    runs.append(search_candidates(model, hardware, budget, method, seed, n, ws))
                except HaqError as e:  # e.g. no feasible policy: nothing to choose from
                    print(f"# {method} seed {seed} on {model} {hardware} {budget}: {e}", flush=True)
                if args.save:
                    Path(args.save).write_text(json.dumps(runs))
        print(f"# {model} {hardware} {budget}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    ok = report(runs)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.quick:
        print("(quick mode: one seed and 24 evaluations - the goal is judged on the full run)")
        return 0
    print("goal met" if ok else "goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
