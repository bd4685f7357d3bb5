"""Budgets: what the user allows a policy to cost, and HAQ's loop that enforces it.

``--budget latency=0.5`` is half the uniform 8-bit policy's latency on the same hardware;
``latency=0.3ms``, ``energy=0.2mJ``, ``size=1.5MiB``, ``bops=2G`` are absolute (units as in
:mod:`haq.costs`). What a policy costs is :mod:`haq.costs`' business.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from haq.costs import UNIT_NAMES, Cost, CostModel
from haq.errors import BudgetError

BUDGET_KEYS = ("latency", "energy", "size", "bops")
# Accepted suffixes -> factor to the canonical unit of the key.
_UNITS: dict[str, dict[str, float]] = {
    "latency": {"ms": 1.0, "s": 1e3, "us": 1e-3},
    "energy": {"mj": 1.0, "j": 1e3, "uj": 1e-3},
    "size": {"mib": 1.0, "kib": 1 / 1024, "gib": 1024.0, "b": 1 / 2**20, "mb": 1e6 / 2**20, "kb": 1e3 / 2**20, "gb": 1e9 / 2**20},
    "bops": {"g": 1.0, "gbops": 1.0, "m": 1e-3, "mbops": 1e-3, "t": 1e3, "tbops": 1e3},
}
_ITEM_RE = re.compile(r"^\s*([a-zA-Z]+)\s*=\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """One budget item: ``latency=0.5`` (relative, x uniform 8-bit) or ``size=1.5MiB``."""

    key: str
    value: float
    relative: bool
    text: str

    def limit(self, reference: Cost) -> float:
        """The absolute limit; ``reference`` is the uniform 8-bit cost on the same hardware.

        A key the hardware model does not cost (energy of a measured latency profile) is
        refused, relative or absolute: otherwise every policy would "meet" it.
        """
        ref = reference.get(self.key)
        if ref is None:
            raise BudgetError(
                f"budget {self.text}: the hardware model gives no {self.key}; choose a hardware model with "
                f"{self.key} or budget latency, size or bops instead"
            )
        return self.value * ref if self.relative else self.value


@dataclass(frozen=True)
class Budget:
    """All budget items a policy must meet (every one must hold)."""

    constraints: tuple[Constraint, ...]

    @classmethod
    def parse(cls, items: Sequence[str] | str) -> Budget:
        """Parse ``["latency=0.5", "size=1.5MB"]`` (or one comma-separated string).

        A bare number is relative to the uniform 8-bit policy on the same hardware
        (``latency=0.5`` = half its latency); a number with a unit is absolute: ``ms``/``s``/
        ``us``, ``mJ``/``J``/``uJ``, ``MiB``/``KiB``/``GiB``/``MB``/``kB``/``GB``/``B``
        (MB = 10^6 bytes, MiB = 2^20), ``G``/``M``/``T`` BOPs.
        """
        if isinstance(items, str):
            items = [p for p in items.split(",") if p.strip()]
        constraints: list[Constraint] = []
        for text in items:
            for part in [p for p in text.split(",") if p.strip()]:
                constraints.append(_parse_item(part.strip()))
        keys = [c.key for c in constraints]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup:
            raise BudgetError(f"budget key {dup!r} is given twice; give each of latency, energy, size, bops once")
        return cls(tuple(constraints))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.constraints)

    def __str__(self) -> str:
        return ",".join(c.text for c in self.constraints) or "none"

    def to_dict(self) -> dict[str, str]:
        return {c.key: c.text.split("=", 1)[1] for c in self.constraints}

    def resolve(self, reference: Cost) -> ResolvedBudget:
        """Absolute limits, given the cost of the uniform 8-bit policy (for relative items)."""
        return ResolvedBudget(self, {c.key: c.limit(reference) for c in self.constraints}, reference)


def _parse_item(text: str) -> Constraint:
    m = _ITEM_RE.match(text)
    if not m:
        raise BudgetError(
            f"budget {text!r} is malformed: write KEY=VALUE, e.g. latency=0.5 (x uniform 8-bit), "
            "latency=0.3ms, energy=0.2mJ, size=1.5MiB, bops=2G"
        )
    key, num, unit = m.group(1).lower(), float(m.group(2)), m.group(3).lower()
    if key not in BUDGET_KEYS:
        import difflib

        close = difflib.get_close_matches(key, BUDGET_KEYS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(BUDGET_KEYS)}"
        raise BudgetError(f"budget key {key!r} is unknown: {hint}")
    if num <= 0:
        raise BudgetError(f"budget {text}: the value must be positive")
    if not math.isfinite(num):
        raise BudgetError(f"budget {text}: the value must be finite (it overflows a float); give a finite limit")
    if not unit:
        return Constraint(key, num, True, text)
    factors = _UNITS[key]
    if unit not in factors:
        raise BudgetError(
            f"budget {text}: unit {m.group(3)!r} does not fit {key}; use one of {', '.join(factors)} "
            "or no unit for a fraction of uniform 8-bit"
        )
    if not math.isfinite(num * factors[unit]):
        raise BudgetError(f"budget {text}: the value must be finite (it overflows a float); give a finite limit")
    return Constraint(key, num * factors[unit], False, text)


@dataclass(frozen=True)
class ResolvedBudget:
    """A budget with absolute limits in canonical units (ms, mJ, MiB, GBOPs)."""

    budget: Budget
    limits: dict[str, float]
    reference: Cost  #: cost of the uniform 8-bit policy the relative items refer to

    def satisfied(self, cost: Cost) -> bool:
        return all((cost.get(k) or 0.0) <= lim * (1 + 1e-9) for k, lim in self.limits.items())

    def usage(self, cost: Cost) -> dict[str, float]:
        """Cost / limit per budget key (<= 1 means met)."""
        return {k: (cost.get(k) or 0.0) / lim for k, lim in self.limits.items()}

    @property
    def primary(self) -> str:
        """The key plots and Pareto fronts use: the first budget item (latency if none)."""
        return self.budget.keys[0] if self.budget.keys else "latency"


def enforce_budget(
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    costs: CostModel,
    budget: ResolvedBudget,
    choices: Sequence[Sequence[int]],
    pinned: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """HAQ's budget loop: lower bits from the last layer to the first until the budget holds.

    Each sweep walks layers last -> first and, per layer, lowers ``a_bits`` then ``w_bits``
    by one step of that layer's ``choices``; it stops as soon as the budget holds. Pinned
    layers are never lowered. Returns new arrays (the inputs are not modified); if even the
    all-minimum policy cannot meet the budget the minimum is returned (callers refuse such
    budgets up front with :func:`check_reachable`).
    """
    w = np.array(w_bits, dtype=np.int64)
    a = np.array(a_bits, dtype=np.int64)
    pinned_set = set(pinned)
    steps = [sorted(c) for c in choices]
    if budget.satisfied(costs.cost(w, a)):
        return w, a
    while True:
        changed = False
        for i in reversed(range(len(w))):
            if i in pinned_set:
                continue
            for arr in (a, w):
                c = steps[i]
                k = c.index(int(arr[i])) if int(arr[i]) in c else len(c)
                if k > 0:
                    arr[i] = c[k - 1]
                    changed = True
                    if budget.satisfied(costs.cost(w, a)):
                        return w, a
        if not changed:
            return w, a


def minimum_policy(
    n_layers: int, choices: Sequence[Sequence[int]], pinned: Sequence[int] = (), pinned_bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest policy reachable: every free layer at its lowest choice."""
    low = np.array([min(c) for c in choices], dtype=np.int64)
    for i in pinned:
        low[i] = pinned_bits if pinned_bits in choices[i] else max(choices[i])
    return low, low.copy()


def check_reachable(
    costs: CostModel,
    budget: ResolvedBudget,
    choices: Sequence[Sequence[int]],
    pinned: Sequence[int] = (),
    hardware_name: str = "",
) -> None:
    """Refuse a budget that even the cheapest reachable policy exceeds, naming that cost."""
    w, a = minimum_policy(len(costs.layers), choices, pinned)
    cheapest = costs.cost(w, a)
    for c in budget.budget.constraints:
        have = cheapest.get(c.key)
        lim = budget.limits[c.key]
        if have is not None and have > lim * (1 + 1e-9):
            ref = budget.reference.get(c.key)
            where = f" on {hardware_name}" if hardware_name else ""
            if c.relative and ref:
                reach = f"{have / ref:.3g} of 8-bit{where}"
            else:
                reach = f"{have:.4g} {UNIT_NAMES[c.key]}{where}"
            raise BudgetError(
                f"budget {c.text} is below the cheapest reachable {reach} "
                f"(lowest bits {min(min(x) for x in choices)}, pinned layers at 8); raise the budget, "
                "lower --min-bits or unpin layers with --pin none"
            )
