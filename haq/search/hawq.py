"""HAWQ-V3: Hessian-aware sensitivity and an integer linear program (design §7.2).

Source: Zhen-Dong/HAWQ ``ILP.ipynb`` and ``bit_config.py`` (Yao, Dong et al., "HAWQ-V3:
Dyadic Neural Network Quantization", ICML 2021); Hutchinson traces as in
amirgholami/PyHessian.

Steps:

1. **Traces** (:mod:`haq.search.hessian`): ``T_i = Tr(H_i) / n_i`` per quantizable layer of
   the BN-folded float model on the calibration split (Hutchinson, cached).
2. **Sensitivity**: ``Omega_i(b) = T_i * ||Q_b(W_i) - W_i||^2`` (squared L2, not divided
   by n_i), with the evaluator's own weight quantizer. Negative trace estimates (a
   non-convex direction, or noise on a flat layer) are used by magnitude, so a layer is
   never *rewarded* for a larger error.
3. **ILP** (:mod:`haq.search.ilp`): one option per layer minimising ``sum Omega``, one
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

from haq.bits import slots
from haq.errors import ConfigError, SearchError
from haq.quant.quantizers import activation_params, fake_quantize
from haq.search import register_method
from haq.search.base import MethodSpec, SearchProblem
from haq.search.hessian import LayerTraces, TraceSettings, layer_traces
from haq.search.ilp import BudgetRow, IlpSolution, MultipleChoiceIlp

ACTIVATION_MODES = ("tied", "independent")
_UNITS = {"latency": "ms", "energy": "mJ", "size": "MiB", "bops": "GBOPs"}


@dataclass(frozen=True)
class HawqOptions:
    """Options of the HAWQ-V3 searcher.

    Attributes:
        activation: ``tied`` (a_bits = w_bits, HAWQ-V3) or ``independent`` (own a_bits,
            activation-noise term added; see the module docstring).
        alternatives: next-best ILP solutions measured with spare evaluations (0 = only
            the optimum; the evaluation limit caps it).
        hessian_batches: calibration batches averaged per Hessian-vector product.
        hessian_batch_size: images per Hessian batch.
        hessian_max_iter: most Hutchinson probes (PyHessian: 100).
        hessian_tol: relative change of every layer's running mean that stops the probes
            (PyHessian: 1e-3).
        use_cache: read/write traces from/to the cache folder.
        time_limit_s: HiGHS limit per ILP solve, seconds.
    """

    activation: str = "tied"
    alternatives: int = 4
    hessian_batches: int = 1
    hessian_batch_size: int = 256
    hessian_max_iter: int = 100
    hessian_tol: float = 1e-3
    use_cache: bool = True
    time_limit_s: float = 60.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_MODES:
            raise ConfigError(f"hawq activation={self.activation!r}: use tied (a_bits = w_bits, HAWQ-V3) or independent")
        if self.alternatives < 0:
            raise ConfigError(f"hawq alternatives={self.alternatives}: must be >= 0")
        if self.time_limit_s <= 0:
            raise ConfigError(f"hawq time_limit_s={self.time_limit_s}: must be > 0")

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


def weight_errors(evaluator: Any, n_layers: int, bits: set[int]) -> dict[tuple[int, int], float]:
    """``||Q_b(W_i) - W_i||^2`` for every layer and bitwidth, with the evaluator's quantizer."""
    out = {}
    for i in range(n_layers):
        w = evaluator.float_weight(i)
        for b in bits:
            out[(i, b)] = float(((evaluator.quantized_weight(i, b) - w) ** 2).sum())
    return out


