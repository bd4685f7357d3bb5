"""The multiple-choice integer linear program of HAWQ-V3, solved exactly with HiGHS.

HAWQ-V3 (Zhen-Dong/HAWQ ``ILP.ipynb``) picks 4 or 8 bits per layer with one integer
variable per layer. We generalise to any number of options per layer (the *multiple-choice*
form): one binary ``x[i, k]`` per layer ``i`` and option ``k`` (an option is a bitwidth, or
a (w_bits, a_bits) pair), and solve::

    minimise    sum_{i,k} objective[i, k] * x[i, k]
    subject to  sum_k x[i, k] = 1                              for every layer i
                sum_{i,k} rows[r][i, k] * x[i, k] <= limits[r]  for every budget row r
                sum_{k: label[i,k]=v} x[i, k] = sum_{k: label[j,k]=v} x[j, k]
                                                                for every tie (i, j), label v
                x[i, k] = 1                                     for every fixed (i, k)

with ``scipy.optimize.milp`` (HiGHS branch and bound, relative gap 0: the optimum, not a
near one). A NaN in ``objective`` or in any row marks an option the layer cannot take (the
hardware cannot run it); it gets no variable.

Numerics: per layer, the smallest objective and the smallest cost of each row are
subtracted (a constant under ``sum_k x = 1``) and each row is divided by its slack, so
HiGHS sees coefficients of order one whatever the units (MiB, ms, sensitivities of 1e-4).
The returned solution is rounded and re-checked against the unscaled rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from haq.errors import SearchError

# HiGHS statuses scipy reports (scipy.optimize.milp docs).
_STATUS = {0: "optimal", 1: "iteration or time limit reached", 2: "infeasible", 3: "unbounded", 4: "solver error"}


@dataclass(frozen=True)
class BudgetRow:
    """One ``<=`` constraint: ``coeffs`` has shape ``(L, K)`` in the row's unit, e.g. MiB."""

    name: str  #: e.g. ``size`` or ``latency``; used in messages
    coeffs: np.ndarray  #: (L, K) cost of layer i at option k; NaN = option not available
    limit: float  #: the budget, same unit as coeffs (summed over layers)
    unit: str = ""  #: for messages: ms, mJ, MiB, GBOPs


@dataclass(frozen=True)
class IlpSolution:
    """The chosen option per layer and what it costs."""

    choice: np.ndarray  #: (L,) option index per layer
    objective: float  #: sum of objective[i, choice[i]] (unscaled)
    usage: dict[str, float]  #: per budget row: total cost of the solution (row unit)
    seconds: float  #: wall time of the solver call(s)
    status: str = "optimal"


