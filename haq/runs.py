"""Run directories: where a search leaves everything, and how a killed one resumes.

Layout (design §3)::

    runs/<name>/config.json     the fully resolved SearchConfig (enough to rerun)
                policy.json     best feasible policy, re-measured on the test split
                history.csv     one row per evaluated policy, flushed as it comes
                pareto.csv      the accuracy/cost front of the history
                summary.md      what was searched and what was found
                result.json     evaluations, repeats, wall time and the method's extras
                plots/          bitwidths.png, pareto.png, search.png
                checkpoint/     method state (e.g. the RL agent), if the method keeps one
                .lock           present while a process works on the run

Resume: ``--resume`` re-reads config.json (it must equal the new one) and history.csv.
Methods are deterministic given the seed, so the method is run again from the start and
every policy already in history.csv is answered from it instead of being re-measured;
methods with internal state (RL) also restore their ``checkpoint/``. At most the trial in
flight is lost. This module only lays out and writes run directories; :func:`haq.api.search`
runs a search into one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from haq.atomic import append_line, atomic_write_json, atomic_write_text
from haq.errors import RunDirError
from haq.history import HISTORY_COLUMNS, pareto_front, read_history, read_history_rows
from haq.methods import SearchResult
from haq.plots import plot_run
from haq.policy import Policy
from haq.stats import accuracy_text, wilson_interval, within_noise


class HistoryWriter:
    """Appends history rows to ``history.csv``, one whole, flushed line per row.

    Rows already in the file (from before a resume) are skipped when the re-run method
    reproduces them; if it diverges at trial ``k``, rows from ``k`` on are dropped first. A
    torn tail (a line cut short by a crash, see :func:`~haq.history.read_history_rows`) is
    dropped when the file is opened, and a history written before the ``status`` column
    existed gets it; the header is written atomically, so the file always has one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existing: list[dict[str, str]] = []
        if path.is_file():
            header, self.existing, torn = read_history_rows(path)
            if torn or header != HISTORY_COLUMNS:
                self._truncate(len(self.existing))
        else:
            self._truncate(0)

    def replay(self) -> dict[int, dict[str, Any]]:
        """Measured rows keyed by trial index, for :class:`SearchProblem.replay` (a failed
        measurement is not replayed: the resumed search measures it again)."""
        return {int(r["trial"]): r for r in self.existing if not r.get("status")}

    def __call__(self, row: dict[str, Any]) -> None:
        i = int(row["trial"])
        if i < len(self.existing):
            old = self.existing[i]
            same = (old["w_bits"], old["a_bits"], old.get("quant") or "", old.get("status") or "") == (
                row["w_bits"], row["a_bits"], row["quant"], row.get("status") or "")
            if same:
                return
            self._truncate(i)
        buf = io.StringIO()
        csv.writer(buf).writerow(["" if row.get(c) is None else row[c] for c in HISTORY_COLUMNS])
        append_line(self.path, buf.getvalue())

    def _truncate(self, n: int) -> None:
        self.existing = self.existing[:n]
        lines = [HISTORY_COLUMNS] + [[r.get(c) or "" for c in HISTORY_COLUMNS] for r in self.existing]
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

    def check_available(self, config: dict[str, Any], resume: bool, ignore: tuple[str, ...] = ()) -> None:
        """Refuse, without writing anything, a run directory this search cannot use: one that
        holds another run (without ``resume``), none or another configuration (with it), or
        one a live process is working in."""
        cfg_path = self.path / "config.json"
        self.check_unlocked()
        if cfg_path.is_file() and not resume:
            raise RunDirError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        if resume:
            if not cfg_path.is_file():
                raise RunDirError(f"--resume: {self.path} holds no run (no config.json); drop --resume to start one")
            try:
                old = json.loads(cfg_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RunDirError(f"--resume: {cfg_path} is not valid JSON; start a new run with another --out") from None
            diff = [k for k in sorted(set(old) | set(config)) if k not in ignore and old.get(k) != config.get(k)]
            if diff:
                k = diff[0]
                raise RunDirError(
                    f"--resume: {self.path} was run with {k}={old.get(k)!r}, not {config.get(k)!r}; "
                    "resume with the same settings or choose another --out"
                )

    def open(self, config: dict[str, Any], resume: bool) -> None:
        """Create (or, with ``resume``, reopen) the run and take its lock."""
        self.check_available(config, resume)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            atomic_write_json(self.path / "config.json", config)
        except BaseException:  # e.g. a full disk: a failed start leaves --out as it was
            self.release()
            if created and not any(self.path.iterdir()):
                self.path.rmdir()
            raise

    def check_unlocked(self) -> None:
        lock = self.path / ".lock"
        if lock.is_file():
            try:
                pid = int(lock.read_text().strip() or 0)
            except (ValueError, OSError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise RunDirError(
                    f"{self.path} is in use by a running search (pid {pid}); wait for it, stop it, or choose another --out"
                )

    def _lock(self) -> None:
        self.check_unlocked()
        atomic_write_text(self.path / ".lock", str(os.getpid()))

    def release(self) -> None:
        (self.path / ".lock").unlink(missing_ok=True)

    def history_writer(self) -> HistoryWriter:
        return HistoryWriter(self.path / "history.csv")

    def write_result(self, result: SearchResult, config: dict[str, Any]) -> None:
        """policy.json, pareto.csv, summary.md, result.json and plots of a finished search."""
        result.best_policy.save(self.path / "policy.json")
        atomic_write_text(self.path / "pareto.csv", result.pareto.to_csv(index=False))
        atomic_write_text(self.path / "summary.md", summary_markdown(result, config))
        plot_run(self.path, references=result.references)
        atomic_write_json(self.path / "result.json", {
            "method": result.method, "evaluations": result.evaluations, "repeats": result.repeats,
            "wall_s": result.wall_s, "extras": _plain(result.extras), "references": _plain(result.references),
        })  # written last: its presence marks a finished run

    @property
    def finished(self) -> bool:
        """Whether a search finished here (``result.json`` and ``policy.json`` written)."""
        return (self.path / "result.json").is_file() and (self.path / "policy.json").is_file()

    def load_result(self) -> SearchResult:
        """The :class:`SearchResult` of a finished run, read back from its files (no per-layer
        costs: ``per_layer`` is empty)."""
        if not self.finished:
            raise RunDirError(f"{self.path} holds no finished search (no result.json); resume it with --resume")
        meta = json.loads((self.path / "result.json").read_text())
        policy = Policy.load(self.path / "policy.json")
        history = read_history(self.path)
        cfg = json.loads((self.path / "config.json").read_text())
        key = str((cfg.get("budget") or ["latency"])[0]).split("=")[0].strip().lower()
        return SearchResult(
            method=meta["method"], best_policy=policy, history=history,
            pareto=pareto_front(history, key if key in ("latency", "energy", "size", "bops") else "latency"),
            evaluations=int(meta["evaluations"]), wall_s=float(meta["wall_s"]), extras=dict(meta.get("extras") or {}),
            repeats=int(meta.get("repeats", 0)), references=dict(meta.get("references") or {}),
        )


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


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
        *_pin_line(p.search, config),
        f"- evaluations: {result.evaluations}{_repeats(result)}, wall time {result.wall_s:.1f} s, "
        f"seed {config.get('seed')}",
        f"- test accuracy: {accuracy_text(m)} (fp32 {accuracy_text(m, 'fp32_accuracy')}; "
        f"validation {accuracy_text(m, 'val_accuracy')}); 95 % Wilson intervals",
        *_noise_line(m),
        f"- chosen by: {_rule_text(p.search.get('select', 'val'))}",
        f"- latency {_num(m.get('latency_ms'), 'ms')}, energy {_num(m.get('energy_mj'), 'mJ')}, "
        f"size {_num(m.get('size_mib'), 'MiB')}, {_num(m.get('bops_g'), 'GBOPs')}",
        "",
        "| layer | kind | w_bits | a_bits |",
        "|---|---|---|---|",
    ]
    lines += [f"| {lb.name} | {lb.kind} | {lb.w_bits} | {lb.a_bits} |" for lb in p.layers]
    lines += _selection_lines(result)
    return "\n".join(lines) + "\n"


_RULES = {
    "val": "the highest validation accuracy (HAQ's rule)",
    "kl": "the lowest KL divergence to fp32 on the fidelity set among the top candidates within one standard error "
          "of the best validation accuracy",
    "agreement": "the highest top-1 agreement with fp32 on the fidelity set among the top candidates within one "
                 "standard error of the best validation accuracy",
}


def _rule_text(rule: str) -> str:
    return _RULES.get(rule, rule)


def _noise_line(m: Mapping[str, Any]) -> list[str]:
    acc, fp32, n = m.get("accuracy"), m.get("fp32_accuracy"), m.get("accuracy_n")
    if acc is None or fp32 is None or not n:
        return []
    if within_noise(float(acc), float(fp32), int(n)):
        return [f"- the policy's test accuracy is within noise of fp32 (overlapping 95 % intervals on {int(n)} images)"]
    return [f"- the policy's test accuracy is below fp32 beyond noise ({100 * (float(fp32) - float(acc)):.2f} pt)"]


def _selection_lines(result: SearchResult) -> list[str]:
    rows = result.extras.get("selection") or []
    if not rows:
        return []
    n = int(rows[0].get("val_n") or 0)
    out = ["", "## The candidates re-ranked (validation accuracy is noisy; KL/agreement on the fidelity set are not)", "",
           "Eligible: within one standard error of the best validation accuracy (a smaller difference is not",
           "evidence on this split); the eligible one closest to fp32 is chosen.", "",
           "| trial | val accuracy | KL to fp32 | top-1 agreement | eligible | chosen |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ci = ""
        if n:
            lo, hi = wilson_interval(r["val_accuracy"], n)
            ci = f" [{100 * lo:.1f}-{100 * hi:.1f}]"
        eligible = "yes" if r.get("eligible", True) else "no"
        out.append(f"| {r['trial']} | {100 * r['val_accuracy']:.2f}%{ci} | {r['kl']:.4f} | {100 * r['agreement']:.2f}% | "
                   f"{eligible} | {'**yes**' if r['chosen'] else ''} |")
    return out


def _repeats(result: SearchResult) -> str:
    if not result.repeats:
        return ""
    return (f" ({result.repeats} answered from the ledger: a policy the search had measured, proposed again; "
            f"{result.evaluations - result.repeats} distinct)")


def _pin_line(search: Mapping[str, Any], config: dict[str, Any]) -> list[str]:
    pinned = search.get("pinned") or []
    if not pinned:
        return [f"- no layer pinned (--pin {config.get('pin', 'none')})"]
    return [f"- pinned at 8 bits: {', '.join(pinned)} (--pin {config.get('pin')}; part of every answer above)"]


def _drop_line(search: Mapping[str, Any], config: dict[str, Any]) -> list[str]:
    drop = config.get("max_accuracy_drop")
    if drop is None:
        return []
    met = "met: the cheapest policy measured within it" if search.get("accuracy_drop_met") else (
        "NOT met by any policy measured: this is the most accurate one; raise --max-evaluations or the drop")
    first = search.get("evaluations_to_answer")
    took = f" (first measured at evaluation {first})" if first else ""
    return [f"- max accuracy drop: {drop} pt of fp32 (validation), {met}{took}"]


def _num(v: Any, unit: str) -> str:
    return "n/a" if v is None else f"{float(v):.4g} {unit}"
