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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Returned:
    """A policy a search returned, as the trade-off plot marks it: its cost, its validation
    accuracy (where it sits among the measured points) and its test accuracy with the 95 %
    interval (the label)."""

    label: str
    cost: float
    val_accuracy: float
    test_accuracy: float
    test_low: float | None = None
    test_high: float | None = None
    group: str | None = None  #: the history group (method) whose colour the marker takes


@dataclass(frozen=True)
class References:
    """What the trade-off plot draws besides the measured points: fp32 validation accuracy
    (the zero of the y axis), the budget limit and uniform 8- and 4-bit costs (primary cost)."""

    fp32_val_accuracy: float | None = None
    limit: float | None = None
    uniform8: float | None = None
    uniform4: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"fp32_val_accuracy": self.fp32_val_accuracy, "limit": self.limit,
                "uniform8": self.uniform8, "uniform4": self.uniform4}


WINDOW_PT = 6.0  #: accuracy drops shown, percent points below fp32; farther points are counted in a note


def plot_pareto(
    history: pd.DataFrame,
    cost_key: str,
    path: str | Path,
    by: str = "method",
    refs: References | None = None,
    returned: list[Returned] | None = None,
) -> Path:
    """The accuracy/cost trade-off where users choose: validation accuracy *drop from fp32* in
    percent points (0 at the top) against ``cost_key``, every measured policy, each group's
    front, the budget and uniform 8-/4-bit references, and each returned policy marked with
    its test accuracy and interval. Points more than :data:`WINDOW_PT` below fp32 are
    summarised in a note instead of squeezing the region that matters into a thin band."""
    col = COST_FIELDS[cost_key]
    refs = refs or References()
    fp32 = refs.fp32_val_accuracy
    if fp32 is None:
        fp32 = float(history["accuracy"].max()) if len(history) else 1.0
    fig = Figure(figsize=(7.2, 4.6))
    ax = fig.subplots()
    returned = returned or []
    window = max([WINDOW_PT] + [100 * (fp32 - r.val_accuracy) + 0.5 for r in returned])
    hidden = 0
    colours: dict[str, str] = {}
    for k, (name, group) in enumerate(history.groupby(by, sort=False) if by in history else [("all", history)]):
        g = group.dropna(subset=[col, "accuracy"])
        drop = 100 * (fp32 - g["accuracy"].astype(float))
        near = drop <= window
        hidden += int((~near).sum())
        colours[str(name)] = f"C{k % 10}"
        ax.scatter(g[col][near], drop[near], s=10, alpha=0.35, label=f"{name}", color=colours[str(name)])
        front = pareto_front(g, cost_key)
        if not front.empty:
            fdrop = 100 * (fp32 - front["accuracy"].astype(float))
            keep = fdrop <= window
            ax.step(front[col][keep], fdrop[keep], where="post", color=colours[str(name)], lw=1.5)
    for value, text, style in ((refs.limit, "budget", "-"), (refs.uniform8, "uniform 8-bit", "--"),
                               (refs.uniform4, "uniform 4-bit", ":")):
        if value is not None:
            ax.axvline(value, color="#555555", ls=style, lw=1)
            ax.text(value, 1.0, f" {text}", transform=ax.get_xaxis_transform(), rotation=90, va="top",
                    ha="right", fontsize=7, color="#555555")
    for r in returned:
        d = 100 * (fp32 - r.val_accuracy)
        colour = colours.get(r.group or "", colours.get("all", "C0"))
        ax.scatter([r.cost], [d], marker="*", s=160, color=colour, edgecolor="black", zorder=5)
        ci = f" [{100 * r.test_low:.1f}-{100 * r.test_high:.1f}]" if r.test_low is not None and r.test_high is not None else ""
        ax.annotate(f"{r.label}: test {100 * r.test_accuracy:.2f}%{ci}", (r.cost, d),
                    textcoords="offset points", xytext=(6, -10), fontsize=7)
    lowest = [100 * (fp32 - float(a)) for a in history["accuracy"].dropna()] + [100 * (fp32 - r.val_accuracy) for r in returned]
    ax.set_ylim(window + 0.3, min([-0.3] + [d - 0.3 for d in lowest]))  # the best (smallest drop) at the top
    ax.set_xlabel(f"{cost_key} ({UNIT_NAMES[cost_key]})")
    ax.set_ylabel(f"validation accuracy drop from fp32 ({100 * fp32:.2f}%), pt")
    if hidden:
        ax.text(0.01, 0.01, f"{hidden} policies more than {window:.3g} pt below fp32 not shown",
                transform=ax.transAxes, fontsize=7, color="#555555")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
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


def plot_run(run_dir: str | Path, references: dict[str, float | None] | None = None) -> list[Path]:
    """(Re)draw every plot of a run directory from its files (``references``: the trade-off
    plot's references when result.json is not written yet)."""
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
        refs, returned = _run_references(run, key, references)
        out.append(plot_pareto(history, key, run / "plots" / "pareto.png", refs=refs, returned=returned))
        out.append(plot_search(history, run / "plots" / "search.png"))
    return out


def _run_references(run: Path, key: str, given: dict[str, float | None] | None) -> tuple[References, list[Returned]]:
    """References and the returned policy of a run, from result.json and policy.json."""
    refs = References()
    meta_path = run / "result.json"
    if given is not None:
        refs = References(**{k: given.get(k) for k in References.__dataclass_fields__})
    elif meta_path.is_file():
        try:
            stored = json.loads(meta_path.read_text()).get("references") or {}
            refs = References(**{k: stored.get(k) for k in References.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
            pass
    returned = []
    if (run / "policy.json").is_file():
        m = Policy.load(run / "policy.json").metrics
        cost, val, test = m.get(COST_FIELDS[key]), m.get("val_accuracy"), m.get("accuracy")
        if cost is not None and val is not None and test is not None:
            returned.append(Returned("returned", float(cost), float(val), float(test),
                                     m.get("accuracy_ci_low"), m.get("accuracy_ci_high")))
    return refs, returned


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    return atomic_write_bytes(path, buf.getvalue())  # whole or not at all, even on a full disk
