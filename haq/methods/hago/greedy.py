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

from haq.ledger import Ledger
from haq.problem import Proposal, SearchProblem

EDGES = ("a", "w")  #: per layer, HAGO's edge order: the input activation, then the weight
DROP_FLOOR = 1e-4  #: accuracy (fraction) added to every drop estimate so free steps rank by saving


@dataclass(frozen=True)
class Step:
    """Lower ``edge`` (``"w"`` or ``"a"``) of layer ``layer`` to ``bits``."""

    layer: int
    edge: str
    bits: int


class Measurer:
    """``ledger.evaluate`` that does not spend an evaluation on a policy the run measured.

    Evaluation is deterministic, so a repeat would spend one of the method's evaluations on
    a number it has (HAGO's tuner re-measures the incumbent at the start of every edge; we
    do not ask the ledger again).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def known(self, w: np.ndarray, a: np.ndarray) -> bool:
        return self.ledger.lookup(Proposal(w, a)) is not None

    def __call__(self, w: np.ndarray, a: np.ndarray) -> float:
        """Validation accuracy of ``(w, a)``; one evaluation unless measured before."""
        acc = self.ledger.lookup(Proposal(w, a))
        return self.ledger.evaluate(Proposal(w, a)).accuracy if acc is None else acc


@dataclass
class StepEstimates:
    """Accuracy drops (fractions; negative = the step helped) of steps, and guesses for the
    steps never measured.

    A guess for lowering layer ``l``'s edge to ``b`` is the larger of: the largest drop
    measured on the same edge at a higher bitwidth (going lower rarely hurts less), and the
    median drop measured on that edge kind at ``b`` in other layers; with neither, the
    largest drop measured anywhere (pessimistic, so measured-cheap steps go first). A move
    of several steps at once is guessed as the sum of its steps' drops until measured.
    """

    drops: dict[tuple[int, str, int], float] = field(default_factory=dict)
    moves: dict[tuple[Step, ...], float] = field(default_factory=dict)

    def record(self, steps: Sequence[Step], drop: float) -> None:
        if len(steps) == 1:
            s = steps[0]
            self.drops[(s.layer, s.edge, s.bits)] = float(drop)
        else:
            self.moves[tuple(steps)] = float(drop)

    def estimate_move(self, steps: Sequence[Step]) -> float:
        if len(steps) == 1:
            return self.estimate(steps[0])
        known = self.moves.get(tuple(steps))
        return known if known is not None else sum(self.estimate(s) for s in steps)

    def estimate(self, step: Step) -> float:
        known = self.drops.get((step.layer, step.edge, step.bits))
        if known is not None:
            return known
        same_edge = [
            d for (i, e, b), d in self.drops.items() if i == step.layer and e == step.edge and b > step.bits
        ]
        same_level = [d for (_, e, b), d in self.drops.items() if e == step.edge and b == step.bits]
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
    return [(i, e) for i in problem.free_layers if len(problem.choices[i]) > 1 for e in EDGES]


def apply_step(w: np.ndarray, a: np.ndarray, *steps: Step) -> tuple[np.ndarray, np.ndarray]:
    """New arrays with ``steps`` applied (the inputs are not modified)."""
    w2, a2 = w.copy(), a.copy()
    for step in steps:
        (w2 if step.edge == "w" else a2)[step.layer] = step.bits
    return w2, a2


def next_lower(choices: Sequence[int], bits: int) -> int | None:
    lower = [c for c in choices if c < bits]
    return max(lower) if lower else None


@dataclass(frozen=True)
class Candidate:
    """A move: one step, or both edges of one layer a step down together (hardware such as
    a CPU only gets faster when weights and activations are both integer)."""

    steps: tuple[Step, ...]
    w: np.ndarray
    a: np.ndarray
    saving: float  #: sum over violated budget items of (cost before - cost after) / limit


def candidate_steps(problem: SearchProblem, w: np.ndarray, a: np.ndarray) -> list[Candidate]:
    """Every move one step down from ``(w, a)``, with its budget saving."""
    before = problem.cost(w, a)
    violated = [k for k, lim in problem.budget.limits.items() if not (_num(before.get(k)) <= lim * (1 + 1e-9))]
    per_layer: dict[int, list[Step]] = {}
    for layer, edge in free_edges(problem):
        low = next_lower(problem.choices[layer], int((w if edge == "w" else a)[layer]))
        if low is not None:
            per_layer.setdefault(layer, []).append(Step(layer, edge, low))
    moves: list[tuple[Step, ...]] = [(s,) for steps in per_layer.values() for s in steps]
    moves += [tuple(steps) for steps in per_layer.values() if len(steps) == 2]
    out = []
    for move in moves:
        w2, a2 = apply_step(w, a, *move)
        after = problem.cost(w2, a2)
        saving = sum((_num(before.get(k)) - _num(after.get(k))) / problem.budget.limits[k] for k in violated)
        out.append(Candidate(move, w2, a2, saving if np.isfinite(saving) else 0.0))
    return out


def _num(x: float | None) -> float:
    return 0.0 if x is None else float(x)


def _rank(cands: list[Candidate], drop_of) -> Candidate:  # noqa: ANN001 - Callable[[tuple[Step, ...]], float]
    """The move with the least drop per saving (moves that save nothing only when none
    saves anything; then the least drop). Ties go to the earlier move."""
    useful = [c for c in cands if c.saving > 0]
    if useful:
        return min(useful, key=lambda c: (max(drop_of(c.steps), 0.0) + DROP_FLOOR) / c.saving)
    return min(cands, key=lambda c: drop_of(c.steps))


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
        best = _rank(cands, estimates.estimate_move)
        w, a = best.w, best.a
        steps.extend(best.steps)
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
    ledger: Ledger,
    w: np.ndarray,
    a: np.ndarray,
    accuracy: float,
    estimates: StepEstimates,
    measure: Measurer,
) -> Descent:
    """Lower bits from the measured policy ``(w, a)`` until the budget holds.

    Each round ranks every move one step lower (one edge, or both edges of a layer) by
    estimated accuracy drop per unit of budget saved; the best is measured (one evaluation,
    unless measured before) and its drop replaces the estimate; a move is taken only when
    its *measured* ratio is still the best of the round (lazy greedy: a few evaluations per step, not one per neighbour).
    When one evaluation is left and no measured policy meets the budget yet, the rest of the
    path is planned on the estimates and its end measured, so the search never ends without
    a feasible policy (the budget was checked reachable up front).
    """
    fresh: dict[tuple[Step, ...], float] = {}  # accuracy of (state + move), measured from this state
    steps: list[Step] = []
    while not problem.feasible(w, a):
        cands = candidate_steps(problem, w, a)
        if not cands:
            break
        if ledger.best is None and ledger.remaining <= 1:
            pw, pa, planned = plan_to_budget(problem, w, a, estimates)
            return Descent(pw, pa, measure(pw, pa), steps + planned, True)

        def drop_of(move: tuple[Step, ...], base: float = accuracy) -> float:
            return base - fresh[move] if move in fresh else estimates.estimate_move(move)

        top = _rank(cands, drop_of)
        if top.steps in fresh:
            w, a, accuracy = top.w, top.a, fresh[top.steps]
            steps.extend(top.steps)
            fresh.clear()
            continue
        new_acc = measure(top.w, top.a)
        estimates.record(top.steps, accuracy - new_acc)
        fresh[top.steps] = new_acc
    return Descent(w, a, accuracy, steps, False)
