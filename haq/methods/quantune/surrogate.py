"""The XGBoost surrogate loop at the heart of Quantune, reusable on any finite candidate set.

Quantune's loop (Lee et al. 2022, Alg. 1; leejaymin/qaunt_xgboost ``modeling_regression.R``,
"transfer + online learning"): each round, train a gradient-boosted tree model on every
measured configuration - the warm-start rows of other models plus the target's own - score
every candidate not yet measured, measure the top one, repeat.

Two parts:

* :class:`Surrogate` - fit / predict with the paper's hyper-parameters (200 rounds, eta
  0.30, gamma 1: the paper's 5-fold CV choice), and one choice of objective:

  - ``rank:pairwise`` (default) - learns the *order* of configurations within each model
    (one query group per model). Models differ in accuracy level (SqueezeNet's best int8
    is 53%, ResNet-50's 76%), and only the order within the target matters for picking the
    next configuration; a ranking loss ignores the level, a regression wastes splits on it
    and on collapsed configurations (0.1% top-1) that dominate squared error. On the
    paper's own table it needs fewer trials to the best configuration than the paper's
    regression (``benchmarks/quantune_speedup.py`` prints both).
  - ``reg:squarederror`` - the paper's regression on accuracy.

* :func:`select` - top-k of the scores with random tie-breaking (trees give many exact
  ties) and optional epsilon-greedy exploration: each of the k picks is, with probability
  epsilon, a uniformly random candidate instead (our addition; the paper is purely greedy).

:func:`search_finite` runs the whole loop on a finite set, with an ``evaluate`` callback,
so the same code drives the table reproduction and (via :mod:`haq.methods.quantune`)
measurements of a real model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xgboost as xgb

from haq.errors import ConfigError

OBJECTIVES = ("rank:pairwise", "reg:squarederror")


@dataclass(frozen=True)
class SurrogateOptions:
    """Hyper-parameters of the surrogate and of the selection rule.

    Attributes:
        rounds: boosting rounds per fit (paper: 200).
        eta: learning rate (paper: 0.30, its CV choice among 0.10-0.40).
        gamma: minimum loss reduction to split a leaf (paper: 1, its CV choice among 0-5).
        objective: ``rank:pairwise`` (default, one query group per model) or
            ``reg:squarederror`` (the paper's regression on accuracy).
        k: candidates measured per round (paper: 1).
        epsilon: probability that a pick is uniformly random instead of the top scored
            one (our addition; 0 = the paper's greedy loop).
        threads: XGBoost threads per fit (1: the fits are small, and more threads slow
            them down on a busy machine).
    """

    rounds: int = 200
    eta: float = 0.30
    gamma: float = 1.0
    objective: str = "rank:pairwise"
    k: int = 1
    epsilon: float = 0.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"surrogate objective {self.objective!r} is unknown: use one of {', '.join(OBJECTIVES)}")
        if self.rounds < 1:
            raise ConfigError(f"surrogate rounds={self.rounds} must be at least 1")
        if not 0 < self.eta <= 1:
            raise ConfigError(f"surrogate eta={self.eta} must be in (0, 1]")
        if self.gamma < 0:
            raise ConfigError(f"surrogate gamma={self.gamma} must be >= 0")
        if self.k < 1:
            raise ConfigError(f"k={self.k} candidates per round must be at least 1")
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"epsilon={self.epsilon} must be in [0, 1]")
        if self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be at least 1")


@dataclass
class Observations:
    """Measured rows: features ``x`` ``(n, d)``, values ``y`` ``(n,)`` (higher is better) and
    the model each row was measured on, ``group`` ``(n,)`` (the query group of the ranking
    objective; rows of one model share one group)."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.float64)
        self.group = np.asarray(self.group, dtype=np.int64) if len(self.group) else np.zeros(len(self.y), np.int64)
        if self.x.ndim != 2:
            raise ConfigError(f"observations: features must be (n, d), got shape {self.x.shape}")
        if not (len(self.x) == len(self.y) == len(self.group)):
            raise ConfigError(f"observations: {len(self.x)} rows, {len(self.y)} values, {len(self.group)} groups")

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def empty(cls, width: int) -> Observations:
        return cls(np.zeros((0, width)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def extend(self, x: np.ndarray, y: Sequence[float], group: int) -> Observations:
        """These rows plus ``x``/``y`` measured on model ``group`` (a new object)."""
        if len(y) == 0:
            return self
        x = np.asarray(x, float).reshape(len(y), -1)
        return Observations(
            np.vstack([self.x, x]),
            np.concatenate([self.y, np.asarray(y, float)]),
            np.concatenate([self.group, np.full(len(y), group, dtype=np.int64)]),
        )


class Surrogate:
    """A gradient-boosted tree model of configuration quality (see the module docstring)."""

    def __init__(self, options: SurrogateOptions) -> None:
        self.options = options
        self.booster: xgb.Booster | None = None

    def can_fit(self, obs: Observations) -> bool:
        """Whether ``obs`` carries anything to learn: two rows of different value (in one
        model, for the ranking objective)."""
        if self.options.objective == "reg:squarederror":
            return len(obs) >= 2 and np.ptp(obs.y) > 0
        return any(np.ptp(obs.y[obs.group == g]) > 0 for g in np.unique(obs.group))

    def fit(self, obs: Observations, seed: int) -> None:
        """Train from scratch on ``obs`` (the paper retrains every round)."""
        o = self.options
        params = {"objective": o.objective, "eta": o.eta, "gamma": o.gamma, "nthread": o.threads, "seed": seed}
        if o.objective == "rank:pairwise":
            order = np.argsort(obs.group, kind="stable")  # XGBoost wants rows sorted by query
            data = xgb.DMatrix(obs.x[order], label=obs.y[order], qid=obs.group[order])
        else:
            data = xgb.DMatrix(obs.x, label=obs.y)
        self.booster = xgb.train(params, data, num_boost_round=o.rounds)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of the rows of ``x`` ``(n, d)``: higher = predicted better. Only their
        order is meaningful under the ranking objective."""
        if self.booster is None:
            raise ConfigError("the surrogate has not been fitted yet")
        return self.booster.predict(xgb.DMatrix(np.asarray(x, float)))


def select(scores: np.ndarray, k: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``min(k, n)`` distinct candidates: the best ``scores`` first, ties broken
    uniformly at random; each pick is instead uniformly random with probability
    ``epsilon``."""
    n = len(scores)
    k = min(k, n)
    order = np.lexsort((rng.random(n), -np.asarray(scores, float)))  # by score desc, random among ties
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    greedy = iter(order)
    for _ in range(k):
        if epsilon > 0 and rng.random() < epsilon:
            i = int(rng.choice(np.flatnonzero(~taken)))
        else:
            i = next(j for j in greedy if not taken[j])
        taken[i] = True
        chosen.append(i)
    return np.array(chosen, dtype=np.int64)


def search_finite(
    features: np.ndarray,
    evaluate: Callable[[int], float],
    options: SurrogateOptions,
    rng: np.random.Generator,
    warm: Observations | None = None,
    max_trials: int | None = None,
    stop: Callable[[list[tuple[int, float]]], bool] | None = None,
) -> list[tuple[int, float]]:
    """Quantune's loop over the candidates ``features`` ``(n, d)``; returns the measured
    ``(candidate index, value)`` pairs in order.

    ``evaluate(i)`` measures candidate ``i`` (it may raise to end the search, e.g.
    :class:`~haq.problem.EvaluationLimitReached`; what was measured before is kept by
    the caller's callback). ``warm`` are rows of other models (the target's rows get a
    group of their own). Each candidate is measured at most once. The loop ends when
    every candidate is measured, after ``max_trials``, or when ``stop(measured)`` is true.
    While the surrogate has nothing to learn from (no warm start, fewer than two distinct
    values) the picks are uniformly random.
    """
    features = np.asarray(features, float)
    n = len(features)
    warm = warm if warm is not None else Observations.empty(features.shape[1])
    target_group = int(warm.group.max()) + 1 if len(warm) else 0
    limit = n if max_trials is None else min(n, max_trials)
    surrogate = Surrogate(options)
    measured: list[tuple[int, float]] = []
    unexplored = np.ones(n, dtype=bool)
    while len(measured) < limit:
        idx = np.flatnonzero(unexplored)
        obs = warm.extend(features[[i for i, _ in measured]], [v for _, v in measured], target_group)
        if surrogate.can_fit(obs):
            surrogate.fit(obs, seed=int(rng.integers(2**31)))
            scores = surrogate.predict(features[idx])
        else:
            scores = np.zeros(len(idx))  # all tied: uniformly random picks
        picks = idx[select(scores, min(options.k, limit - len(measured)), options.epsilon, rng)]
        for i in picks:
            unexplored[i] = False
            measured.append((int(i), float(evaluate(int(i)))))
            if stop is not None and stop(measured):
                return measured
    return measured
