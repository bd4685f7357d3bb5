"""The baselines every seed paper compares against: uniform and random.

* ``uniform`` - the best policy with one weight and one activation bitwidth for all free
  layers (fixed 8-bit, PACT-style uniform) among those that meet the budget. Infeasible
  pairs are skipped without measuring (their cost is known), so it needs at most
  ``|choices|^2`` evaluations.
* ``random`` - per-layer bits drawn uniformly from each layer's choices, then lowered with
  HAQ's budget loop (:func:`haq.budget.enforce_budget`), best feasible kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.budget import enforce_budget
from haq.search import register_method
from haq.search.base import MethodSpec, SearchProblem


def _common_choices(problem: SearchProblem) -> list[int]:
    free = [c for i, c in enumerate(problem.choices) if i not in problem.pinned] or list(problem.choices)
    common = set(free[0]).intersection(*map(set, free[1:]))
    return sorted(common, reverse=True)


def uniform_candidates(problem: SearchProblem) -> list[tuple[np.ndarray, np.ndarray]]:
    """Feasible uniform policies, most expensive first (pinned layers at their pinned bits)."""
    hi_w, hi_a = problem.max_policy()
    out = []
    for wb in _common_choices(problem):
        for ab in _common_choices(problem):
            w = np.where(np.isin(np.arange(problem.n_layers), problem.pinned), hi_w, wb)
            a = np.where(np.isin(np.arange(problem.n_layers), problem.pinned), hi_a, ab)
            if problem.feasible(w, a):
                out.append((w, a))
    key = problem.budget.primary
    out.sort(key=lambda p: -(problem.cost(*p).get(key) or 0.0))
    return out


@dataclass(frozen=True)
class UniformOptions:
    """No options: the uniform baseline measures every feasible uniform (w, a) pair."""


def run_uniform(problem: SearchProblem, options: UniformOptions) -> dict[str, Any]:
    for w, a in uniform_candidates(problem):
        problem.evaluate(w, a)
    return {}


@dataclass(frozen=True)
class RandomOptions:
    """Options of the random baseline."""

    max_redraws: int = 20  #: redraws of a policy already measured before measuring a duplicate


def run_random(problem: SearchProblem, options: RandomOptions) -> dict[str, Any]:
    rng = np.random.default_rng(problem.seed)
    hi_w, hi_a = problem.max_policy()
    seen: set[bytes] = set()
    while True:
        for _ in range(options.max_redraws + 1):
            w = np.array([rng.choice(c) for c in problem.choices], dtype=np.int64)
            a = np.array([rng.choice(c) for c in problem.choices], dtype=np.int64)
            for i in problem.pinned:
                w[i], a[i] = hi_w[i], hi_a[i]
            w, a = enforce_budget(w, a, problem.costs, problem.budget, problem.choices, problem.pinned)
            key = w.tobytes() + a.tobytes()
            if key not in seen:
                break
        seen.add(key)
        problem.evaluate(w, a)


def _uniform_count(problem: SearchProblem) -> int:
    return max(1, len(uniform_candidates(problem)))


register_method(MethodSpec(
    name="uniform",
    summary="best uniform (one w, one a bitwidth) policy within the budget - the fixed-precision baseline",
    run=run_uniform,
    options_type=UniformOptions,
    default_evaluations=100,
))
register_method(MethodSpec(
    name="random",
    summary="uniformly random per-layer bits, lowered to the budget with HAQ's loop; best feasible kept",
    run=run_random,
    options_type=RandomOptions,
    default_evaluations=300,
))
