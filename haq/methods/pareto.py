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

Batches: one NSGA-II generation (``population_size`` trials; the first batch also holds the
enqueued uniform policies, which belong to no generation) is asked, measured as one batch and
told; a generation's parents are the previous, complete generation, so any ``batch_size``
gives the same history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.errors import ConfigError
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.options import option
from haq.problem import Proposal, SearchProblem


@dataclass(frozen=True)
class ParetoOptions:
    """Options of the NSGA-II front search."""

    population_size: int = option(20, "NSGA-II population (generations = evaluations / population)")
    mutation_prob: float | None = option(None, "per-parameter mutation probability; None = Optuna's 1/n")
    start_from_max: bool = option(True, "measure the uniform policies first, highest bits first (anchor the front)")
    batch_size: int = option(0, "trials asked and measured together; 0 = one generation (the same history)")

    def __post_init__(self) -> None:
        if self.population_size < 2:
            raise ConfigError(f"pareto option population_size={self.population_size} must be at least 2")
        if self.mutation_prob is not None and not 0 <= self.mutation_prob <= 1:
            raise ConfigError(f"pareto option mutation_prob={self.mutation_prob} must be in [0, 1] (or None)")
        if self.batch_size < 0:
            raise ConfigError(f"pareto option batch_size={self.batch_size} must be >= 0 (0 = one generation)")


def _nearest(choices: tuple[int, ...], level: int) -> int:
    """The choice closest to ``level`` bits (the higher one on a tie)."""
    return min(choices, key=lambda b: (abs(b - level), -b))


def run_pareto(problem: SearchProblem, ledger: Ledger, options: ParetoOptions) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # the library never prints
    key = problem.primary
    free = problem.free_layers
    hi_w, hi_a = problem.max_policy()
    batch = options.batch_size or options.population_size + options.population_size // 2

    sampler = optuna.samplers.NSGAIISampler(
        population_size=options.population_size,
        mutation_prob=options.mutation_prob,
        seed=problem.seed,
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    pop = options.population_size
    enqueued = 0  # trials with fixed parameters: they belong to no NSGA-II generation
    if options.start_from_max:
        # Random policies over {2..8} bits are mostly far from fp32 accuracy; the uniform
        # ones (each layer at the nearest bitwidth it may take) seed the high-accuracy end.
        levels = sorted({int(b) for i in free for b in problem.choices[i]}, reverse=True)
        for level in levels[: max(1, options.population_size // 2)]:
            near = {i: _nearest(problem.choices[i], level) for i in free}
            study.enqueue_trial({**{f"w{i}": int(near[i]) for i in free}, **{f"a{i}": int(near[i]) for i in free}})
            enqueued += 1
    n_asked = 0
    while ledger.remaining > 0:
        if ledger.remaining == 1 and ledger.best is None:
            # The last evaluation is kept for a feasible answer: the most accurate point so
            # far, lowered to the budget with HAQ's loop.
            top = max(ledger.trials, key=lambda t: t.accuracy)
            ledger.evaluate(Proposal(*problem.enforce_budget(top.w_bits, top.a_bits)))
            return {}
        # A batch never spans two generations (a generation is bred from the complete one
        # before it; the enqueued trials belong to none) and, without a feasible point yet,
        # stops short of the last evaluation.
        waiting = max(enqueued - n_asked, 0)
        in_generation = pop - max(n_asked - enqueued, 0) % pop
        n = min(batch, waiting + in_generation, max(ledger.remaining - (ledger.best is None), 1))
        n_asked += n
        asked = []
        for _ in range(n):
            trial = study.ask()
            w, a = hi_w.copy(), hi_a.copy()
            for i in free:
                choices = [int(b) for b in problem.choices[i]]
                w[i] = trial.suggest_categorical(f"w{i}", choices)
                a[i] = trial.suggest_categorical(f"a{i}", choices)
            cost = problem.cost(w, a)
            usage = problem.budget.usage(cost)
            trial.set_constraint("budget", float(max(usage.values(), default=0.0) - 1.0))
            asked.append((trial, Proposal(w, a), cost))
        measured = ledger.evaluate_many([p for _, p, _ in asked])  # raises EvaluationLimitReached at the limit
        for (trial, _, cost), result in zip(asked, measured, strict=True):
            if problem.max_accuracy_drop is not None:  # the drop bound is a constraint too
                target = ledger.fp32_accuracy("val") - problem.max_accuracy_drop / 100
                trial.set_constraint("accuracy_drop", float(target - result.accuracy))
            primary = cost.get(key)
            study.tell(trial, [result.accuracy, float(primary) if primary is not None and np.isfinite(primary) else 1e30])
    return {}


SPEC = MethodSpec(
    name="pareto",
    summary="NSGA-II (Optuna) over per-layer bits: the whole accuracy/cost front in one run, best feasible kept",
    run=run_pareto,
    options_type=ParetoOptions,
    default_evaluations=300,
)
