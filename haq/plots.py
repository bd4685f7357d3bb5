"""The figures of a run, drawn from its files alone (so `haq plot RUN_DIR` can redraw them).

* ``plots/bitwidths.png`` - weight and activation bits per layer (HAQ's figure).
* ``plots/pareto.png`` - every evaluated policy, accuracy vs the budgeted cost, front marked.
* ``plots/search.png`` - accuracy (and reward, when the method has one) over trials.

Figures are drawn with matplotlib's object API (:class:`matplotlib.figure.Figure`), never
through pyplot: importing this module leaves a notebook's backend and figures alone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from haq.atomic import atomic_write_bytes
from haq.costs import COST_FIELDS, UNIT_NAMES
from haq.errors import RunDirError
from haq.history import pareto_front, read_history
from haq.policy import Policy


def plot_bitwidths(policy: Policy, path: str | Path, title: str = "") -> Path:
    """Grouped bars: w_bits and a_bits per layer, depthwise layers marked."""
    names = [lb.name for lb in policy.layers]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.38 * len(names) + 2), 3.6))
    ax = fig.subplots()
    w = [min(lb.w_bits, 9) for lb in policy.layers]
    a = [min(lb.a_bits, 9) for lb in policy.layers]
    ax.bar(x - 0.2, w, 0.4, label="weight bits", color="#3465a4")
    ax.bar(x + 0.2, a, 0.4, label="activation bits", color="#f57900")
    for i, lb in enumerate(policy.layers):
        if lb.kind == "depthwise":
            ax.axvspan(i - 0.5, i + 0.5, color="#cccccc", alpha=0.35, lw=0)
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(0, 10), [*map(str, range(0, 9)), "fp"])
    ax.set_ylabel("bits")
    ax.set_ylim(0, 9.5)
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    ax.set_title(title or "bitwidth per layer (grey: depthwise)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_pareto(history: pd.DataFrame, cost_key: str, path: str | Path, by: str = "method") -> Path:
    """Accuracy vs ``cost_key`` for every evaluated policy; each group's front as a line."""
    col = COST_FIELDS[cost_key]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()

    for name, group in history.groupby(by, sort=False) if by in history else [("all", history)]:
        g = group.dropna(subset=[col])
        pts = ax.scatter(g[col], 100 * g["accuracy"], s=10, alpha=0.35, label=f"{name}")
        front = pareto_front(g, cost_key)
        if not front.empty:
            ax.step(front[col], 100 * front["accuracy"], where="post", color=pts.get_facecolor()[0], lw=1.5)
    ax.set_xlabel(f"{cost_key} ({UNIT_NAMES[cost_key]})")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_search(history: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy per trial (feasible ones solid) and best feasible so far; reward if any."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    feas = history["feasible"].astype(str).str.lower() == "true"
    acc = 100 * history["accuracy"]
    ax.scatter(history["trial"][feas], acc[feas], s=8, label="feasible", color="#3465a4")
    ax.scatter(history["trial"][~feas], acc[~feas], s=8, label="over budget", color="#cc0000", alpha=0.5)
    best = acc.where(feas).cummax()
    ax.plot(history["trial"], best, color="black", lw=1.2, label="best feasible")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    reward = pd.to_numeric(history.get("reward"), errors="coerce") if "reward" in history else None
    if reward is not None and reward.notna().any():
        ax2 = ax.twinx()
        ax2.plot(history["trial"], reward, color="#4e9a06", lw=0.8, alpha=0.7)
        ax2.set_ylabel("reward", color="#4e9a06")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw every plot of a run directory from its files."""
    run = Path(run_dir)
    if not (run / "history.csv").is_file():
        raise RunDirError(f"{run} is not a run directory (no history.csv); pass the folder a search wrote")
    history = read_history(run)  # a torn last line (a crash mid-write) is left out
    out = []
    try:
        cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{run / 'config.json'} is not valid JSON; the run directory is damaged") from None
    budget = cfg.get("budget") or ["latency"]
    key = str(budget[0]).split("=")[0].strip().lower()
    key = key if key in COST_FIELDS else "latency"
    if (run / "policy.json").is_file():
        policy = Policy.load(run / "policy.json")
        m = policy.metrics
        title = f"{cfg.get('method', '')} on {policy.model} / {policy.hardware}"
        acc = m.get("accuracy")
        if acc is not None:
            title += f": test acc {100 * acc:.2f}%"
        out.append(plot_bitwidths(policy, run / "plots" / "bitwidths.png", title))
    if not history.empty:
        out.append(plot_pareto(history, key, run / "plots" / "pareto.png"))
        out.append(plot_search(history, run / "plots" / "search.png"))
    return out


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    return atomic_write_bytes(path, buf.getvalue())  # whole or not at all, even on a full disk