@torch.no_grad()
def activation_noise(evaluator: Any, names: list[str], bits: set[int], images: torch.Tensor) -> tuple[np.ndarray, dict[tuple[int, int], float]]:
    """Per layer input: its mean square ``E[x^2]`` ``(L,)`` and the fake-quantization MSE
    ``E[(Q_a(x) - x)^2]`` at each bitwidth (calibrated ranges of the evaluator)."""
    model = evaluator.folded_model().eval()
    mode = evaluator.scheme.activation_mode
    L = len(names)
    sq = np.zeros(L)
    err: dict[tuple[int, int], float] = {(i, b): 0.0 for i in range(L) for b in bits}
    count = np.zeros(L)
    params = {}
    for i in range(L):
        for b in bits:
            if b < 16:
                lo, hi = evaluator.activation_range(i, b)
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
    problem: SearchProblem, traces: LayerTraces, opts: Options, activation: str, images: torch.Tensor | None = None
) -> np.ndarray:
    """``Omega[i, k]`` (L, K) of every option (NaN where invalid); see the module docstring."""
    ev: Any = problem.evaluator
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
    layers = problem.layers
    bad = ~opts.valid
    for key, limit in problem.budget.limits.items():
        if key == "size":
            params = np.array([s.params for s in layers], dtype=np.float64)[:, None]
            coef = params * opts.w / 8 / 2**20
            limit = limit - 4.0 * sum(s.bias_params for s in layers) / 2**20  # float32 biases: constant
        elif key == "bops":
            macs = np.array([s.macs for s in layers], dtype=np.float64)[:, None]
            coef = macs * opts.w * opts.a / 1e9
        else:
            table = problem.costs.table
            arr = None if table is None else (table.latency_ms if key == "latency" else table.energy_mj)
            if arr is None:
                raise SearchError(
                    f"hawq cannot express the {key} budget on {problem.hardware.name}: the hardware model gives no "
                    f"per-layer {key} table; budget size or bops instead"
                )
            rows_idx = np.arange(len(layers))[:, None]
            coef = arr[rows_idx, slots(np.where(opts.valid, opts.w, 8)), slots(np.where(opts.valid, opts.a, 8))]
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
            raise SearchError(f"pinned layer {problem.layers[i].name} cannot run {hi_w[i]} bits on {problem.hardware.name}")
        out[int(i)] = int(hit[0])
    return out


def budget_alpha(problem: SearchProblem) -> tuple[dict[str, float], tuple[int, int]]:
    """Each budget item as HAWQ's alpha: ``(limit - cost(all-lo)) / (cost(all-8) - cost(all-lo))``
    with lo = 4 (or the lowest choice where 4 is not offered); pinned layers at 8 in both."""
    hi_w, _ = problem.max_policy()
    free = [i for i in range(problem.n_layers) if i not in problem.pinned]
    lo_bits, hi_bits = 4, 8
    if free and not all(4 in problem.choices[i] for i in free):
        lo_bits = min(min(problem.choices[i]) for i in free)
    if free and not all(8 in problem.choices[i] for i in free):
        hi_bits = max(max(problem.choices[i]) for i in free)
    lo = hi_w.copy()
    hi = hi_w.copy()
    lo[free] = lo_bits
    hi[free] = hi_bits
    c_lo, c_hi = problem.cost(lo, lo), problem.cost(hi, hi)
    alpha = {}
    for key, limit in problem.budget.limits.items():
        a, b = c_lo.get(key), c_hi.get(key)
        if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and b != a:
            alpha[key] = float((limit - a) / (b - a))
    return alpha, (lo_bits, hi_bits)


def _evaluator_or_error(problem: SearchProblem) -> Any:
    ev = problem.evaluator
    need = ("folded_model", "float_weight", "quantized_weight", "activation_range", "data")
    missing = [n for n in need if not hasattr(ev, n)]
    if missing:
        raise SearchError(
            f"hawq needs the model's weights and calibration data (haq.quant.Evaluator); this evaluator "
            f"({type(ev).__name__}) has no {missing[0]}"
        )
    return ev


