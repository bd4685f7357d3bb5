"""HAGO: the hardware specification drives a greedy search (design §7.3).

Source: ZihengJiang/tvm-hago, ``python/tvm/hago/{hardware,topology,search,threshold}.py``
(``GreedySearchTuner``, the op descriptors, the threshold estimators).

Search space
    The hardware declares per layer kind what it runs (:meth:`HardwareModel.supported_bits`,
    HAGO's integer op descriptors) and whether a float fallback exists; ``problem.choices``
    is that set within the user's ``[min_bits, max_bits]``. A kind with no integer choice
    stays float (bits 32, HAGO keeps dense layers float on its accelerator); on a CPU-like
    target (int8 + float) the walk starts at float and tries int8. HAGO's floor is 4 bits;
    ours follows the hardware's set. One dimension per *edge*: each free layer's input
    activation, then its weight (HAGO's edge order), layers in execution order. Pinned
    layers are not searched.

Greedy walk (HAGO's ``GreedySearchTuner``)
    Start with every edge at its maximum and measure it. For each edge in turn, try its
    choices from high to low with the edges already decided at their decided bits and the
    later ones at their maximum; a trial becomes the best when its accuracy is at least the
    best so far (``ties="fewer-bits"``: equal accuracy goes to fewer total bits, HAGO's
    ``best_measure``) and the edge stops at the first trial below the best; the edge is
    fixed at the best's bits. The best is global, so a step that lowered accuracy is never
    built on. Unlike HAGO we do not re-measure the incumbent at the start of every edge
    (evaluation is deterministic): the walk costs ``1 + sum over edges of the steps tried``
    evaluations, at most ``1 + sum(len(choices) - 1)`` (61 on the 17-layer digits model on
    BitFusion, 2/4/8 bits, first and last layer pinned).

Budget phase (our extension: HAGO has no budget)
    If the walk's policy misses the budget, keep taking the move - one edge, or both edges
    of a layer (a CPU only speeds up when both are int8) - one step down that costs the
    least accuracy per unit of budget saved (:func:`haq.methods.hago.greedy.descend_to_budget`).
    Step drops come free from the walk (each walk trial measured one edge's step); steps
    never measured are estimated from them, and the best-ranked step is measured before it
    is taken. The last evaluation is kept for a policy planned to meet the budget, so the
    method always returns a feasible policy once it has two evaluations.

Accuracy
    HAGO measures accuracy on its calibration set. Every haq method measures through
    the ledger, on the validation split (our search split); the test split stays
    unseen until the final report. HAGO's calibration set survives in the activation
    thresholds: they are estimated on ``calibration_images`` (128, what HAGO used) of the
    calibration split, with HAGO's estimators: the method's scheme (``SPEC.scheme``,
    :func:`hago_scheme`) is the problem's scheme; the returned policy's ``quant`` records it.

Thresholds (``threshold`` option -> our calibrator)
    ========================  ==========================================================
    ``avg_range`` (default)   ``avg-minmax``: mean over calibration batches of per-batch
                              min and max (HAGO's ``avg_range``; HAGO then takes a
                              symmetric +-max(|min|, |max|), we keep the scheme's
                              activation mode, asymmetric by default)
    ``kl``                    ``entropy``: TensorRT-style KL. HAGO uses TVM's
                              ``_find_scale_by_kl`` (8001-bin signed histogram, 255
                              quantized bins whatever the bitwidth, smoothed p and q);
                              ours is a 2048-bin |x| histogram with 2^b levels
    ``quantile:Q``            ``percentile:100Q`` (Q in (0, 1], HAGO's ``quantile_range``)
    ``power_of_two``          ``avg-minmax`` with a power-of-two activation scale (HAGO's
                              ``power_of_two_range``)
    ``scheme``                keep the problem's scheme unchanged (calibrator and images):
                              the like-for-like setting for ``haq compare``
    ========================  ==========================================================

The inverse question (``--max-accuracy-drop``, our extension)
    The walk keeps a step while the policy stays within the drop of fp32 (validation) instead
    of while accuracy holds, so it ends at the lowest bits HAGO's order reaches within the
    drop; the ledger returns the cheapest policy measured within it.

Evaluations
    At least 1 when the all-maximum policy meets the budget, else 2 (the start and one
    planned feasible policy). The default, 300, covers the whole walk and the budget phase
    on the 17-layer digits models and the walk on 54-layer MobileNetV2 with 2/4/8 bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from haq.errors import ConfigError
from haq.history import bits_str
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.hago.greedy import (
    Measurer,
    Step,
    StepEstimates,
    apply_step,
    descend_to_budget,
    free_edges,
)
from haq.methods.options import option
from haq.problem import EvaluationLimitReached, SearchProblem
from haq.scheme import QuantScheme

THRESHOLDS = ("avg_range", "kl", "quantile:Q", "power_of_two", "scheme")
TIES = ("fewer-bits", "keep-bits")
_QUANTILE_RE = re.compile(r"^quantile:([0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class HagoOptions:
    """Options of the HAGO search (``haq search --method hago --option KEY=VALUE``)."""

    threshold: str = option("avg_range", "activation threshold estimator: avg_range, kl, quantile:Q, power_of_two, scheme")
    calibration_images: int | None = option(128, "images thresholds are estimated on; None = the whole calibration split")
    ties: str = option("fewer-bits", "equal accuracy: fewer-bits takes the lower step (HAGO), keep-bits keeps the higher")
    budget_phase: bool = option(True, "after the walk, lower bits by least accuracy per cost saved until the budget holds")

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLDS[:2] + THRESHOLDS[3:]:
            m = _QUANTILE_RE.match(self.threshold)
            if not m or not 0 < float(m.group(1)) <= 1:
                raise ConfigError(
                    f"hago threshold {self.threshold!r} is unknown: use avg_range, kl, power_of_two, scheme "
                    "or quantile:Q with Q in (0, 1] (e.g. quantile:0.9999)"
                )
        n = self.calibration_images
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ConfigError(
                f"hago calibration_images={self.calibration_images!r} must be at least 1 (or None for all)"
            )
        if not isinstance(self.budget_phase, bool):
            raise ConfigError(f"hago budget_phase={self.budget_phase!r} must be true or false")
        if self.ties not in TIES:
            raise ConfigError(f"hago ties={self.ties!r} is unknown: use fewer-bits (HAGO) or keep-bits")


def hago_scheme(base: QuantScheme, options: HagoOptions) -> QuantScheme:
    """The scheme HAGO searches with: ``base`` with HAGO's threshold estimator and images.

    >>> hago_scheme(QuantScheme(), HagoOptions()).calibration
    'avg-minmax'
    >>> hago_scheme(QuantScheme(), HagoOptions(threshold="quantile:0.9999")).calibration
    'percentile:99.99'
    """
    t = options.threshold
    if t == "scheme":
        return base
    images = options.calibration_images
    if t == "avg_range":
        return base.replace(calibration="avg-minmax", calibration_images=images)
    if t == "kl":
        return base.replace(calibration="entropy", calibration_images=images)
    if t == "power_of_two":
        return base.replace(calibration="avg-minmax", activation_mode="power-of-two", calibration_images=images)
    q = float(t.split(":", 1)[1])
    return base.replace(calibration=f"percentile:{100 * q:.10g}", calibration_images=images)


@dataclass
class Walk:
    """The greedy walk's state: the best policy so far and how far the walk got."""

    w: np.ndarray
    a: np.ndarray
    accuracy: float
    edges_done: int = 0
    complete: bool = False


