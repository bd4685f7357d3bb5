"""What every search method shares: the problem it is given and the result it returns.

Fairness between methods is enforced here, not by convention: a method can only measure
accuracy through :meth:`SearchProblem.evaluate`, which counts the evaluation, stops the
method at ``max_evaluations``, costs the policy on the hardware, checks the budget, writes
the history row and tracks the best feasible policy. :func:`run_method` then re-measures
that policy on the test split (never seen by the search) and packs a :class:`SearchResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from haq.budget import Cost, CostModel, ResolvedBudget
from haq.errors import SearchError
from haq.layers import LayerSpec
from haq.policy import Policy
from haq.quant.scheme import QuantScheme
from haq.simulators.base import HardwareModel

HISTORY_COLUMNS = [
    "trial", "method", "wall_s", "w_bits", "a_bits", "accuracy",
    "latency_ms", "energy_mj", "size_mib", "bops_g", "feasible", "reward", "quant",
]


class Evaluates(Protocol):
    """The part of :class:`haq.quant.Evaluator` a searcher may use."""

    scheme: QuantScheme

    def evaluate(self, w_bits: np.ndarray, a_bits: np.ndarray, split: str = "val") -> float:
        """Top-1 accuracy in [0, 1] of the fake-quantized model on ``split``."""
        ...

    def fp32_accuracy(self, split: str = "val") -> float: ...

    def with_scheme(self, scheme: QuantScheme) -> Evaluates:
        """The same model and data under another global quantization scheme."""
        ...


class EvaluationLimitReached(Exception):
    """Raised inside a method when it asks for one evaluation more than allowed (control flow)."""


@dataclass(frozen=True)
class Trial:
    """One measured policy. ``accuracy`` is on the validation split, in [0, 1]."""

    index: int
    w_bits: np.ndarray
    a_bits: np.ndarray
    accuracy: float
    cost: Cost
    feasible: bool
    reward: float | None
    wall_s: float
    scheme: QuantScheme | None = None  #: None = the problem's own scheme


def scheme_str(scheme: QuantScheme | None) -> str:
    """A scheme as history.csv's ``quant`` column ("" = the run's own scheme)."""
    if scheme is None:
        return ""
    d = scheme.to_dict()
    return " ".join(f"{k}={d[k]}" for k in ("weight", "activation", "calibration", "calibration_images") if k in d)


def bits_str(bits: Sequence[int] | np.ndarray) -> str:
    """Bits as the space-separated string of history.csv (layer order)."""
    return " ".join(str(int(b)) for b in bits)


def parse_bits_str(text: str) -> np.ndarray:
    return np.array([int(t) for t in str(text).split()], dtype=np.int64)


@dataclass
class SearchProblem:
    """One mixed-precision search problem, identical for every method.

    Attributes:
        model_name: registry name or description of the model (goes into policy.json).
        layers: the quantizable layers, execution order.
        evaluator: measures accuracy of a bit assignment.
        hardware: the hardware model (for its name and supported bits).
        costs: latency/energy/size/BOPs of any bit assignment.
        budget: absolute limits every returned policy must meet.
        choices: per layer, the bitwidths a method may give it (weights and activations).
        pinned: indices of layers fixed at ``pinned_bits`` (first/last by default).
        seed: the one seed every random choice derives from.
        max_evaluations: accuracy measurements allowed (the fairness unit of haq compare).
        recorder: receives each history row (a run directory's history.csv), or None.
        on_trial: progress callback, called after every evaluation.
        replay: history rows measured before a resume, keyed by trial index; a
            deterministic method re-run after a crash gets each trial's accuracy back
            without re-measuring, as long as it proposes the same policy at that index.
        run_dir: the run directory, where a method keeps its ``checkpoint/`` (None: no
            checkpointing).
        max_accuracy_drop: the other question users ask (design §8): the *cheapest* policy
            (on the budget's first cost) whose validation accuracy is within this many
            percent points of fp32. None = the most accurate policy within the budget.
    """

    model_name: str
    layers: Sequence[LayerSpec]
    evaluator: Evaluates
    hardware: HardwareModel
    costs: CostModel
    budget: ResolvedBudget
    choices: tuple[tuple[int, ...], ...]
    pinned: tuple[int, ...] = ()
    pinned_bits: int = 8
    seed: int = 0
    max_evaluations: int = 300
    recorder: Callable[[dict[str, Any]], None] | None = None
    on_trial: Callable[[Trial], None] | None = None
    replay: dict[int, dict[str, Any]] = field(default_factory=dict)
    run_dir: Path | None = None
    method: str = ""
    max_accuracy_drop: float | None = None
    trials: list[Trial] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)
    _fp32: dict[str, float] = field(default_factory=dict)

    # ----- what methods use --------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    @property
    def remaining(self) -> int:
        return self.max_evaluations - len(self.trials)

    @property
    def best(self) -> Trial | None:
        """Best feasible trial so far: highest accuracy, then lowest primary cost; with
        ``max_accuracy_drop``, the cheapest trial within the drop (highest accuracy on a
        tie), or the most accurate one while none is within it."""
        feasible = [t for t in self.trials if t.feasible]
        if not feasible:
            return None
        key = self.budget.primary
        within = [t for t in feasible if self.within_accuracy_drop(t)]
        if within:
            return min(within, key=lambda t: (t.cost.get(key) or 0.0, -t.accuracy))
        return max(feasible, key=lambda t: (t.accuracy, -(t.cost.get(key) or 0.0)))

    def within_accuracy_drop(self, trial: Trial) -> bool:
        """Whether ``trial`` is within ``max_accuracy_drop`` points of fp32 (validation)."""
        if self.max_accuracy_drop is None:
            return False
        return trial.accuracy >= self.fp32_accuracy("val") - self.max_accuracy_drop / 100 - 1e-12

    def fp32_accuracy(self, split: str = "val") -> float:
        if split not in self._fp32:
            self._fp32[split] = self.evaluator.fp32_accuracy(split)
        return self._fp32[split]

    def cost(self, w_bits: np.ndarray, a_bits: np.ndarray) -> Cost:
        return self.costs.cost(w_bits, a_bits)

    def feasible(self, w_bits: np.ndarray, a_bits: np.ndarray) -> bool:
        return self.budget.satisfied(self.costs.cost(w_bits, a_bits))

    def max_policy(self) -> tuple[np.ndarray, np.ndarray]:
        """Every layer at its highest choice (pinned layers at ``pinned_bits``)."""
        hi = np.array([max(c) for c in self.choices], dtype=np.int64)
        for i in self.pinned:
            hi[i] = self.pinned_bits if self.pinned_bits in self.choices[i] else max(self.choices[i])
        return hi, hi.copy()

    def evaluate(
        self,
        w_bits: Sequence[int] | np.ndarray,
        a_bits: Sequence[int] | np.ndarray,
        reward: float | Callable[[float], float] | None = None,
        scheme: QuantScheme | None = None,
    ) -> Trial:
        """Measure one policy on the validation split; the only way a method sees accuracy.

        ``scheme`` measures it under another global quantization scheme (Quantune searches
        schemes too); None = the evaluator's own. ``reward`` is recorded in the history: a
        number, or a function of the measured accuracy (RL's reward needs the accuracy). Raises :class:`EvaluationLimitReached`
        when the limit is spent and :class:`SearchError` on a NaN/Inf accuracy (the run
        directory is kept).
        """
        if len(self.trials) >= self.max_evaluations:
            raise EvaluationLimitReached
        if scheme is not None and scheme == self.evaluator.scheme:
            scheme = None
        w = np.asarray(w_bits, dtype=np.int64).copy()
        a = np.asarray(a_bits, dtype=np.int64).copy()
        index = len(self.trials)
        cost = self.costs.cost(w, a)
        cached = self.replay.get(index)
        if cached is not None and (cached["w_bits"], cached["a_bits"], cached.get("quant") or "") != (
            bits_str(w), bits_str(a), scheme_str(scheme)
        ):
            cached = None  # the re-run diverged from the history here: measure anew
        if cached is not None:
            acc, wall = float(cached["accuracy"]), float(cached["wall_s"])
        else:
            evaluator = self.evaluator if scheme is None else self.evaluator.with_scheme(scheme)
            acc = float(evaluator.evaluate(w, a, "val"))
            wall = time.perf_counter() - self._start
        if not math.isfinite(acc):
            raise SearchError(
                f"trial {index} ({self.method}) measured a non-finite accuracy ({acc}); the run directory is kept - "
                "check the model and data for NaN/Inf (e.g. a checkpoint trained with a diverged loss)"
            )
        if callable(reward):
            reward = float(reward(acc))
        trial = Trial(index, w, a, acc, cost, self.budget.satisfied(cost), reward, wall, scheme)
        self.trials.append(trial)
        if self.recorder is not None:
            self.recorder(self.history_row(trial))
        if self.on_trial is not None:
            self.on_trial(trial)
        return trial

    def history_row(self, t: Trial) -> dict[str, Any]:
        return {
            "trial": t.index,
            "method": self.method,
            "wall_s": round(t.wall_s, 4),
            "w_bits": bits_str(t.w_bits),
            "a_bits": bits_str(t.a_bits),
            "accuracy": t.accuracy,
            "latency_ms": t.cost.latency_ms,
            "energy_mj": t.cost.energy_mj,
            "size_mib": t.cost.size_mib,
            "bops_g": t.cost.bops_g,
            "feasible": t.feasible,
            "reward": t.reward,
            "quant": scheme_str(t.scheme),
        }

    def history(self) -> pd.DataFrame:
        return pd.DataFrame([self.history_row(t) for t in self.trials], columns=HISTORY_COLUMNS)


@dataclass
class SearchResult:
    """What every method returns (design §7).

    ``best_policy.metrics`` holds the *test*-split accuracy (``accuracy``), the validation
    accuracy the search saw (``val_accuracy``), fp32 test accuracy and every cost.
    """

    method: str
    best_policy: Policy
    history: pd.DataFrame
    pareto: pd.DataFrame
    evaluations: int
    wall_s: float
    per_layer: pd.DataFrame = field(default_factory=pd.DataFrame)  #: the best policy's cost per layer
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered search method.

    ``run(problem, options)`` proposes policies and measures them with
    ``problem.evaluate`` until done or :class:`EvaluationLimitReached`; it may return a dict
    of extras (e.g. HAWQ's traces). ``options`` is an instance of ``options_type`` (a
    dataclass; ``haq.search(..., **kwargs)`` builds it). ``min_evaluations(problem)`` is the
    fewest evaluations the method needs to return anything.
    """

    name: str
    summary: str
    run: Callable[[SearchProblem, Any], dict[str, Any] | None]
    options_type: type
    min_evaluations: Callable[[SearchProblem], int] = lambda problem: 1
    default_evaluations: int = 300
    budget_keys: tuple[str, ...] = ("latency", "energy", "size", "bops")


def pareto_mask(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True where no other point has lower-or-equal cost and higher-or-equal accuracy
    (strictly better in one). ``cost`` and ``accuracy`` have shape ``(n,)``."""
    n = len(cost)
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    mask = np.zeros(n, dtype=bool)
    best = -np.inf
    for i in order:
        if accuracy[i] > best:
            mask[i] = True
            best = accuracy[i]
    return mask


def pareto_front(history: pd.DataFrame, cost_key: str) -> pd.DataFrame:
    """The accuracy-vs-``cost_key`` front of a history DataFrame, sorted by cost."""
    from haq.budget import COST_FIELDS

    col = COST_FIELDS[cost_key]
    h = history.dropna(subset=[col, "accuracy"])
    if h.empty:
        return h.copy()
    h = h.drop_duplicates(subset=[c for c in ("w_bits", "a_bits", "quant") if c in h])
    mask = pareto_mask(h[col].to_numpy(float), h["accuracy"].to_numpy(float))
    return h[mask].sort_values(col).reset_index(drop=True)


def run_method(problem: SearchProblem, spec: MethodSpec, options: Any) -> SearchResult:
    """Run one method on ``problem`` and pack its result (best policy re-measured on test)."""
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
    problem.method = spec.name
    problem._start = time.perf_counter()
    extras: dict[str, Any] = {}
    try:
        extras = spec.run(problem, options) or {}
    except EvaluationLimitReached:
        pass
    wall = time.perf_counter() - problem._start
    best = problem.best
    if best is None:
        raise SearchError(
            f"{spec.name} found no policy within the budget {problem.budget.budget} in {problem.evaluations} "
            "evaluations; raise --max-evaluations or the budget"
        )
    meta: dict[str, Any] = {"method": spec.name, "evaluations": problem.evaluations}
    if problem.max_accuracy_drop is not None:
        meta["max_accuracy_drop"] = problem.max_accuracy_drop
        meta["accuracy_drop_met"] = problem.within_accuracy_drop(best)
    policy = finalize_policy(problem, best.w_bits, best.a_bits, meta, best.scheme)
    history = problem.history()
    return SearchResult(
        method=spec.name,
        best_policy=policy,
        history=history,
        pareto=pareto_front(history, problem.budget.primary),
        evaluations=problem.evaluations,
        wall_s=wall,
        per_layer=per_layer_costs(problem, best.w_bits, best.a_bits),
        extras=extras,
    )


def per_layer_costs(problem: SearchProblem, w_bits: np.ndarray, a_bits: np.ndarray) -> pd.DataFrame:
    """One row per layer: bits, latency (ms), energy (mJ), size (MiB), BOPs (G)."""
    table = problem.costs.table
    lat, en = table.per_layer(w_bits, a_bits) if table is not None else (None, None)
    rows = []
    for i, s in enumerate(problem.layers):
        w, a = int(w_bits[i]), int(a_bits[i])
        rows.append({
            "layer": s.name, "kind": s.kind, "w_bits": w, "a_bits": a,
            "latency_ms": None if lat is None else float(lat[i]),
            "energy_mj": None if en is None else float(en[i]),
            "size_mib": (s.params * w / 8 + 4 * s.bias_params) / 2**20,
            "bops_g": s.macs * w * a / 1e9,
        })
    return pd.DataFrame(rows)


def finalize_policy(
    problem: SearchProblem,
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    search_meta: dict[str, Any],
    scheme: QuantScheme | None = None,
) -> Policy:
    """A :class:`Policy` with test-split accuracy and every cost (not counted as an evaluation)."""
    evaluator = problem.evaluator if scheme is None else problem.evaluator.with_scheme(scheme)
    cost = problem.cost(w_bits, a_bits)
    val = next((t.accuracy for t in reversed(problem.trials)
                if np.array_equal(t.w_bits, w_bits) and np.array_equal(t.a_bits, a_bits) and t.scheme == scheme), None)
    metrics: dict[str, float | None] = {
        "accuracy": float(evaluator.evaluate(np.asarray(w_bits), np.asarray(a_bits), "test")),
        "val_accuracy": val,
        "fp32_accuracy": problem.fp32_accuracy("test"),
        **cost.to_dict(),
    }
    meta = {"budget": problem.budget.budget.to_dict(), "seed": problem.seed, **search_meta}
    return Policy.from_bits(
        problem.layers,
        w_bits,
        a_bits,
        model=problem.model_name,
        hardware=problem.hardware.name,
        quant=evaluator.scheme,
        metrics=metrics,
        search=meta,
    )


