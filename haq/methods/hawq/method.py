"""HAWQ-V3: Hessian-aware sensitivity and an integer linear program (design §7.2).

Source: Zhen-Dong/HAWQ ``ILP.ipynb`` and ``bit_config.py`` (Yao, Dong et al., "HAWQ-V3:
Dyadic Neural Network Quantization", ICML 2021); Hutchinson traces as in
amirgholami/PyHessian.

Steps:

1. **Traces** (:mod:`haq.methods.hawq.hessian`): ``T_i = Tr(H_i) / n_i`` per quantizable layer of
   the BN-folded float model on the calibration split (Hutchinson, cached).
2. **Sensitivity**: ``Omega_i(b) = T_i * ||Q_b(W_i) - W_i||^2`` (squared L2, not divided
   by n_i), with the evaluator's own weight quantizer. Negative trace estimates (a
   non-convex direction, or noise on a flat layer) are used by magnitude, so a layer is
   never *rewarded* for a larger error.
3. **ILP** (:mod:`haq.methods.hawq.ilp`): one option per layer minimising ``sum Omega``, one
   ``<=`` row per budget item - size ``sum P_i*b/8``, BOPs ``sum MACs_i*b_w*b_a``,
   latency/energy from the hardware model's per-layer table (all additive per layer) -
   layers reading the same input tensor (a block's conv1 and its downsample conv) get
   equal activation bits, pinned layers (first/last by default) stay at 8.
4. **Evaluate** the ILP optimum (1 evaluation). Spare evaluations (``alternatives``)
   measure the next-best ILP solutions, each found by re-solving with a no-good cut that
   excludes the ones already measured; the best by validation accuracy is kept. Why: Omega
   is a second-order proxy, so solutions whose proxy is within a hair of the optimum are
   as plausible, and a few real measurements pick among them.

**Activation bits.** ``activation="tied"`` (default, HAWQ-V3): ``a_bits = w_bits`` per
layer, sensitivity from the weights only. ``activation="independent"``: options are
``(w_bits, a_bits)`` pairs and the objective adds an activation term derived under the
same Gauss-Newton, isotropic-curvature assumptions that make ``T_i*||dW||^2`` the loss
increase of a weight perturbation. For ``y = W x`` with curvature ``h`` per output element,
``T_i = h*E[x^2]*P`` (``P`` output positions, ``E[x^2]`` the mean square of the layer's
input), while an input perturbation of mean square ``e_a`` raises the loss by
``h*P*e_a*||W||^2 / 2``. Hence::

    Omega_i(w, a) = T_i * ( ||Q_w(W_i) - W_i||^2  +  ||W_i||^2 * e_a / E[x_i^2] )

with ``e_a = E[(Q_a(x_i) - x_i)^2]`` measured on the calibration images with the
evaluator's calibrated range at ``a`` bits (so clipping error counts, not only rounding).
No extra Hessian is needed.

**Budget form.** The paper writes budgets as ``cost <= cost(all-4) + alpha*(cost(all-8) -
cost(all-4))`` (alpha 0.75/0.5/0.25 = High/Medium/Low). haq takes its own budget syntax;
``extras["alpha"]`` reports each budget item's alpha (the reference policies keep pinned
layers at 8; 4 is replaced by the lowest choice when a layer cannot run 4 bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from haq.errors import ConfigError, HardwareError, SearchError
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.budgets import fraction_range, stage_fraction, with_fraction
from haq.methods.hawq.hessian import LayerTraces, TraceSettings, layer_traces
from haq.methods.hawq.ilp import BudgetRow, IlpSolution, MultipleChoiceIlp
from haq.methods.options import option
from haq.problem import ModelAccess, Proposal, SearchProblem
from haq.quant.quantizers import activation_params, fake_quantize

ACTIVATION_MODES = ("tied", "independent")
_UNITS = {"latency": "ms", "energy": "mJ", "size": "MiB", "bops": "GBOPs"}


@dataclass(frozen=True)
class HawqOptions:
    """Options of the HAWQ-V3 searcher (the ILP's alternatives are measured as one batch)."""

    activation: str = option("tied", "tied (a_bits = w_bits, HAWQ-V3) or independent (own a_bits, activation-noise term added)")
    alternatives: int = option(4, "next-best ILP solutions measured with spare evaluations (0 = only the optimum)")
    hessian_batches: int = option(1, "calibration batches averaged per Hessian-vector product")
    hessian_batch_size: int = option(256, "images per Hessian batch")
    hessian_max_iter: int = option(100, "most Hutchinson probes (PyHessian: 100)")
    hessian_tol: float = option(1e-3, "relative change of every layer's running mean that stops the probes (PyHessian: 1e-3)")
    use_cache: bool = option(True, "read/write Hessian traces from/to the cache folder")
    time_limit_s: float = option(60.0, "HiGHS time limit per ILP solve, seconds")

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_MODES:
            raise ConfigError(f"hawq activation={self.activation!r}: use tied (a_bits = w_bits, HAWQ-V3) or independent")
        if self.alternatives < 0:
            raise ConfigError(f"hawq alternatives={self.alternatives}: must be >= 0")
        if self.time_limit_s <= 0:
            raise ConfigError(f"hawq time_limit_s={self.time_limit_s}: must be > 0")
        if self.hessian_batches < 1 or self.hessian_batch_size < 1 or self.hessian_max_iter < 1:
            raise ConfigError("hawq hessian_batches, hessian_batch_size and hessian_max_iter must be at least 1")
        if self.hessian_tol <= 0:
            raise ConfigError(f"hawq hessian_tol={self.hessian_tol}: must be > 0")

    @property
    def trace_settings(self) -> TraceSettings:
        return TraceSettings(self.hessian_batches, self.hessian_batch_size, self.hessian_max_iter, self.hessian_tol)


@dataclass(frozen=True)
class Options:
    """The ILP's options per layer: ``w[i, k]``, ``a[i, k]`` bits (0 where layer i has
    fewer options than ``K``; those are NaN in every table)."""

    w: np.ndarray  #: (L, K) weight bits
    a: np.ndarray  #: (L, K) activation bits
    valid: np.ndarray  #: (L, K) bool


def layer_options(choices: tuple[tuple[int, ...], ...], activation: str) -> Options:
    """Per layer: ``b`` for b in its choices (tied), or every ``(w, a)`` pair (independent)."""
    per = [[(b, b) for b in c] if activation == "tied" else [(w, a) for w in c for a in c] for c in choices]
    K = max(len(p) for p in per)
    w = np.zeros((len(per), K), dtype=np.int64)
    a = np.zeros_like(w)
    valid = np.zeros(w.shape, dtype=bool)
    for i, p in enumerate(per):
        for k, (wb, ab) in enumerate(p):
            w[i, k], a[i, k], valid[i, k] = wb, ab, True
    return Options(w, a, valid)


def weight_errors(model: ModelAccess, n_layers: int, bits: set[int]) -> dict[tuple[int, int], float]:
    """``||Q_b(W_i) - W_i||^2`` for every layer and bitwidth, with the evaluator's quantizer."""
    out = {}
    for i in range(n_layers):
        w = model.float_weight(i)
        for b in bits:
            out[(i, b)] = float(((model.quantized_weight(i, b) - w) ** 2).sum())
    return out


@torch.no_grad()
def activation_noise(access: ModelAccess, names: list[str], bits: set[int], images: torch.Tensor) -> tuple[np.ndarray, dict[tuple[int, int], float]]:
    """Per layer input: its mean square ``E[x^2]`` ``(L,)`` and the fake-quantization MSE
    ``E[(Q_a(x) - x)^2]`` at each bitwidth (calibrated ranges of the evaluator)."""
    model = access.folded_model().eval()
    mode = access.scheme.activation_mode
    L = len(names)
    sq = np.zeros(L)
    err: dict[tuple[int, int], float] = {(i, b): 0.0 for i in range(L) for b in bits}
    count = np.zeros(L)
    params = {}
    for i in range(L):
        for b in bits:
            if b < 16:
                lo, hi = access.activation_range(i, b)
                s, z, qlo, qhi = activation_params(lo, hi, b, mode)
                params[(i, b)] = tuple(torch.tensor(v) for v in (s, z, qlo, qhi))

    def hook(i: int):
        def fn(_m: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            sq[i] += float((x * x).sum())
            for b in bits:
                if b >= 32:
                    continue
                q = x.half().float() if b == 16 else fake_quantize(x, *params[(i, b)])
                err[(i, b)] += float(((q - x) ** 2).sum())
            count[i] += x.numel()

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(i)) for i, n in enumerate(names)]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    count = np.maximum(count, 1)
    return sq / count, {k: v / count[k[0]] for k, v in err.items()}