def run_hawq(problem: SearchProblem, options: HawqOptions) -> dict[str, Any]:
    ev = _evaluator_or_error(problem)
    names = [s.name for s in problem.layers]
    settings = options.trace_settings
    settings = TraceSettings(settings.batches, settings.batch_size, settings.max_iter, settings.tol, problem.seed)
    opts = layer_options(problem.choices, options.activation)
    rows, fixed = budget_rows(problem, opts), pinned_options(problem, opts)  # cheap errors before the Hessian
    calib = ev.data.calib
    traces = layer_traces(ev.folded_model(), names, calib.x, calib.y, settings, use_cache=options.use_cache)
    images = calib.x[: traces.images] if options.activation == "independent" else None
    omega = sensitivity_table(problem, traces, opts, options.activation, images)
    ilp = MultipleChoiceIlp(
        omega, rows, ties=input_ties(problem), labels=opts.a, fixed=fixed, time_limit_s=options.time_limit_s
    )
    alpha, ref = budget_alpha(problem)
    layer_idx = np.arange(problem.n_layers)
    solutions: list[dict[str, Any]] = []
    ilp_seconds = 0.0
    for n in range(1 + options.alternatives):
        if problem.remaining <= 0:
            break
        try:
            sol: IlpSolution = ilp.solve()
        except SearchError:
            if n == 0:
                raise
            break  # no further distinct solution within the budget
        ilp_seconds += sol.seconds
        ilp.exclude(sol.choice)
        w, a = opts.w[layer_idx, sol.choice], opts.a[layer_idx, sol.choice]
        trial = problem.evaluate(w, a)
        solutions.append({"rank": n, "objective": sol.objective, "status": sol.status, "trial": trial.index,
                          "accuracy": trial.accuracy, "feasible": trial.feasible})
    return {
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


# ----- HAWQ-V3's released ILP, from its published inputs (reproduction) -----------------------
PUBLISHED_BITS = (4, 8)  #: option 0 = 4 bits, option 1 = 8 bits
_PUBLISHED_KINDS = ("modelsize", "bops", "latency")


def published_ilp(inputs: dict[str, Any], config: str) -> MultipleChoiceIlp:
    """The ILP of Zhen-Dong/HAWQ ``ILP.ipynb`` for one shipped configuration.

    ``inputs`` is one model of ``hawq_ilp_published.json`` (traces already divided by the
    parameter count, deltas ``||Q(W)-W||^2``, parameters in millions, bops = MACs/1e6,
    T4 latencies); ``config`` is ``{modelsize,bops,latency}_{alpha}``. The notebook's units:
    size ``params * b/8`` (its ``0.5 * x * params`` with x = 1 or 2), BOPs ``bops * (b/32)^2``
    (``bops/64`` at 4 bits, ``bops/16`` at 8), latency the measured int4/int8 table; budget
    ``cost(all-4) + alpha * (cost(all-8) - cost(all-4))``; ties force equal bits.
    """
    kind, _, alpha_text = config.rpartition("_")
    if kind not in _PUBLISHED_KINDS:
        raise ConfigError(f"published config {config!r}: use {{{','.join(_PUBLISHED_KINDS)}}}_ALPHA, e.g. bops_0.5")
    alpha = float(alpha_text)
    trace = np.asarray(inputs["Hutchinson_trace"], dtype=np.float64)
    d4 = np.asarray(inputs["delta_weights_4bit_square"], dtype=np.float64)
    d8 = np.asarray(inputs["delta_weights_8bit_square"], dtype=np.float64)
    params = np.asarray(inputs["parameters"], dtype=np.float64)
    bops = np.asarray(inputs["bops"], dtype=np.float64)
    table = {
        "modelsize": np.stack([params * 4 / 8, params * 8 / 8], axis=1),
        "bops": np.stack([bops * (4 / 32) ** 2, bops * (8 / 32) ** 2], axis=1),
        "latency": np.stack([inputs["latency_int4"], inputs["latency_int8"]], axis=1).astype(np.float64),
    }[kind]
    low, high = table[:, 0].sum(), table[:, 1].sum()
    return MultipleChoiceIlp(
        np.stack([trace * d4, trace * d8], axis=1),
        [BudgetRow(kind, table, float(low + alpha * (high - low)))],
        ties=[(int(i), int(j)) for i, j in inputs["ties"]],
        labels=np.broadcast_to(np.array(PUBLISHED_BITS), (len(trace), 2)),
    )


def published_objective(inputs: dict[str, Any], bits: np.ndarray) -> float:
    """The notebook's objective ``sum trace_i * (d8_i - d4_i) * [bits_i == 8]`` (lower is better)."""
    trace = np.asarray(inputs["Hutchinson_trace"], dtype=np.float64)
    diff = np.asarray(inputs["delta_weights_8bit_square"]) - np.asarray(inputs["delta_weights_4bit_square"])
    return float((trace * diff * (np.asarray(bits) == 8)).sum())


register_method(MethodSpec(
    name="hawq",
    summary="HAWQ-V3: Hutchinson Hessian traces x weight error, ILP (HiGHS) per budget; next-best ILP solutions with spare evaluations",
    run=run_hawq,
    options_type=HawqOptions,
    min_evaluations=lambda problem: 1,
    default_evaluations=5,
    budget_keys=("latency", "energy", "size", "bops"),
))
