"""Run directories: where a search leaves everything, and how a killed one resumes.

Layout (design §3)::

    runs/<name>/config.json     the fully resolved SearchConfig (enough to rerun)
                policy.json     best feasible policy, re-measured on the test split
                history.csv     one row per evaluated policy, flushed as it comes
                pareto.csv      the accuracy/cost front of the history
                summary.md      what was searched and what was found
                plots/          bitwidths.png, pareto.png, search.png
                checkpoint/     method state (e.g. the RL agent), if the method keeps one
                .lock           present while a process works on the run

Resume: ``--resume`` re-reads config.json (it must equal the new one) and history.csv.
Methods are deterministic given the seed, so the method is run again from the start and
every policy already in history.csv is answered from it instead of being re-measured;
methods with internal state (RL) also restore their ``checkpoint/``. At most the trial in
flight is lost.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from haq.atomic import atomic_write_json, atomic_write_text
from haq.errors import RunDirError
from haq.search.base import HISTORY_COLUMNS, SearchResult


class HistoryWriter:
    """Appends history rows to ``history.csv``, one flushed line per row.

    Rows already in the file (from before a resume) are skipped when the re-run method
    reproduces them; if it diverges at trial ``k``, rows from ``k`` on are dropped first.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existing: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                self.existing = list(csv.DictReader(f))
        else:
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(HISTORY_COLUMNS)

    def replay(self) -> dict[int, dict[str, Any]]:
        """Measured rows keyed by trial index, for :class:`SearchProblem.replay`."""
        return {int(r["trial"]): r for r in self.existing}

    def __call__(self, row: dict[str, Any]) -> None:
        i = int(row["trial"])
        if i < len(self.existing):
            old = self.existing[i]
            if (old["w_bits"], old["a_bits"], old.get("quant") or "") == (row["w_bits"], row["a_bits"], row["quant"]):
                return
            self._truncate(i)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row[c] is None else row[c] for c in HISTORY_COLUMNS])
            f.flush()
            os.fsync(f.fileno())

    def _truncate(self, n: int) -> None:
        self.existing = self.existing[:n]
        lines = [HISTORY_COLUMNS] + [[r.get(c, "") for c in HISTORY_COLUMNS] for r in self.existing]
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        atomic_write_text(self.path, buf.getvalue())


class RunDir:
    """One run directory, locked while a process works on it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def open(self, config: dict[str, Any], resume: bool) -> None:
        """Create (or, with ``resume``, reopen) the run and take its lock."""
        cfg_path = self.path / "config.json"
        if cfg_path.is_file() and not resume:
            raise RunDirError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        if resume:
            if not cfg_path.is_file():
                raise RunDirError(f"--resume: {self.path} holds no run (no config.json); drop --resume to start one")
            try:
                old = json.loads(cfg_path.read_text())
            except json.JSONDecodeError:
                raise RunDirError(f"--resume: {cfg_path} is not valid JSON; start a new run with another --out") from None
            diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
            if diff:
                k = diff[0]
                raise RunDirError(
                    f"--resume: {self.path} was run with {k}={old.get(k)!r}, not {config.get(k)!r}; "
                    "resume with the same settings or choose another --out"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        atomic_write_json(cfg_path, config)

    def _lock(self) -> None:
        lock = self.path / ".lock"
        if lock.is_file():
            try:
                pid = int(lock.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise RunDirError(
                    f"{self.path} is in use by a running search (pid {pid}); wait for it, stop it, or choose another --out"
                )
        atomic_write_text(lock, str(os.getpid()))

    def release(self) -> None:
        (self.path / ".lock").unlink(missing_ok=True)

    def history_writer(self) -> HistoryWriter:
        return HistoryWriter(self.path / "history.csv")

    def write_result(self, result: SearchResult, config: dict[str, Any], fp32: float | None = None) -> None:
        """policy.json, pareto.csv, summary.md and plots of a finished search."""
        result.best_policy.save(self.path / "policy.json")
        atomic_write_text(self.path / "pareto.csv", result.pareto.to_csv(index=False))
        atomic_write_text(self.path / "summary.md", summary_markdown(result, config))
        from haq.plots import plot_run

        plot_run(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summary_markdown(result: SearchResult, config: dict[str, Any]) -> str:
    p = result.best_policy
    m = p.metrics
    lines = [
        f"# haq search: {config.get('method')} on {config.get('model')} / {config.get('hardware')}",
        "",
        f"- budget: {', '.join(config.get('budget', []))}",
        *_drop_line(p.search, config),
        f"- evaluations: {result.evaluations}, wall time {result.wall_s:.1f} s, seed {config.get('seed')}",
        f"- test accuracy: {_pct(m.get('accuracy'))} (fp32 {_pct(m.get('fp32_accuracy'))}; "
        f"validation {_pct(m.get('val_accuracy'))})",
        f"- latency {_num(m.get('latency_ms'), 'ms')}, energy {_num(m.get('energy_mj'), 'mJ')}, "
        f"size {_num(m.get('size_mib'), 'MiB')}, {_num(m.get('bops_g'), 'GBOPs')}",
        "",
        "| layer | kind | w_bits | a_bits |",
        "|---|---|---|---|",
    ]
    lines += [f"| {lb.name} | {lb.kind} | {lb.w_bits} | {lb.a_bits} |" for lb in p.layers]
    return "\n".join(lines) + "\n"


def _drop_line(search: Mapping[str, Any], config: dict[str, Any]) -> list[str]:
    drop = config.get("max_accuracy_drop")
    if drop is None:
        return []
    met = "met: the cheapest policy measured within it" if search.get("accuracy_drop_met") else (
        "NOT met by any policy measured: this is the most accurate one; raise --max-evaluations or the drop")
    return [f"- max accuracy drop: {drop} pt of fp32 (validation), {met}"]


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f}%"


def _num(v: Any, unit: str) -> str:
    return "n/a" if v is None else f"{float(v):.4g} {unit}"


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """history.csv of a run as a DataFrame (what a notebook does with pandas.read_csv)."""
    return pd.read_csv(Path(run_dir) / "history.csv")


def run_search(
    config: Any,
    out: str | Path,
    resume: bool = False,
    workspace: Any = None,
    on_trial: Callable | None = None,
) -> SearchResult:
    """Run ``config`` (a :class:`haq.api.SearchConfig`) into run directory ``out``."""
    from haq.api import make_problem, method_options, prepare
    from haq.search import get_method, run_method

    spec = get_method(config.method)
    options = method_options(config)
    run = RunDir(out)
    cfg = config.to_dict()
    run.open(cfg, resume)
    try:
        ws = workspace or prepare(config)
        writer = run.history_writer()
        problem = make_problem(config, ws, recorder=writer, on_trial=on_trial)
        problem.replay = writer.replay() if resume else {}
        problem.run_dir = run.path
        result = run_method(problem, spec, options)
        run.write_result(result, cfg)
        return result
    finally:
        run.release()