@dataclass
class MultipleChoiceIlp:
    """A multiple-choice ILP (see module docstring). Build once, :meth:`solve` many times
    (each :meth:`exclude` adds a no-good cut, so the next solve returns the next-best one).

    Args:
        objective: (L, K) value of layer i at option k (NaN = unavailable); minimised.
        rows: budget rows, each ``(L, K)`` with its limit.
        ties: layer pairs ``(i, j)`` whose ``labels`` must be equal.
        labels: (L, K) integer label of each option for the tie constraints (e.g. the
            option's activation bits); None = the option index itself.
        fixed: layer -> option index it must take (pinned layers).
        time_limit_s: HiGHS wall-clock limit per solve.
    """

    objective: np.ndarray
    rows: Sequence[BudgetRow] = ()
    ties: Sequence[tuple[int, int]] = ()
    labels: np.ndarray | None = None
    fixed: dict[int, int] = field(default_factory=dict)
    time_limit_s: float = 60.0
    _cuts: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.objective = np.asarray(self.objective, dtype=np.float64)
        if self.objective.ndim != 2 or self.objective.shape[0] == 0 or self.objective.shape[1] == 0:
            raise SearchError(f"ILP objective must have shape (layers, options) with both > 0; got {self.objective.shape}")
        L, K = self.objective.shape
        for r in self.rows:
            if np.shape(r.coeffs) != (L, K):
                raise SearchError(f"ILP budget row {r.name} has shape {np.shape(r.coeffs)}, expected {(L, K)}")
        for i, j in self.ties:
            if not (0 <= i < L and 0 <= j < L):
                raise SearchError(f"ILP tie ({i}, {j}) names a layer outside 0..{L - 1}")
        for i, k in self.fixed.items():
            if not (0 <= i < L and 0 <= k < K):
                raise SearchError(f"ILP fixes layer {i} to option {k}, outside ({L}, {K})")
        avail = np.isfinite(self.objective)
        for r in self.rows:
            avail &= np.isfinite(r.coeffs)
        for i, k in self.fixed.items():
            if not avail[i, k]:
                raise SearchError(f"ILP fixes layer {i} to option {k}, which the cost tables mark unavailable (NaN)")
        empty = np.flatnonzero(~avail.any(axis=1))
        if empty.size:
            raise SearchError(f"layer {int(empty[0])} has no option with a finite sensitivity and cost; check its bit choices")
        self._avail = avail
        # variable v <-> (layer, option)
        self._layer, self._option = np.nonzero(avail)
        self._labels = (np.broadcast_to(np.arange(K), (L, K)) if self.labels is None else np.asarray(self.labels))

    # ----- public --------------------------------------------------------------------------
    @property
    def n_variables(self) -> int:
        return int(self._layer.size)

    def evaluate(self, choice: Sequence[int] | np.ndarray) -> tuple[float, dict[str, float]]:
        """Objective and per-row totals of an assignment (option index per layer)."""
        c = np.asarray(choice, dtype=np.int64)
        rows = np.arange(len(c))
        obj = float(self.objective[rows, c].sum())
        return obj, {r.name: float(np.asarray(r.coeffs)[rows, c].sum()) for r in self.rows}

    def exclude(self, choice: Sequence[int] | np.ndarray) -> None:
        """Forbid this exact assignment in later solves (a no-good cut)."""
        self._cuts.append(np.asarray(choice, dtype=np.int64).copy())

    def solve(self) -> IlpSolution:
        """The optimum; raises a one-line :class:`SearchError` if infeasible or the solver fails.

        HiGHS accepts rows violated by its feasibility tolerance (1e-7 of the scaled row);
        haq's budget check is stricter (1e-9 of the limit), so a solution over a limit is
        re-solved with that row tightened by the excess (at most 3 times).
        """
        tighten = {r.name: 0.0 for r in self.rows}
        seconds = 0.0
        for _ in range(4):
            choice, status, s = self._solve_once(tighten)
            seconds += s
            obj, usage = self.evaluate(choice)
            over = {r.name: usage[r.name] - r.limit for r in self.rows if usage[r.name] > r.limit * (1 + 1e-9) + 1e-300}
            if not over:
                return IlpSolution(choice=choice, objective=obj, usage=usage, seconds=seconds, status=status)
            for name, excess in over.items():
                tighten[name] += 2 * excess
        name, excess = next(iter(over.items()))
        raise SearchError(
            f"ILP solution exceeds {name} by {excess:.3g} beyond the solver tolerance after 3 re-solves; "
            "loosen the budget slightly"
        )

    def _solve_once(self, tighten: dict[str, float]) -> tuple[np.ndarray, str, float]:
        L, K = self.objective.shape
        lay, opt = self._layer, self._option
        n = lay.size
        # objective, shifted per layer and scaled to max 1 (argmin unchanged)
        c = self.objective[lay, opt].copy()
        c -= np.array([self.objective[i][self._avail[i]].min() for i in range(L)])[lay]
        scale = float(np.abs(c).max()) or 1.0
        c /= scale

        A_r: list[int] = []
        A_c: list[int] = []
        A_v: list[float] = []
        lb: list[float] = []
        ub: list[float] = []

        def add_row(cols: np.ndarray, vals: np.ndarray, lo: float, hi: float) -> None:
            A_r.extend([len(lb)] * len(cols))
            A_c.extend(cols.tolist())
            A_v.extend(vals.tolist())
            lb.append(lo)
            ub.append(hi)

        # one option per layer
        for i in range(L):
            cols = np.flatnonzero(lay == i)
            add_row(cols, np.ones(cols.size), 1.0, 1.0)
        # budget rows, shifted by their per-layer minimum and scaled by their slack
        for r in self.rows:
            coef = np.asarray(r.coeffs, dtype=np.float64)
            mins = np.array([coef[i][self._avail[i]].min() for i in range(L)])
            slack = r.limit - tighten.get(r.name, 0.0) - mins.sum()
            if slack < -1e-9 * abs(r.limit):
                raise SearchError(
                    f"ILP infeasible: budget {r.name} <= {r.limit:.6g}{_u(r)} is below the cheapest reachable "
                    f"{mins.sum():.6g}{_u(r)} (every layer at its cheapest option); raise the budget or unpin layers"
                )
            slack = max(slack, 0.0)
            denom = slack if slack > 1e-12 * max(abs(r.limit), 1e-300) else max(abs(r.limit), 1.0)
            add_row(np.arange(n), (coef[lay, opt] - mins[lay]) / denom, -np.inf, slack / denom)
        # ties: equal label indicator sums
        lab = self._labels[lay, opt]
        for i, j in self.ties:
            for v in np.union1d(self._labels[i][self._avail[i]], self._labels[j][self._avail[j]]):
                ci = np.flatnonzero((lay == i) & (lab == v))
                cj = np.flatnonzero((lay == j) & (lab == v))
                add_row(np.concatenate([ci, cj]), np.concatenate([np.ones(ci.size), -np.ones(cj.size)]), 0.0, 0.0)
        # no-good cuts: not every chosen variable of an excluded assignment again
        for cut in self._cuts:
            cols = np.array([self._var(i, int(k)) for i, k in enumerate(cut)])
            cols = cols[cols >= 0]
            add_row(cols, np.ones(cols.size), -np.inf, cols.size - 1.0)
        # pinned layers: through the bounds
        lo_b, hi_b = np.zeros(n), np.ones(n)
        for i, k in self.fixed.items():
            hi_b[lay == i] = 0.0
            v = self._var(i, k)
            lo_b[v] = hi_b[v] = 1.0

        A = coo_array((np.array(A_v, dtype=np.float64), (np.array(A_r), np.array(A_c))), shape=(len(lb), n)).tocsr()
        t0 = time.perf_counter()
        try:
            res = milp(
                c,
                integrality=np.ones(n),
                bounds=Bounds(lo_b, hi_b),
                constraints=LinearConstraint(A, np.array(lb), np.array(ub)),
                options={"time_limit": self.time_limit_s, "mip_rel_gap": 0.0, "presolve": True},
            )
        except (ValueError, RuntimeError) as exc:
            raise SearchError(f"ILP solver (scipy.optimize.milp / HiGHS) failed: {str(exc).splitlines()[0]}") from None
        seconds = time.perf_counter() - t0
        if res.status == 2:
            what = ", ".join(f"{r.name} <= {r.limit:.6g}{_u(r)}" for r in self.rows) or "no budget"
            extra = " with the tie constraints and pinned layers" if (self.ties or self.fixed) else ""
            cuts = " and the assignments already excluded" if self._cuts else ""
            raise SearchError(f"ILP infeasible: no assignment meets {what}{extra}{cuts}; raise the budget or unpin layers")
        if res.x is None:
            raise SearchError(
                f"ILP solver (scipy.optimize.milp / HiGHS) failed: {_STATUS.get(res.status, res.status)} - "
                f"{res.message}; raise time_limit_s or simplify the budget"
            )
        x = np.round(res.x).astype(np.int64)
        choice = np.full(L, -1, dtype=np.int64)
        for v in np.flatnonzero(x == 1):
            choice[lay[v]] = opt[v]
        if (choice < 0).any() or int(x.sum()) != L:
            raise SearchError(f"ILP solver returned a non-integral solution ({res.message}); report this model")
        return choice, _STATUS.get(res.status, str(res.status)), seconds

    # ----- internals -----------------------------------------------------------------------
    def _var(self, layer: int, option: int) -> int:
        hit = np.flatnonzero((self._layer == layer) & (self._option == option))
        return int(hit[0]) if hit.size else -1


def _u(r: BudgetRow) -> str:
    return f" {r.unit}" if r.unit else ""