def sensitivity_table(
    problem: SearchProblem, ev: ModelAccess, traces: LayerTraces, opts: Options, activation: str,
    images: torch.Tensor | None = None,
) -> np.ndarray:
    """``Omega[i, k]`` (L, K) of every option (NaN where invalid); see the module docstring."""
    L = problem.n_layers
    T = np.abs(traces.normalized)
    bits = {int(b) for c in problem.choices for b in c}
    dw = weight_errors(ev, L, bits)
    omega = np.full(opts.w.shape, np.nan)
    for i, k in zip(*np.nonzero(opts.valid), strict=True):
        omega[i, k] = T[i] * dw[(i, int(opts.w[i, k]))]
    if activation == "independent":
        if images is None:
            raise SearchError("the independent-activation sensitivity needs calibration images")
        m2, ea = activation_noise(ev, [s.name for s in problem.layers], bits, images)
        wsq = np.array([float((ev.float_weight(i) ** 2).sum()) for i in range(L)])
        for i, k in zip(*np.nonzero(opts.valid), strict=True):
            if m2[i] > 0:
                omega[i, k] += T[i] * wsq[i] * ea[(i, int(opts.a[i, k]))] / m2[i]
    return omega


def budget_rows(problem: SearchProblem, opts: Options) -> list[BudgetRow]:
    """One ``<=`` row per budget item, in the budget's own unit (additive per layer)."""
    rows = []
    costs = problem.costs
    bad = ~opts.valid
    for key, limit in problem.budget.limits.items():
        if key == "size":
            coef = costs.layer_size_mib(opts.w)
            limit = limit - costs.bias_mib  # float32 biases: constant
        elif key == "bops":
            coef = costs.layer_bops_g(opts.w, opts.a)
        else:
            try:
                if costs.table is None:
                    raise HardwareError("no hardware table")
                coef = costs.table.options(key, np.where(opts.valid, opts.w, 8), np.where(opts.valid, opts.a, 8))
            except HardwareError:
                raise SearchError(
                    f"hawq cannot express the {key} budget on {problem.hardware}: the hardware model gives no "
                    f"per-layer {key} table; budget size or bops instead"
                ) from None
        coef = np.where(bad, np.nan, coef.astype(np.float64))
        rows.append(BudgetRow(key, coef, float(limit), _UNITS[key]))
    return rows