def greedy_walk(
    problem: SearchProblem, ledger: Ledger, options: HagoOptions, measure: Measurer, estimates: StepEstimates
) -> Walk:
    """HAGO's greedy walk over the edges (see the module docstring). Every trial's drop
    against the best it was derived from is recorded in ``estimates``.

    The walk ends early (``complete=False``) when the evaluations run out, and, with the
    budget phase on, when one is left and no measured policy meets the budget yet (it is
    the budget phase's). The first evaluation (the all-maximum policy) is not caught.
    """
    w, a = problem.max_policy()
    walk = Walk(w, a, measure(w, a))
    reserve = options.budget_phase
    # The inverse question (--max-accuracy-drop): a step is kept while the policy stays within
    # the drop of fp32, so the walk ends at the lowest bits HAGO's order reaches within it.
    floor = None if problem.max_accuracy_drop is None else ledger.fp32_accuracy("val") - problem.max_accuracy_drop / 100
    try:
        for layer, edge in free_edges(problem):
            cur = int((walk.w if edge == "w" else walk.a)[layer])
            for bits in sorted((c for c in problem.choices[layer] if c < cur), reverse=True):
                step = Step(layer, edge, bits)
                tw, ta = apply_step(walk.w, walk.a, step)
                if reserve and ledger.best is None and ledger.remaining <= 1 and not measure.known(tw, ta):
                    return walk
                acc = measure(tw, ta)
                estimates.record((step,), walk.accuracy - acc)
                if floor is not None:
                    if acc < floor - 1e-12:
                        break
                    walk.w, walk.a, walk.accuracy = tw, ta, acc
                    continue
                lower_acc = acc < walk.accuracy
                if acc > walk.accuracy or (acc == walk.accuracy and options.ties == "fewer-bits"):
                    walk.w, walk.a, walk.accuracy = tw, ta, acc
                if lower_acc:
                    break
            walk.edges_done += 1
    except EvaluationLimitReached:
        return walk
    walk.complete = True
    return walk


def run_hago(problem: SearchProblem, ledger: Ledger, options: HagoOptions) -> dict[str, Any]:
    measure = Measurer(ledger)
    estimates = StepEstimates()
    extras: dict[str, Any] = {"scheme": problem.scheme.to_dict(), "threshold": options.threshold}
    try:
        walk = greedy_walk(problem, ledger, options, measure, estimates)
        extras["walk"] = {
            "w_bits": bits_str(walk.w.tolist()),
            "a_bits": bits_str(walk.a.tolist()),
            "val_accuracy": walk.accuracy,
            "feasible": problem.feasible(walk.w, walk.a),
            "edges_decided": walk.edges_done,
            "complete": walk.complete,
            "evaluations": ledger.evaluations,
        }
        if options.budget_phase and not problem.feasible(walk.w, walk.a) and ledger.remaining > 0:
            d = descend_to_budget(problem, ledger, walk.w, walk.a, walk.accuracy, estimates, measure)
            extras["budget_phase"] = {
                "w_bits": bits_str(d.w.tolist()),
                "a_bits": bits_str(d.a.tolist()),
                "val_accuracy": d.accuracy,
                "steps": [f"{problem.layers[s.layer].name}.{s.edge}->{s.bits}" for s in d.steps],
                "planned": d.jumped,
                "evaluations": ledger.evaluations - extras["walk"]["evaluations"],
            }
    except EvaluationLimitReached:
        extras["stopped"] = "evaluation limit"
    return extras


def _min_evaluations(problem: SearchProblem) -> int:
    return 1 if problem.feasible(*problem.max_policy()) else 2


SPEC = MethodSpec(
    name="hago",
    summary="HAGO: hardware-declared bits, greedy walk lowering each edge while accuracy holds, then to the budget",
    run=run_hago,
    options_type=HagoOptions,
    min_evaluations=_min_evaluations,
    default_evaluations=300,
    scheme=hago_scheme,
)
