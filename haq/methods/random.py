"""``random``: per-layer bits drawn uniformly from each layer's choices, then lowered with
HAQ's budget loop (:func:`haq.budget.enforce_budget`), best feasible kept.

Draws do not depend on measured accuracies, so ``batch_size`` policies are drawn and measured
together; any batch size gives the same history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.errors import ConfigError
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.options import option
from haq.problem import Proposal, SearchProblem


@dataclass(frozen=True)
class RandomOptions:
    """Options of the random baseline."""

    max_redraws: int = option(20, "redraws of a policy already measured before measuring a duplicate")
    batch_size: int = option(16, "policies drawn and measured together (any size gives the same history)")

    def __post_init__(self) -> None:
        if self.max_redraws < 0:
            raise ConfigError(f"random option max_redraws={self.max_redraws} must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"random option batch_size={self.batch_size} must be at least 1")


def run_random(problem: SearchProblem, ledger: Ledger, options: RandomOptions) -> dict[str, Any]:
    rng = np.random.default_rng(problem.seed)
    hi_w, hi_a = problem.max_policy()
    seen: set[bytes] = set()

    def draw() -> Proposal:
        for _ in range(options.max_redraws + 1):
            w = np.array([rng.choice(c) for c in problem.choices], dtype=np.int64)
            a = np.array([rng.choice(c) for c in problem.choices], dtype=np.int64)
            for i in problem.pinned:
                w[i], a[i] = hi_w[i], hi_a[i]
            w, a = problem.enforce_budget(w, a)
            key = w.tobytes() + a.tobytes()
            if key not in seen:
                break
        seen.add(key)
        return Proposal(w, a)

    while ledger.remaining > 0:
        ledger.evaluate_many([draw() for _ in range(min(options.batch_size, ledger.remaining))])
    return {}


SPEC = MethodSpec(
    name="random",
    summary="uniformly random per-layer bits, lowered to the budget with HAQ's loop; best feasible kept",
    run=run_random,
    options_type=RandomOptions,
    default_evaluations=300,
)
