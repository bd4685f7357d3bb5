"""``uniform``: the baseline every seed paper compares against.

The best policy with one weight and one activation bitwidth for all free layers (fixed
8-bit, PACT-style uniform) among those that meet the budget. Infeasible pairs are skipped
without measuring (their cost is known), so it needs at most ``|choices|^2`` evaluations;
all candidates are measured as one batch, most expensive first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.problem import Proposal, SearchProblem


def uniform_candidates(problem: SearchProblem) -> list[tuple[np.ndarray, np.ndarray]]:
    """Feasible uniform policies, most expensive first (pinned layers at their pinned bits)."""
    out = problem.uniform_policies(feasible_only=True)
    key = problem.primary
    out.sort(key=lambda p: -(problem.cost(*p).get(key) or 0.0))
    return out


@dataclass(frozen=True)
class UniformOptions:
    """No options: the uniform baseline measures every feasible uniform (w, a) pair."""


def run_uniform(problem: SearchProblem, ledger: Ledger, options: UniformOptions) -> dict[str, Any]:
    ledger.evaluate_many([Proposal(w, a) for w, a in uniform_candidates(problem)])
    return {}


SPEC = MethodSpec(
    name="uniform",
    summary="best uniform (one w, one a bitwidth) policy within the budget - the fixed-precision baseline",
    run=run_uniform,
    options_type=UniformOptions,
    default_evaluations=100,
)
