"""`haq compare`: several methods, one problem, one evaluation limit, the same seeds.

Every method searches the same :class:`~haq.api.Workspace` (same model, data, calibration,
hardware table and budget) with the same ``max_evaluations`` per seed, so the table it
writes compares methods, not set-ups. A comparison is a run directory like a search's
(``out``)::

    config.json                      the search config plus the methods and seeds compared
    runs/<method>-seed<k>/           one search run directory per (method, seed): resumable
    policies/<method>-seed<k>.json   each run's best policy
    comparison.csv / comparison.md   one row per method (means over seeds); written last
    history.csv                      every evaluated policy of every method and seed
    plots/pareto.png                 accuracy vs the budgeted cost, fronts per method

It is locked while it runs; ``resume=True`` (``--resume``) continues an interrupted one (the
finished (method, seed) runs are read back, the interrupted one resumes); a finished
comparison is overwritten only with ``force=True`` (``--force``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq.api import Workspace, make_problem, method_options, prepare, search
from haq.atomic import atomic_write_text
from haq.config import SearchConfig
from haq.costs import COST_FIELDS
from haq.errors import ConfigError, RunDirError
from haq.history import pareto_mask
from haq.methods import SearchResult, get_method
from haq.plots import References, Returned, plot_pareto
from haq.pool import EvaluationPool
from haq.ray_pool import make_pool
from haq.runs import RunDir

COLUMNS = [
    "method", "test_accuracy", "test_accuracy_std", "val_accuracy", "latency_ms", "energy_mj",
    "size_mib", "bops_g", "budget_met", "evaluations", "wall_s", "front_points", "on_front",
]
#: What a comparison writes besides config.json (removed by ``force``).
OUTPUTS = ("runs", "policies", "plots", "comparison.csv", "comparison.md", "history.csv")


def compare(
    config: SearchConfig,
    methods: Sequence[str],
    seeds: int = 3,
    out: str | Path | None = None,
    workspace: Workspace | None = None,
    on_progress: Callable[[str, int, SearchResult], None] | None = None,
    resume: bool = False,
    force: bool = False,
    *,
    pool: EvaluationPool | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """Run every method in ``methods`` for ``seeds`` seeds (config.seed, +1, ...) and return
    the comparison table (also written to ``out`` when given; see the module docstring).

    ``config.options`` may hold one table of options per method (``{"rl": {...}}``).
    ``workers``/``ray_address``/``pool``/``device`` say where accuracies are measured (one
    pool serves every run; see :func:`haq.api.search`); the table never depends on them."""
    if not methods:
        raise ConfigError("--methods is empty; name at least one, e.g. rl,hawq,uniform")
    specs = [get_method(m) for m in methods]  # unknown names fail before any work
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    jobs = [replace(config, method=spec.name, seed=config.seed + k, options=dict(config.options.get(spec.name, {})))
            for spec in specs for k in range(seeds)]
    for cfg in jobs:
        method_options(cfg)  # bad options fail before any work
    run = RunDir(out) if out is not None else None
    record = {**config.to_dict(), "compare": {"methods": [s.name for s in specs], "seeds": seeds}}
    if run is not None:
        _check_out(run, record, resume, force)
    ws = workspace or prepare(config, device)
    for cfg in jobs:
        make_problem(cfg, ws)  # unreachable budgets and bad pins fail before --out is touched
    if run is not None:
        if force:
            _clear(run)
        run.open(record, resume and not force)
    own_pool = make_pool(ws.evaluator, workers=workers, ray_address=ray_address,
                         device=str(ws.evaluator.device)) if pool is None else None
    pool = pool or own_pool
    try:
        results: dict[str, list[SearchResult]] = {}
        histories = []
        for cfg in jobs:
            result = _run_one(cfg, ws, run, resume and not force, pool)
            results.setdefault(cfg.method, []).append(result)
            h = result.history.copy()
            h.insert(1, "seed", cfg.seed)
            histories.append(h)
            if run is not None:
                result.best_policy.save(run.path / "policies" / f"{cfg.method}-seed{cfg.seed}.json")
            if on_progress is not None:
                on_progress(cfg.method, cfg.seed, result)
        history = pd.concat(histories, ignore_index=True)
        key = make_problem(jobs[0], ws).primary
        table = _table(results, history, key)
        if run is not None:
            _write(run.path, table, history, key, results)
        return table
    finally:
        if own_pool is not None:
            own_pool.close()
        if run is not None:
            run.release()


def _check_out(run: RunDir, record: dict[str, Any], resume: bool, force: bool) -> None:
    finished = (run.path / "comparison.csv").is_file()
    if force:
        run.check_unlocked()  # overwrite anything but a comparison another process is running
        return
    if finished and not resume:
        raise RunDirError(
            f"{run.path} holds a finished comparison; pass --force to overwrite it or choose another --out"
        )
    run.check_available(record, resume)


def _clear(run: RunDir) -> None:
    """Remove a previous comparison's outputs (only the files a comparison writes)."""
    for name in (*OUTPUTS, "config.json"):
        p = run.path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _run_one(cfg: SearchConfig, ws: Workspace, run: RunDir | None, resume: bool,
             pool: EvaluationPool | None) -> SearchResult:
    if run is None:
        return search(cfg, workspace=ws, pool=pool)
    sub = RunDir(run.path / "runs" / f"{cfg.method}-seed{cfg.seed}")
    if resume and sub.finished:
        return sub.load_result()
    return search(cfg, out=sub.path, resume=resume and (sub.path / "config.json").is_file(), workspace=ws, pool=pool)


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
    head = ("| method | test acc % (mean ± std over seeds; test split) | val acc % (validation split) | latency (ms) | "
            "energy (mJ) | size (MiB) | GBOPs | budget met | evals | wall (s) | on front (validation) |")
    lines = [head, "|" + "---|" * 11]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {100 * r.test_accuracy:.2f} ± {100 * r.test_accuracy_std:.2f} | "
            f"{_f(None if r.val_accuracy is None else 100 * r.val_accuracy)} | {_f(r.latency_ms)} | "
            f"{_f(r.energy_mj)} | {_f(r.size_mib)} | {_f(r.bops_g)} | {'yes' if r.budget_met else 'no'} | "
            f"{r.evaluations:.0f} | {r.wall_s:.1f} | {'yes' if r.on_front else 'no'} ({r.front_points}) |"
        )
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def _write(out: Path, table: pd.DataFrame, history: pd.DataFrame, key: str,
           results: dict[str, list[SearchResult]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "history.csv", history.to_csv(index=False))
    first = next(iter(results.values()))[0].references
    refs = References(**{k: first.get(k) for k in References.__dataclass_fields__})
    col = COST_FIELDS[key]
    returned = []
    for name, runs in results.items():
        for k, r in enumerate(runs):
            m = r.best_policy.metrics
            cost, val, test = m.get(col), m.get("val_accuracy"), m.get("accuracy")
            if cost is not None and val is not None and test is not None:
                returned.append(Returned(f"{name} s{k}" if len(runs) > 1 else name, float(cost), float(val), float(test),
                                         m.get("accuracy_ci_low"), m.get("accuracy_ci_high"), group=name))
    plot_pareto(history, key, out / "plots" / "pareto.png", by="method", refs=refs, returned=returned)
    atomic_write_text(out / "comparison.md", to_markdown(table))
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))  # last: marks it finished