def input_ties(problem: SearchProblem) -> list[tuple[int, int]]:
    """Pairs of layers that read the same input tensor (equal activation bits)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(problem.layers):
        groups.setdefault(s.input_group, []).append(i)
    return [(g[0], j) for g in groups.values() for j in g[1:]]


def pinned_options(problem: SearchProblem, opts: Options) -> dict[int, int]:
    """Option index of every pinned layer: (pinned_bits, pinned_bits), as in ``max_policy``."""
    hi_w, hi_a = problem.max_policy()
    out = {}
    for i in problem.pinned:
        hit = np.flatnonzero(opts.valid[i] & (opts.w[i] == hi_w[i]) & (opts.a[i] == hi_a[i]))
        if not hit.size:
            raise SearchError(f"pinned layer {problem.layers[i].name} cannot run {hi_w[i]} bits on {problem.hardware}")
        out[int(i)] = int(hit[0])
    return out


def budget_alpha(problem: SearchProblem) -> tuple[dict[str, float], tuple[int, int]]:
    """Each budget item as HAWQ's alpha: ``(limit - cost(all-lo)) / (cost(all-8) - cost(all-lo))``
    with lo = 4 (or the lowest choice where 4 is not offered); pinned layers at 8 in both."""
    free = problem.free_layers
    lo_bits, hi_bits = 4, 8
    if free and not all(4 in problem.choices[i] for i in free):
        lo_bits = min(min(problem.choices[i]) for i in free)
    if free and not all(8 in problem.choices[i] for i in free):
        hi_bits = max(max(problem.choices[i]) for i in free)
    lo, _ = problem.uniform_policy(lo_bits)
    hi, _ = problem.uniform_policy(hi_bits)
    c_lo, c_hi = problem.cost(lo, lo), problem.cost(hi, hi)
    alpha = {}
    for key, limit in problem.budget.limits.items():
        a, b = c_lo.get(key), c_hi.get(key)
        if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and b != a:
            alpha[key] = float((limit - a) / (b - a))
    return alpha, (lo_bits, hi_bits)


def run_hawq(problem: SearchProblem, ledger: Ledger, options: HawqOptions) -> dict[str, Any]:
    ev = ledger.model
    names = [s.name for s in problem.layers]
    settings = options.trace_settings
    settings = TraceSettings(settings.batches, settings.batch_size, settings.max_iter, settings.tol, problem.seed)
    opts = layer_options(problem.choices, options.activation)
    rows, fixed = budget_rows(problem, opts), pinned_options(problem, opts)  # cheap errors before the Hessian
    calib = ev.calibration_split
    traces = layer_traces(ev.folded_model(), names, calib.x, calib.y, settings, use_cache=options.use_cache,
                          device=ev.device)
    images = calib.x[: traces.images] if options.activation == "independent" else None
    omega = sensitivity_table(problem, ev, traces, opts, options.activation, images)
    ilp = MultipleChoiceIlp(
        omega, rows, ties=input_ties(problem), labels=opts.a, fixed=fixed, time_limit_s=options.time_limit_s
    )
    alpha, ref = budget_alpha(problem)
    layer_idx = np.arange(problem.n_layers)
    found: list[tuple[int, IlpSolution]] = []
    ilp_seconds = 0.0
    stages: list[dict[str, Any]] = []
    if problem.max_accuracy_drop is not None:
        stages = _bisect_for_drop(problem, ledger, omega, opts, fixed, options)
        found, ilp_seconds = [], sum(st["ilp_s"] for st in stages)
    # The ILP's solutions do not depend on measured accuracy: find them all, measure one batch.
    for n in range(min(1 + options.alternatives, ledger.remaining) if problem.max_accuracy_drop is None else 0):
        try:
            sol = ilp.solve()
        except SearchError:
            if n == 0:
                raise
            break  # no further distinct solution within the budget
        ilp_seconds += sol.seconds
        ilp.exclude(sol.choice)
        found.append((n, sol))
    trials = ledger.evaluate_many([
        Proposal(opts.w[layer_idx, sol.choice], opts.a[layer_idx, sol.choice]) for _, sol in found
    ])
    solutions = [{"rank": n, "objective": sol.objective, "status": sol.status, "trial": t.index,
                  "accuracy": t.accuracy, "feasible": t.feasible} for (n, sol), t in zip(found, trials, strict=True)]
    extra = {"drop_stages": stages} if problem.max_accuracy_drop is not None else {}
    return {
        **extra,
        "activation": options.activation,
        "traces": traces.normalized.tolist(),
        "trace_standard_error": (traces.standard_error / traces.params).tolist(),
        "negative_traces": int((traces.traces < 0).sum()),
        "hessian": {"iterations": traces.iterations, "converged": traces.converged, "images": traces.images,
                    "seconds": traces.seconds, "cached": traces.cached, **asdict(traces.settings)},
        "ilp": {"variables": ilp.n_variables, "ties": [list(t) for t in ilp.ties], "seconds": ilp_seconds},
        "alpha": alpha,
        "alpha_reference_bits": list(ref),
        "solutions": solutions,
    }


def _bisect_for_drop(
    problem: SearchProblem, ledger: Ledger, omega: np.ndarray, opts: Options, fixed: dict[int, int], options: HawqOptions
) -> list[dict[str, Any]]:
    """The inverse question: bisection over the primary budget (:mod:`haq.methods.budgets`),
    one ILP optimum measured per stage; the ledger returns the cheapest within the drop."""
    fp32 = ledger.fp32_accuracy("val")
    drop = problem.max_accuracy_drop
    assert drop is not None
    outcomes: list[bool] = []
    stages: list[dict[str, Any]] = []
    lo, hi = fraction_range(problem)
    layer_idx = np.arange(problem.n_layers)
    while ledger.remaining > 0 and len(stages) < 4 * problem.max_evaluations:
        frac = stage_fraction(problem, outcomes)
        stage = with_fraction(problem, frac)
        ilp = MultipleChoiceIlp(omega, budget_rows(stage, opts), ties=input_ties(problem), labels=opts.a, fixed=fixed,
                                time_limit_s=options.time_limit_s)
        try:
            sol = ilp.solve()
        except SearchError:  # nothing within this stage's budget: too tight
            outcomes.append(False)
            stages.append({"fraction": frac, "ilp_s": 0.0, "within_drop": False, "trial": None})
            continue
        proposal = Proposal(opts.w[layer_idx, sol.choice], opts.a[layer_idx, sol.choice])
        known = ledger.lookup(proposal)
        acc = known if known is not None else ledger.evaluate(proposal).accuracy
        ok = acc >= fp32 - drop / 100 - 1e-12
        outcomes.append(ok)
        stages.append({"fraction": frac, "ilp_s": sol.seconds, "within_drop": ok, "accuracy": acc})
        if abs(stage_fraction(problem, outcomes) - frac) < 1e-3 * max(hi - lo, 1e-9):
            break  # the bisection has converged
    return stages


SPEC = MethodSpec(
    name="hawq",
    summary="HAWQ-V3: Hutchinson Hessian traces x weight error, ILP (HiGHS) per budget; next-best ILP solutions with spare evaluations",
    run=run_hawq,
    options_type=HawqOptions,
    min_evaluations=lambda problem: 1,
    default_evaluations=5,
    budget_keys=("latency", "energy", "size", "bops"),
)
