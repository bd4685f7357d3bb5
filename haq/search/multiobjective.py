"""``pareto``: the whole accuracy/cost front in one run (Optuna's NSGA-II over per-layer bits).

Beyond the seed methods (design §7.5): instead of re-running a search per budget, a user
sees the trade-off and picks. Every free layer's weight and activation bitwidth is one
categorical parameter; the two objectives are validation accuracy (maximised) and the
budget's first cost (minimised). The budget enters as NSGA-II's constraint (violation =
max over budget items of cost/limit - 1), so the search is drawn to the feasible side while
infeasible points still shape the front. With ``max_accuracy_drop`` the accuracy bound is a
second constraint, which pulls the population up to the bound and then along it to lower
cost. The uniform policies are measured first: random policies over 2-8 bits are mostly far
from fp32 accuracy, and the uniform ones anchor the front's accurate end. The returned best
policy is chosen like every other method's (most accurate feasible, or cheapest within the
drop) and ``SearchResult.pareto`` holds the front. If no feasible policy has turned up by
the last evaluation, that evaluation goes to the most accurate policy so far lowered to the
budget with HAQ's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.budget import enforce_budget
from haq.search import register_method
from haq.search.base import MethodSpec, SearchProblem


@dataclass(frozen=True)
class ParetoOptions:
    """Options of the NSGA-II front search."""

    population_size: int = 20  #: NSGA-II population (generations = evaluations / population)
    mutation_prob: float | None = None  #: per-parameter mutation probability; None = Optuna's 1/n
    start_from_max: bool = True  #: measure the uniform policies first, highest bits first (anchor the front)


def _nearest(choices: tuple[int, ...], level: int) -> int:
    """The choice closest to ``level`` bits (the higher one on a tie)."""
    return min(choices, key=lambda b: (abs(b - level), -b))


def run_pareto(problem: SearchProblem, options: ParetoOptions) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # the library never prints
    key = problem.budget.primary
    free = [i for i in range(problem.n_layers) if i not in problem.pinned]
    hi_w, hi_a = problem.max_policy()

    sampler = optuna.samplers.NSGAIISampler(
        population_size=options.population_size,
        mutation_prob=options.mutation_prob,
        seed=problem.seed,
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    if options.start_from_max:
        # Random policies over {2..8} bits are mostly far from fp32 accuracy; the uniform
        # ones (each layer at the nearest bitwidth it may take) seed the high-accuracy end.
        levels = sorted({int(b) for i in free for b in problem.choices[i]}, reverse=True)
        for level in levels[: max(1, options.population_size // 2)]:
            near = {i: _nearest(problem.choices[i], level) for i in free}
            study.enqueue_trial({**{f"w{i}": int(near[i]) for i in free}, **{f"a{i}": int(near[i]) for i in free}})
    while True:
        if problem.remaining == 1 and problem.best is None:
            # The last evaluation is kept for a feasible answer: the most accurate point so
            # far, lowered to the budget with HAQ's loop.
            top = max(problem.trials, key=lambda t: t.accuracy)
            problem.evaluate(*enforce_budget(top.w_bits, top.a_bits, problem.costs, problem.budget,
                                             problem.choices, problem.pinned))
            return {}
        trial = study.ask()
        w, a = hi_w.copy(), hi_a.copy()
        for i in free:
            choices = [int(b) for b in problem.choices[i]]
            w[i] = trial.suggest_categorical(f"w{i}", choices)
            a[i] = trial.suggest_categorical(f"a{i}", choices)
        cost = problem.cost(w, a)
        usage = problem.budget.usage(cost)
        trial.set_constraint("budget", float(max(usage.values(), default=0.0) - 1.0))
        measured = problem.evaluate(w, a)  # raises EvaluationLimitReached at the limit
        if problem.max_accuracy_drop is not None:  # the drop bound is a constraint too
            target = problem.fp32_accuracy("val") - problem.max_accuracy_drop / 100
            trial.set_constraint("accuracy_drop", float(target - measured.accuracy))
        primary = cost.get(key)
        study.tell(trial, [measured.accuracy, float(primary) if primary is not None and np.isfinite(primary) else 1e30])


register_method(MethodSpec(
    name="pareto",
    summary="NSGA-II (Optuna) over per-layer bits: the whole accuracy/cost front in one run, best feasible kept",
    run=run_pareto,
    options_type=ParetoOptions,
    default_evaluations=300,
))
