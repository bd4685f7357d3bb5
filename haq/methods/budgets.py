"""The inverse question (``--max-accuracy-drop``) for budget-driven methods: bisection over the
budget.

RL, HAWQ and Quantune answer "the most accurate policy within a budget". To answer "the
cheapest policy within an accuracy drop" (AIMET AMP's question) they search in *stages*, each
under a tighter primary budget: the first at the user's limit, then bisecting between the
cheapest reachable cost and the tightest budget known to admit a policy within the drop.
A stage whose measured policies include one within the drop (feasible under that stage's
budget) lowers the upper end, else it raises the lower end. The ledger then returns the
cheapest measured policy within the drop. The stage budgets are a pure function of the
trials measured so far, so a resumed search replays them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from haq.budget import ResolvedBudget, minimum_policy
from haq.ledger import Ledger, within_drop
from haq.problem import SearchProblem, Trial


def with_fraction(problem: SearchProblem, fraction: float) -> SearchProblem:
    """``problem`` with its primary budget at ``fraction`` of uniform 8-bit (never above the
    user's own limit; the other budget items unchanged)."""
    key = problem.primary
    ref = problem.budget.reference.get(key)
    limits = dict(problem.budget.limits)
    if ref:
        limits[key] = min(limits[key], fraction * ref)
    return problem.replace(budget=ResolvedBudget(problem.budget.budget, limits, problem.budget.reference))


def fraction_range(problem: SearchProblem) -> tuple[float, float]:
    """(cheapest reachable, user's limit) of the primary cost, as fractions of uniform 8-bit."""
    key = problem.primary
    ref = problem.budget.reference.get(key) or 1.0
    w, a = minimum_policy(problem.n_layers, problem.choices, problem.pinned, problem.pinned_bits)
    low = (problem.cost(w, a).get(key) or 0.0) / ref
    return low, problem.budget.limits[key] / ref


def stage_fraction(problem: SearchProblem, outcomes: Sequence[bool]) -> float:
    """The budget fraction of the next stage, given whether each earlier stage found a policy
    within the drop: the user's limit first, then bisection."""
    lo, hi = fraction_range(problem)
    frac = hi
    for ok in outcomes:
        if ok:
            hi = frac
        else:
            lo = frac
        frac = (lo + hi) / 2
    return frac


def stage_found(problem: SearchProblem, stage: SearchProblem, trials: Sequence[Trial], fp32: float) -> bool:
    """Whether ``trials`` hold a policy within the drop that meets ``stage``'s budget."""
    drop = problem.max_accuracy_drop
    assert drop is not None
    return any(stage.budget.satisfied(t.cost) and within_drop(t, drop, fp32) for t in trials)


def stage_plan(evaluations: int, per_stage: int = 40, most: int = 6) -> list[int]:
    """How many evaluations each stage gets: ``evaluations`` split into 2..``most`` stages."""
    n = max(2, min(most, evaluations // per_stage)) if evaluations >= 2 else 1
    base, extra = divmod(evaluations, n)
    return [base + (i < extra) for i in range(n)]


def current_stage(problem: SearchProblem, ledger: Ledger, first: int = 0) -> SearchProblem:
    """The problem a staged method searches now: the stages split the evaluations after trial
    ``first`` (:func:`stage_plan`); each finished stage's outcome is read from the ledger."""
    plan = stage_plan(problem.max_evaluations - first)
    fp32 = ledger.fp32_accuracy("val")
    trials = ledger.trials
    outcomes: list[bool] = []
    start = first
    for size in plan[:-1]:
        if len(trials) < start + size:
            break
        stage = with_fraction(problem, stage_fraction(problem, outcomes))
        outcomes.append(stage_found(problem, stage, trials[start:start + size], fp32))
        start += size
    return with_fraction(problem, stage_fraction(problem, outcomes))
