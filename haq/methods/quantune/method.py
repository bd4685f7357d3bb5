"""Quantune (design §7.4): an XGBoost surrogate over quantization configurations.

Source: Lee et al., "Quantune: Post-training quantization of convolutional neural networks
using extreme gradient boosting for fast deployment" (FGCS 2022); leejaymin/qaunt_xgboost.

**Space.** A configuration is a global scheme - calibration images (1 / a tenth / all of
the calibration split, the paper's 1 : 1000 : 10000 ladder), clipping (max or KL), schema
(asymmetric, symmetric, symmetric-uint8, power-of-two) and weight granularity
(per-tensor, per-channel): the paper's 48 - together with per-layer w/a bits (our
extension, so Quantune answers the mixed-precision question under a budget). See
:mod:`haq.methods.quantune.space`.

**Candidates.** The paper's space is finite (48 int8 configurations), ours is not, so each
round scores a pool (``pool_size``) of unexplored, budget-feasible candidates: every
global scheme at every feasible uniform bitwidth pair (the paper's int8 space when the
budget allows 8 bits), random per-layer bits lowered to the budget with HAQ's loop, and -
once something is measured - neighbours of the best measured configurations (one layer's
weight or activation bits moved one step, or the same bits under another scheme).
Infeasible candidates are never measured; the best feasible is returned. With
``--max-accuracy-drop`` the rounds run in stages under tighter and tighter budgets, bisecting
for the cheapest budget that still admits a policy within the drop (:mod:`haq.methods.budgets`).

**Surrogate and loop.** :mod:`haq.methods.quantune.surrogate`: retrain every round on every
measured configuration plus the warm-start histories (other models, one query group
each), score the pool, measure the top ``k`` (epsilon-greedy: our addition). Features:
one-hot of the scheme, bit statistics and per-layer bits, and the model's 8 architecture
features (:mod:`haq.methods.quantune.arch`; counted on the BN-folded model the evaluator
holds, so ``nodes`` and ``bn`` are unknown there).

**Schemes.** Each configuration is proposed with its scheme (``Proposal(w, a, scheme=...)``):
counting, the limit, the budget check and the history row (its ``quant`` column) stay in the
ledger, and the best trial's scheme goes into the final test-split measurement and
``policy.json``'s ``quant`` block. The ``k`` picks of a round are measured as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from haq.errors import ConfigError, ModelError
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.budgets import current_stage
from haq.methods.options import option
from haq.methods.quantune.arch import ArchFeatures, architecture_features
from haq.methods.quantune.space import ConfigEncoder, QuantuneConfig, global_configs
from haq.methods.quantune.surrogate import Observations, Surrogate, SurrogateOptions, select
from haq.methods.quantune.table import load_reference_table
from haq.problem import EvaluationLimitReached, ModelAccess, Proposal, SearchProblem
from haq.scheme import QuantScheme


@dataclass(frozen=True)
class QuantuneOptions:
    """Options of the ``quantune`` method (surrogate defaults: the paper's, from
    :class:`~haq.methods.quantune.surrogate.SurrogateOptions`). ``warm_start`` files are in the
    format of ``quantune_measured_configs.csv``; models named there that
    :data:`~haq.methods.quantune.arch.REFERENCE_ARCHITECTURES` knows get their architecture
    features."""

    rounds: int = option(SurrogateOptions.rounds, "boosting rounds per surrogate fit (paper: 200)")
    eta: float = option(SurrogateOptions.eta, "surrogate learning rate (paper: 0.30)")
    gamma: float = option(SurrogateOptions.gamma, "surrogate minimum split loss (paper: 1)")
    objective: str = option(SurrogateOptions.objective, "rank:pairwise (order within each model) or reg:squarederror (the paper's regression)")
    k: int = option(SurrogateOptions.k, "configurations measured per round, as one batch (paper: 1)")
    epsilon: float = option(SurrogateOptions.epsilon, "probability that a pick is a random pool member (0 = the paper's greedy choice)")
    pool_size: int = option(256, "candidates scored per round when the space is too large to score whole")
    mixed: bool = option(True, "search per-layer bits (true) or only the global schemes at uniform bits")
    warm_start: tuple[str, ...] = option((), "CSV files of other models' measured configurations (quantune_measured_configs.csv format)")
    threads: int = option(SurrogateOptions.threads, "XGBoost threads per fit")

    def __post_init__(self) -> None:
        self.surrogate()  # validates the shared fields
        if self.pool_size < 1:
            raise ConfigError(f"pool_size={self.pool_size} must be at least 1")
        paths = (self.warm_start,) if isinstance(self.warm_start, str) else tuple(self.warm_start)
        object.__setattr__(self, "warm_start", paths)  # a JSON config gives a list

    def surrogate(self) -> SurrogateOptions:
        return SurrogateOptions(self.rounds, self.eta, self.gamma, self.objective, self.k, self.epsilon, self.threads)


def _arch_of(model: ModelAccess) -> ArchFeatures:
    """Architecture features of the evaluated model (BN-folded: nodes and bn unknown)."""
    try:
        f = architecture_features(model.folded_model())
    except ModelError:
        return ArchFeatures.unknown()
    return ArchFeatures(float("nan"), f.conv, float("nan"), f.act, f.skip, f.depthwise, f.pointwise, f.size_mb)


def _warm_start(paths: tuple[str, ...], encoder: ConfigEncoder) -> Observations:
    obs = Observations.empty(encoder.width)
    group = 0
    for path in paths:
        table = load_reference_table(Path(path))
        for model in table.model_names:
            rows = table.rows(model)
            x = encoder.encode([table.configs[i] for i in rows], table.arch(model))
            obs = obs.extend(x, table.accuracy[rows], group)
            group += 1
    return obs


# ----- candidates ----------------------------------------------------------------------------
class _Candidates:
    """Generates unexplored, feasible candidates of one problem (see the module docstring)."""

    def __init__(self, problem: SearchProblem, schemes: list[QuantuneConfig], mixed: bool) -> None:
        self.p = problem
        self.schemes = schemes
        self.mixed = mixed
        self.free = problem.free_layers
        self.hi_w, self.hi_a = problem.max_policy()
        self.steps = [sorted(c) for c in problem.choices]
        #: feasible uniform (w, a) policies (pinned layers at their pinned bits), highest first
        self.uniform = [(tuple(int(b) for b in w), tuple(int(b) for b in a)) for w, a in problem.uniform_policies()]

    def _random_bits(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        w, a = self.hi_w.copy(), self.hi_a.copy()
        for i in self.free:
            w[i], a[i] = rng.choice(self.steps[i]), rng.choice(self.steps[i])
        return self.p.enforce_budget(w, a)

    def _neighbour(self, c: QuantuneConfig, rng: np.random.Generator) -> QuantuneConfig:
        if not self.mixed or not self.free or rng.random() < 0.25:
            return QuantuneConfig.with_bits(self.schemes[int(rng.integers(len(self.schemes)))], c.w_bits or (), c.a_bits or ())
        w, a = np.array(c.w_bits or ()), np.array(c.a_bits or ())
        arr, i = (w, a)[int(rng.integers(2))], self.free[int(rng.integers(len(self.free)))]
        s = self.steps[i]
        k = s.index(int(arr[i])) + (1 if rng.random() < 0.5 else -1)
        arr[i] = s[min(max(k, 0), len(s) - 1)]
        return QuantuneConfig.with_bits(c, w, a)

    def pool(self, size: int, measured: dict[QuantuneConfig, float], rng: np.random.Generator) -> list[QuantuneConfig]:
        """Up to ``size`` distinct unexplored feasible candidates."""
        out: dict[QuantuneConfig, None] = {}

        def offer(c: QuantuneConfig) -> None:
            if c not in measured and c not in out and self.p.feasible(np.asarray(c.w_bits), np.asarray(c.a_bits)):
                out[c] = None

        uniform = [QuantuneConfig.with_bits(s, w, a) for s in self.schemes for w, a in self.uniform]
        unexplored = [c for c in uniform if c not in measured]
        quota = size // 2 if self.mixed else size
        if len(unexplored) > quota:
            unexplored = [unexplored[int(j)] for j in np.sort(rng.choice(len(unexplored), quota, replace=False))]
        for c in unexplored:
            offer(c)
        if not self.mixed:
            return list(out)
        best = sorted(measured, key=measured.get, reverse=True)[:3]  # type: ignore[arg-type]
        for _ in range(4 * size):
            if len(out) >= size:
                break
            if best and rng.random() < 0.5:
                offer(self._neighbour(best[int(rng.integers(len(best)))], rng))
            else:
                w, a = self._random_bits(rng)
                offer(QuantuneConfig.with_bits(self.schemes[int(rng.integers(len(self.schemes)))], w, a))
        return list(out)


# ----- the method ----------------------------------------------------------------------------
def run_quantune(problem: SearchProblem, ledger: Ledger, options: QuantuneOptions) -> dict[str, Any]:
    rng = np.random.default_rng(problem.seed)
    available = len(ledger.model.calibration_split)
    schemes = global_configs()
    cands = _Candidates(problem, schemes, options.mixed)
    encoder = ConfigEncoder(problem.n_layers)
    arch = _arch_of(ledger.model)
    warm = _warm_start(options.warm_start, encoder)
    target_group = int(warm.group.max()) + 1 if len(warm) else 0
    surrogate = Surrogate(options.surrogate())
    measured: dict[QuantuneConfig, float] = {}
    used: list[QuantuneConfig] = []  # one per trial of this run, in trial order
    first = ledger.evaluations
    stage_limit = None
    try:
        while True:
            if problem.max_accuracy_drop is not None:  # the inverse question: bisect the budget
                stage = current_stage(problem, ledger, first)
                if stage.budget.limits[problem.primary] != stage_limit:
                    stage_limit = stage.budget.limits[problem.primary]
                    cands = _Candidates(stage, schemes, options.mixed)
            pool = cands.pool(options.pool_size, measured, rng)
            if not pool:
                break
            obs = warm.extend(encoder.encode(list(measured), arch), [100 * v for v in measured.values()], target_group)
            if surrogate.can_fit(obs):
                surrogate.fit(obs, seed=int(rng.integers(2**31)))
                scores = surrogate.predict(encoder.encode(pool, arch))
            else:
                scores = np.zeros(len(pool))
            picks = [pool[i] for i in select(scores, options.k, options.epsilon, rng)]
            try:
                trials = ledger.evaluate_many([Proposal(np.asarray(c.w_bits), np.asarray(c.a_bits),
                                                        scheme=_scheme(c, available)) for c in picks])
            except EvaluationLimitReached:
                used.extend(picks[: ledger.evaluations - first - len(used)])
                raise
            for config, trial in zip(picks, trials, strict=True):
                used.append(config)
                measured[config] = trial.accuracy
    except EvaluationLimitReached:
        pass
    best = ledger.best
    best_scheme = None
    if best is not None and best.index >= first:
        best_scheme = _scheme(used[best.index - first], available)
    return {
        "schemes": [_scheme(c, available).to_dict() for c in used],
        "best_scheme": None if best_scheme is None else best_scheme.to_dict(),
        "warm_start_rows": len(warm),
        "architecture": dict(zip(ArchFeatures.names(), arch.vector().tolist(), strict=True)),
    }


def _scheme(config: QuantuneConfig, available: int) -> QuantScheme:
    return config.to_scheme(available)


SPEC = MethodSpec(
    name="quantune",
    summary="XGBoost surrogate over global quantization schemes and per-layer bits (Quantune), best feasible kept",
    run=run_quantune,
    options_type=QuantuneOptions,
    default_evaluations=100,
)
