"""`haq compare`: several methods, one problem, one evaluation limit, the same seeds.

Every method searches the same :class:`~haq.api.Workspace` (same model, data, calibration,
hardware table and budget) with the same ``max_evaluations`` per seed, so the table it
writes compares methods, not set-ups. Outputs (``out``)::

    comparison.csv / comparison.md   one row per method (means over seeds)
    history.csv                      every evaluated policy of every method and seed
    policies/<method>-seed<k>.json   each run's best policy
    plots/pareto.png                 accuracy vs the budgeted cost, fronts per method
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from haq.api import SearchConfig, Workspace, make_problem, method_options, prepare
from haq.atomic import atomic_write_text
from haq.budget import COST_FIELDS
from haq.errors import ConfigError
from haq.search import SearchResult, get_method, run_method
from haq.search.base import pareto_mask

COLUMNS = [
    "method", "test_accuracy", "test_accuracy_std", "val_accuracy", "latency_ms", "energy_mj",
    "size_mib", "bops_g", "budget_met", "evaluations", "wall_s", "front_points", "on_front",
]


def compare(
    config: SearchConfig,
    methods: Sequence[str],
    seeds: int = 3,
    out: str | Path | None = None,
    workspace: Workspace | None = None,
    on_progress: Callable[[str, int, SearchResult], None] | None = None,
) -> pd.DataFrame:
    """Run every method in ``methods`` for ``seeds`` seeds (config.seed, +1, ...) and return
    the comparison table (also written to ``out`` when given)."""
    if not methods:
        raise ConfigError("--methods is empty; name at least one, e.g. rl,hawq,uniform")
    specs = [get_method(m) for m in methods]  # unknown names fail before any work
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    ws = workspace or prepare(config)
    out_path = Path(out) if out is not None else None
    results: dict[str, list[SearchResult]] = {}
    histories = []
    for spec in specs:
        for k in range(seeds):
            cfg = replace(config, method=spec.name, seed=config.seed + k, options=dict(config.options.get(spec.name, {})))
            problem = make_problem(cfg, ws)
            result = run_method(problem, spec, method_options(cfg))
            results.setdefault(spec.name, []).append(result)
            h = result.history.copy()
            h.insert(1, "seed", cfg.seed)
            histories.append(h)
            if out_path is not None:
                result.best_policy.save(out_path / "policies" / f"{spec.name}-seed{cfg.seed}.json")
            if on_progress is not None:
                on_progress(spec.name, cfg.seed, result)
    history = pd.concat(histories, ignore_index=True)
    key = make_problem(replace(config, method=specs[0].name), ws).budget.primary
    table = _table(results, history, key)
    if out_path is not None:
        _write(out_path, table, history, key)
    return table


def _table(results: dict[str, list[SearchResult]], history: pd.DataFrame, key: str) -> pd.DataFrame:
    col = COST_FIELDS[key]
    h = history.dropna(subset=[col]).drop_duplicates(subset=["method", "w_bits", "a_bits"])
    front = h[pareto_mask(h[col].to_numpy(float), h["accuracy"].to_numpy(float))]
    rows = []
    for name, runs in results.items():
        m = [r.best_policy.metrics for r in runs]

        def mean(k: str, m: list = m) -> float | None:
            vals = [x.get(k) for x in m if x.get(k) is not None]
            return float(np.mean(vals)) if vals else None

        test = [float(x["accuracy"] or 0.0) for x in m]
        n_front = int((front["method"] == name).sum())
        rows.append({
            "method": name,
            "test_accuracy": float(np.mean(test)),
            "test_accuracy_std": float(np.std(test)),
            "val_accuracy": mean("val_accuracy"),
            "latency_ms": mean("latency_ms"),
            "energy_mj": mean("energy_mj"),
            "size_mib": mean("size_mib"),
            "bops_g": mean("bops_g"),
            "budget_met": True,  # run_method only returns feasible policies
            "evaluations": float(np.mean([r.evaluations for r in runs])),
            "wall_s": float(np.mean([r.wall_s for r in runs])),
            "front_points": n_front,
            "on_front": n_front > 0,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (what `haq compare` prints and writes)."""
    head = "| method | test acc (%) | latency (ms) | energy (mJ) | size (MiB) | GBOPs | budget met | evals | wall (s) | on front |"
    lines = [head, "|" + "---|" * 10]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {100 * r.test_accuracy:.2f} ± {100 * r.test_accuracy_std:.2f} | {_f(r.latency_ms)} | "
            f"{_f(r.energy_mj)} | {_f(r.size_mib)} | {_f(r.bops_g)} | {'yes' if r.budget_met else 'no'} | "
            f"{r.evaluations:.0f} | {r.wall_s:.1f} | {'yes' if r.on_front else 'no'} ({r.front_points}) |"
        )
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def _write(out: Path, table: pd.DataFrame, history: pd.DataFrame, key: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    atomic_write_text(out / "comparison.md", to_markdown(table))
    atomic_write_text(out / "history.csv", history.to_csv(index=False))
    from haq.plots import plot_pareto

    plot_pareto(history, key, out / "plots" / "pareto.png", by="method")
