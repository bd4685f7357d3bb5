"""Greedy pieces a bit search can reuse: measured-once accuracy, per-step accuracy-drop
estimates, and the descent that lowers bits to a budget by least accuracy per cost saved.

A *step* lowers one edge of one layer - its weights (``"w"``) or its input activations
(``"a"``) - to the next lower bitwidth in that layer's choices. Searchers that measured how
much accuracy single steps cost (HAGO's greedy walk does, as a by-product) hand those drops to
:class:`StepEstimates`; :func:`descend_to_budget` then ranks candidate steps by estimated
accuracy drop per unit of budget saved, verifies the best one with a real measurement before
taking it (lazy greedy), and keeps the last evaluation in reserve so that it always ends with
a measured policy that meets the budget.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from haq.search.base import SearchProblem

EDGES = ("a", "w")  #: per layer, HAGO's edge order: the input activation, then the weight
DROP_FLOOR = 1e-4  #: accuracy (fraction) added to every drop estimate so free steps rank by saving


@dataclass(frozen=True)
class Step:
    """Lower ``edge`` (``"w"`` or ``"a"``) of layer ``layer`` to ``bits``."""

    layer: int
    edge: str
    bits: int


class Measurer:
    """``problem.evaluate`` with memory: a policy already measured is not measured again.

    Evaluation is deterministic, so a repeat would spend one of the method's evaluations on
    a number it has (HAGO's tuner re-measures the incumbent at the start of every edge; we
    do not).
    """

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self._acc: dict[bytes, float] = {}
        for t in problem.trials:
            self._acc[_key(t.w_bits, t.a_bits)] = t.accuracy

    def known(self, w: np.ndarray, a: np.ndarray) -> bool:
        return _key(w, a) in self._acc

    def __call__(self, w: np.ndarray, a: np.ndarray) -> float:
        """Validation accuracy of ``(w, a)``; one evaluation unless measured before."""
        k = _key(w, a)
        if k not in self._acc:
            self._acc[k] = self.problem.evaluate(w, a).accuracy
        return self._acc[k]


def _key(w: np.ndarray, a: np.ndarray) -> bytes:
    return np.asarray(w, dtype=np.int64).tobytes() + b"|" + np.asarray(a, dtype=np.int64).tobytes()


@dataclass
class StepEstimates:
    """Accuracy drops (fractions; negative = the step helped) of single steps, and guesses
    for the steps never measured.

    A guess for lowering layer ``l``'s edge to ``b`` is the larger of: the largest drop
    measured on the same edge at a higher bitwidth (going lower rarely hurts less), and the
    median drop measured on that edge kind at ``b`` in other layers; with neither, the
    largest drop measured anywhere (pessimistic, so measured-cheap steps go first).
    """

    drops: dict[tuple[int, str, int], float] = field(default_factory=dict)

    def record(self, step: Step, drop: float) -> None:
        self.drops[(step.layer, step.edge, step.bits)] = float(drop)

    def estimate(self, step: Step) -> float:
        known = self.drops.get((step.layer, step.edge, step.bits))
        if known is not None:
            return known
        same_edge = [d for (l, e, b), d in self.drops.items() if l == step.layer and e == step.edge and b > step.bits]
        same_level = [d for (l, e, b), d in self.drops.items() if e == step.edge and b == step.bits]
        parts = []
        if same_edge:
            parts.append(max(same_edge))
        if same_level:
            parts.append(statistics.median(same_level))
        if not parts:
            parts.append(max(self.drops.values(), default=0.0))
        return max(parts)


def free_edges(problem: SearchProblem) -> list[tuple[int, str]]:
    """Every (layer, edge) a search may change, layers in execution order, activation first:
    pinned layers and layers with a single choice (float-only kinds) are left out."""
    pinned = set(problem.pinned)
    return [
        (i, e)
        for i, c in enumerate(problem.choices)
        if i not in pinned and len(c) > 1
        for e in EDGES
    ]


def apply_step(w: np.ndarray, a: np.ndarray, step: Step) -> tuple[np.ndarray, np.ndarray]:
    """New arrays with ``step`` applied (the inputs are not modified)."""
    w2, a2 = w.copy(), a.copy()
    (w2 if step.edge == "w" else a2)[step.layer] = step.bits
    return w2, a2


def next_lower(choices: Sequence[int], bits: int) -> int | None:
    lower = [c for c in choices if c < bits]
    return max(lower) if lower else None


@dataclass(frozen=True)
class Candidate:
    step: Step
    w: np.ndarray
    a: np.ndarray
    saving: float  #: sum over violated budget items of (cost before - cost after) / limit


def candidate_steps(problem: SearchProblem, w: np.ndarray, a: np.ndarray) -> list[Candidate]:
    """One step down on every free edge that has a lower choice, with its budget saving."""
    before = problem.cost(w, a)
    violated = [k for k, lim in problem.budget.limits.items() if (before.get(k) or 0.0) > lim * (1 + 1e-9)]
    out = []
    for layer, edge in free_edges(problem):
        cur = int((w if edge == "w" else a)[layer])
        low = next_lower(problem.choices[layer], cur)
        if low is None:
            continue
        step = Step(layer, edge, low)
        w2, a2 = apply_step(w, a, step)
        after = problem.cost(w2, a2)
        saving = sum(
            ((before.get(k) or 0.0) - (after.get(k) or 0.0)) / problem.budget.limits[k] for k in violated
        )
        out.append(Candidate(step, w2, a2, saving))
    return out


def _rank(cands: list[Candidate], drop_of) -> Candidate:  # noqa: ANN001 - Callable[[Step], float]
    """The candidate with the least drop per saving (steps that save nothing only when no
    step saves anything; then the least drop). Ties go to the earlier edge."""
    useful = [c for c in cands if c.saving > 0]
    if useful:
        return min(useful, key=lambda c: (max(drop_of(c.step), 0.0) + DROP_FLOOR) / c.saving)
    return min(cands, key=lambda c: drop_of(c.step))


def plan_to_budget(
    problem: SearchProblem, w: np.ndarray, a: np.ndarray, estimates: StepEstimates
) -> tuple[np.ndarray, np.ndarray, list[Step]]:
    """Steps taken on estimates alone (no measurement) until the budget holds or no step is
    left; returns the end policy and the steps."""
    steps: list[Step] = []
    while not problem.feasible(w, a):
        cands = candidate_steps(problem, w, a)
        if not cands:
            break
        best = _rank(cands, estimates.estimate)
        w, a = best.w, best.a
        steps.append(best.step)
    return w, a, steps


@dataclass
class Descent:
    """Where :func:`descend_to_budget` ended and how."""

    w: np.ndarray
    a: np.ndarray
    accuracy: float  #: validation accuracy of (w, a) (measured)
    steps: list[Step]  #: steps taken, in order
    jumped: bool  #: True when the evaluations ran short and the end came from the estimates


def descend_to_budget(
    problem: SearchProblem,
    w: np.ndarray,
    a: np.ndarray,
    accuracy: float,
    estimates: StepEstimates,
    measure: Measurer,
) -> Descent:
    """Lower bits from the measured policy ``(w, a)`` until the budget holds.

    Each round ranks every one-step-lower neighbour by estimated accuracy drop per unit of
    budget saved; the best is measured (one evaluation, unless measured before) and its
    drop replaces the estimate; a neighbour is taken only when its *measured* ratio is still
    the best of the round (lazy greedy: a few evaluations per step, not one per neighbour).
    When one evaluation is left and no measured policy meets the budget yet, the rest of the
    path is planned on the estimates and its end measured, so the search never ends without
    a feasible policy (the budget was checked reachable up front).
    """
    fresh: dict[Step, float] = {}  # accuracy of (state + step), measured from this state
    steps: list[Step] = []
    while not problem.feasible(w, a):
        cands = candidate_steps(problem, w, a)
        if not cands:
            break
        if problem.best is None and problem.remaining <= 1:
            pw, pa, planned = plan_to_budget(problem, w, a, estimates)
            return Descent(pw, pa, measure(pw, pa), steps + planned, True)

        def drop_of(step: Step) -> float:
            return accuracy - fresh[step] if step in fresh else estimates.estimate(step)

        top = _rank(cands, drop_of)
        if top.step in fresh:
            w, a, accuracy = top.w, top.a, fresh[top.step]
            steps.append(top.step)
            fresh.clear()
            continue
        new_acc = measure(top.w, top.a)
        estimates.record(top.step, accuracy - new_acc)
        fresh[top.step] = new_acc
    return Descent(w, a, accuracy, steps, False)
