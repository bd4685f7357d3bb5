"""What every search method shares: how it is described, run and what it returns.

A method is a function ``run(problem, ledger, options)``: it proposes policies and measures
them with ``ledger.evaluate_many`` until it is done or the ledger raises
:class:`~haq.problem.EvaluationLimitReached`. :func:`run_method` then re-measures the best
policy on the test split (never seen by the search) and packs a :class:`SearchResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from haq.errors import SearchError
from haq.history import pareto_front
from haq.ledger import Ledger
from haq.policy import Policy
from haq.problem import EvaluationLimitReached, SearchProblem, Trial
from haq.scheme import QuantScheme
from haq.stats import standard_error, wilson_interval


@dataclass
class SearchResult:
    """What every method returns (design §7).

    ``best_policy.metrics`` holds the *test*-split accuracy (``accuracy``), the validation
    accuracy the search saw (``val_accuracy``), fp32 test accuracy and every cost;
    ``repeats`` counts the evaluations answered from the ledger (a policy proposed again).
    """

    method: str
    best_policy: Policy
    history: pd.DataFrame
    pareto: pd.DataFrame
    evaluations: int
    wall_s: float
    per_layer: pd.DataFrame = field(default_factory=pd.DataFrame)  #: the best policy's cost per layer
    extras: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0
    #: for the trade-off plot: fp32 validation accuracy, the primary budget limit and the
    #: primary cost of uniform 8- and 4-bit (see :class:`haq.plots.References`)
    references: dict[str, float | None] = field(default_factory=dict)


RunFn = Callable[[SearchProblem, Ledger, Any], "dict[str, Any] | None"]


def _one(problem: SearchProblem) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """A registered search method.

    Attributes:
        name: the CLI's name (``--method NAME``).
        summary: one line for ``haq list methods``.
        run: ``run(problem, ledger, options)``; may return a dict of extras (HAWQ's traces).
        options_type: a frozen dataclass of the method's options (fields declared with
            :func:`haq.methods.options.option`, so ``haq list options`` can show their help).
        min_evaluations: the fewest evaluations the method needs to return anything.
        default_evaluations: its evaluation limit when the user gives none.
        budget_keys: the budget items it can express.
        scheme: the global scheme the method searches with, from the user's scheme and the
            options (HAGO swaps in its own threshold estimator); None = the user's.
    """

    name: str
    summary: str
    run: RunFn
    options_type: type
    min_evaluations: Callable[[SearchProblem], int] = _one
    default_evaluations: int = 300
    budget_keys: tuple[str, ...] = ("latency", "energy", "size", "bops")
    scheme: Callable[[QuantScheme, Any], QuantScheme] | None = None


def check_runnable(problem: SearchProblem, spec: MethodSpec) -> None:
    """Refuse, before any work, a problem the method cannot solve."""
    need = spec.min_evaluations(problem)
    if problem.max_evaluations < need:
        raise SearchError(
            f"--max-evaluations {problem.max_evaluations} is too few for {spec.name}: it needs at least {need} "
            "to produce a policy"
        )
    bad = [k for k in problem.budget.budget.keys if k not in spec.budget_keys]
    if bad:
        raise SearchError(
            f"method {spec.name} cannot express a {bad[0]} budget; it handles {', '.join(spec.budget_keys)}"
        )


def run_method(spec: MethodSpec, problem: SearchProblem, ledger: Ledger, options: Any) -> SearchResult:
    """Run one method and pack its result (best policy re-measured on the test split)."""
    check_runnable(problem, spec)
    extras: dict[str, Any] = {}
    start = ledger.elapsed_s
    try:
        extras = spec.run(problem, ledger, options) or {}
    except EvaluationLimitReached:
        pass
    wall = ledger.elapsed_s - start
    best = ledger.best
    if best is None:
        raise SearchError(
            f"{spec.name} found no policy within the budget {problem.budget.budget} in {ledger.evaluations} "
            "evaluations; raise --max-evaluations or the budget"
        )
    best, candidates = choose(problem, ledger, best)
    if candidates:
        extras = {**extras, "selection": candidates}
    meta: dict[str, Any] = {"method": spec.name, "evaluations": ledger.evaluations, "select": _rule(problem)}
    if problem.max_accuracy_drop is not None:
        meta["max_accuracy_drop"] = problem.max_accuracy_drop
        meta["accuracy_drop_met"] = ledger.within_accuracy_drop(best)
        meta["evaluations_to_answer"] = best.index + 1  #: the answer was first measured at this evaluation
    if problem.pinned:
        meta["pinned"] = [problem.layers[i].name for i in problem.pinned]
    policy = finalize_policy(problem, ledger, best.w_bits, best.a_bits, meta, best.scheme)
    history = ledger.history()
    return SearchResult(
        method=spec.name,
        best_policy=policy,
        history=history,
        pareto=pareto_front(history, problem.primary),
        evaluations=ledger.evaluations,
        wall_s=wall,
        per_layer=problem.costs.per_layer(best.w_bits, best.a_bits),
        extras=extras,
        repeats=ledger.repeats,
        references=references(problem, ledger),
    )


def references(problem: SearchProblem, ledger: Ledger) -> dict[str, float | None]:
    """fp32 validation accuracy, the primary budget limit and uniform 8-/4-bit primary costs."""
    key = problem.primary
    out: dict[str, float | None] = {"fp32_val_accuracy": ledger.fp32_accuracy("val"),
                                    "limit": problem.budget.limits.get(key)}
    for bits in (8, 4):
        common = problem.common_choices()
        b = bits if bits in common else (max(common) if bits == 8 else min(common))
        w, a = problem.uniform_policy(b)
        out[f"uniform{bits}"] = problem.cost(w, a).get(key)
    return out


def _rule(problem: SearchProblem) -> str:
    """The selection rule that applies: re-ranking answers the most-accurate question only."""
    return "val" if problem.max_accuracy_drop is not None else problem.select


def choose(problem: SearchProblem, ledger: Ledger, best: Trial) -> tuple[Trial, list[dict[str, Any]]]:
    """The policy a search returns, by the problem's selection rule (see
    :class:`~haq.problem.SearchProblem`): ``val`` keeps ``best``; ``kl``/``agreement`` take
    the ``select_top_k`` distinct feasible trials with the highest validation accuracy and
    re-rank those within one standard error of the best (:func:`rerank`) by their fidelity to
    the float model (measured here, not counted as evaluations). Returns the choice and the
    candidates (one row each, for ``summary.md``)."""
    rule = _rule(problem)
    if rule == "val":
        return best, []
    key = problem.primary
    seen: dict[tuple[bytes, bytes, Any], Trial] = {}
    for t in ledger.trials:
        if t.feasible:
            seen.setdefault((t.w_bits.tobytes(), t.a_bits.tobytes(), t.scheme), t)
    pool = sorted(seen.values(), key=lambda t: (-t.accuracy, t.cost.get(key) or 0.0, t.index))[: problem.select_top_k]
    fid = ledger.fidelities(pool)
    n_val = ledger.split_size("val")
    val = [float(t.accuracy) for t in pool]
    chosen, eligible = rerank(rule, val, [f[0] for f in fid], [f[1] for f in fid], n_val)
    rows = [{"trial": t.index, "val_accuracy": t.accuracy, "val_n": n_val, "kl": kl, "agreement": agreement,
             key: t.cost.get(key), "eligible": ok, "chosen": i == chosen}
            for i, (t, (kl, agreement), ok) in enumerate(zip(pool, fid, eligible, strict=True))]
    return pool[chosen], rows


def rerank(rule: str, val_accuracy: Sequence[float], kl: Sequence[float], agreement: Sequence[float],
           n_val: int) -> tuple[int, list[bool]]:
    """Which candidate a fidelity rule returns: ``(index, eligible)``.

    Candidates are given best validation accuracy first (ties: lower cost first). Eligible
    are those within one standard error of the best validation accuracy (the "one-standard-
    error rule" of model selection: a smaller difference is not evidence on ``n_val`` images;
    :func:`~haq.stats.standard_error`), and never less than one image: one image is the
    smallest difference a split can show, and at 100 % the standard error (0.97 images on
    359) would leave the best alone, though a maximum over hundreds of policies is
    optimistic there most of all. Among the eligible ``kl`` takes the lowest mean KL
    divergence to fp32, ``agreement`` the highest top-1 agreement (ties: the earlier
    candidate).

    Why the filter: KL and agreement are low-variance, but they measure closeness to fp32,
    not accuracy; among policies the validation split cannot tell apart they pick the better
    one on unseen data, but where validation accuracy already separates the candidates (a
    random search's, several images apart) a lower KL does not outweigh it - re-ranking all
    top 16 lost 4 test images to ``val`` there (``benchmarks/selection_quality.py``).
    """
    if not val_accuracy:
        raise ValueError("rerank needs at least one candidate")
    top = max(val_accuracy)
    margin = max(standard_error(top, n_val), 1.0 / max(n_val, 1))
    eligible = [top - v <= margin + 1e-12 for v in val_accuracy]
    signal = kl if rule == "kl" else [-a for a in agreement]
    chosen = min((i for i, ok in enumerate(eligible) if ok), key=lambda i: (signal[i], i))
    return chosen, eligible


def finalize_policy(
    problem: SearchProblem,
    ledger: Ledger,
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    search_meta: dict[str, Any],
    scheme: QuantScheme | None = None,
) -> Policy:
    """A :class:`Policy` with test-split accuracy and every cost (not counted as an evaluation)."""
    scheme = scheme or problem.scheme
    cost = problem.cost(w_bits, a_bits)
    val = next((t.accuracy for t in reversed(ledger.trials)
                if np.array_equal(t.w_bits, w_bits) and np.array_equal(t.a_bits, a_bits)
                and (t.scheme or problem.scheme) == scheme), None)
    metrics: dict[str, float | None] = {}
    for name, acc, split in (("accuracy", ledger.test_accuracy(w_bits, a_bits, scheme), "test"),
                             ("val_accuracy", val, "val"), ("fp32_accuracy", ledger.fp32_accuracy("test"), "test")):
        n = ledger.split_size(split)
        lo, hi = wilson_interval(acc, n) if acc is not None else (None, None)
        metrics.update({name: acc, f"{name}_n": float(n), f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    metrics.update(cost.to_dict())
    reference = problem.budget.reference  # uniform 8-bit on the same hardware
    for key in ("latency", "energy", "size", "bops"):
        have, ref = cost.get(key), reference.get(key)
        if have is not None and ref:
            metrics[f"{key}_vs_uniform8"] = have / ref
    meta = {"budget": problem.budget.budget.to_dict(), "seed": problem.seed, **search_meta}
    return Policy.from_bits(
        problem.layers,
        w_bits,
        a_bits,
        model=problem.model_name,
        hardware=problem.hardware,
        quant=scheme,
        metrics=metrics,
        search=meta,
    )
