"""The search problem every method is given, and what a method proposes and gets back.

* :class:`SearchProblem` - a frozen value: the layers, their cost model, the budget, the bit
  choices, the pinned layers, the quantization scheme, the seed and the evaluation limit.
  Identical for every method of ``haq compare``; nobody changes it after construction.
* :class:`Proposal` - one policy a method asks to have measured.
* :class:`Trial` - one measured policy, as the run's ledger (:mod:`haq.ledger`) committed it.
* :class:`ModelAccess` - what a method may ask of the model beyond accuracy: weights, activation
  ranges, calibration data (HAWQ's Hessian and sensitivities, Quantune's architecture features).
  :class:`Measures` adds accuracy, which only the ledger and the evaluation pools use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from haq.budget import ResolvedBudget, enforce_budget
from haq.costs import Cost, CostModel
from haq.data import Split
from haq.layers import LayerSpec
from haq.scheme import QuantScheme


class EvaluationLimitReached(Exception):
    """Raised when a method asks for more evaluations than its limit allows (control flow:
    :func:`haq.methods.base.run_method` catches it and packs the result)."""


def _bits(x: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.array(x, dtype=np.int64).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Proposal:
    """One policy a method asks to have measured: per-layer bits ``(L,)`` int64 (read-only
    copies), the global scheme to measure it under (None = the problem's) and what the history
    records as its reward: a number, a function of the measured accuracy (RL's reward needs the
    accuracy), or None."""

    w_bits: np.ndarray
    a_bits: np.ndarray
    scheme: QuantScheme | None = None
    reward: float | Callable[[float], float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "w_bits", _bits(self.w_bits))
        object.__setattr__(self, "a_bits", _bits(self.a_bits))

    @property
    def key(self) -> tuple[bytes, bytes, QuantScheme | None]:
        """What makes two proposals the same policy (reward aside)."""
        return self.w_bits.tobytes(), self.a_bits.tobytes(), self.scheme


TrialSource = Literal["measured", "repeat", "replay"]


@dataclass(frozen=True)
class Trial:
    """One measured policy. ``accuracy`` is on the validation split, in [0, 1]; ``wall_s`` is
    seconds since the run started when it was committed; ``source`` says how the accuracy was
    obtained: ``measured`` (a forward pass), ``repeat`` (the same policy was measured earlier
    in this run: answered from the ledger, still counted) or ``replay`` (read back from the
    history of a resumed run)."""

    index: int
    w_bits: np.ndarray
    a_bits: np.ndarray
    accuracy: float
    cost: Cost
    feasible: bool
    reward: float | None
    wall_s: float
    scheme: QuantScheme | None = None  #: None = the problem's own scheme
    source: TrialSource = "measured"


class ModelAccess(Protocol):
    """What a method may ask of the model (never its accuracy: that is the ledger's).

    The evaluator (:class:`haq.quant.Evaluator`) implements it; every tensor is of the
    BatchNorm-folded model, under :attr:`scheme`.
    """

    @property
    def scheme(self) -> QuantScheme:
        """The global quantization scheme weights and ranges are given under."""
        ...

    @property
    def calibration_split(self) -> Split:
        """The calibration images ``(N, C, H, W)`` and labels ``(N,)`` (never val or test)."""
        ...

    def float_weight(self, index: int) -> torch.Tensor:
        """Float weight of layer ``index``, e.g. ``(C_out, C_in/groups, kH, kW)``."""
        ...

    def quantized_weight(self, index: int, bits: int) -> torch.Tensor:
        """Fake-quantized weight of layer ``index`` at ``bits`` (same shape; do not modify)."""
        ...

    def activation_range(self, index: int, bits: int) -> tuple[float, float]:
        """Calibrated (lo, hi) range of layer ``index``'s input at ``bits``."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the evaluator runs (``--device``): where Hessians are taken too."""
        ...

    def folded_model(self) -> nn.Module:
        """A float copy of the BN-folded model (Hessians, architecture features)."""
        ...


class Measures(ModelAccess, Protocol):
    """:class:`ModelAccess` plus accuracy: what the ledger and an evaluation pool measure with."""

    def accuracies(self, policies: Sequence[tuple[np.ndarray, np.ndarray, QuantScheme]], split: str = "val") -> list[float]:
        """Top-1 accuracy in [0, 1] on ``split`` of each ``(w_bits, a_bits, scheme)``."""
        ...

    def fp32_accuracy(self, split: str = "val") -> float:
        """Top-1 accuracy in [0, 1] of the float model on ``split``."""
        ...

    def split_size(self, split: str) -> int:
        """Images in ``split`` (``calib``, ``val``, ``test`` or ``fidelity``)."""
        ...

    def fidelities(self, policies: Sequence[tuple[np.ndarray, np.ndarray, QuantScheme]]) -> list[tuple[float, float]]:
        """``(kl, agreement)`` of each policy's outputs against the float model's on the
        fidelity set (every image a search may see, never test)."""
        ...

    def with_scheme(self, scheme: QuantScheme) -> Measures:
        """The same model and data under another global scheme."""
        ...


@dataclass(frozen=True)
class SearchProblem:
    """One mixed-precision search problem, identical for every method (a frozen value).

    Attributes:
        model_name: registry name or description of the model (goes into policy.json).
        hardware: name of the hardware model the costs come from.
        layers: the quantizable layers, execution order.
        costs: latency/energy/size/BOPs of any bit assignment.
        budget: absolute limits every returned policy must meet.
        choices: per layer, the bitwidths a method may give it (weights and activations).
        scheme: the global quantization scheme policies are measured under.
        pinned: indices of layers fixed at ``pinned_bits`` (first/last by default).
        pinned_bits: the bits of pinned layers (8, or the layer's highest choice).
        seed: the one seed every random choice derives from.
        max_evaluations: accuracy measurements allowed (the fairness unit of haq compare).
        max_accuracy_drop: the other question users ask (design §8): the *cheapest* policy
            (on the budget's first cost) whose validation accuracy is within this many
            percent points of fp32. None = the most accurate policy within the budget.
        select: how the returned policy is chosen among the measured ones (the most accurate
            question): ``val`` (highest validation accuracy, HAQ's rule), ``kl`` or
            ``agreement`` (of the ``select_top_k`` distinct feasible policies with the highest
            validation accuracy, those within one standard error of the best are re-ranked by
            KL divergence to / top-1 agreement with the float model on the fidelity set -
            low-variance signals on every image a search may see; see
            :func:`haq.methods.base.rerank`).
        select_top_k: candidates the re-ranking looks at.
    """

    model_name: str
    hardware: str
    layers: tuple[LayerSpec, ...]
    costs: CostModel
    budget: ResolvedBudget
    choices: tuple[tuple[int, ...], ...]
    scheme: QuantScheme = field(default_factory=QuantScheme)
    pinned: tuple[int, ...] = ()
    pinned_bits: int = 8
    seed: int = 0
    max_evaluations: int = 300
    max_accuracy_drop: float | None = None
    select: str = "val"
    select_top_k: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "choices", tuple(tuple(int(b) for b in c) for c in self.choices))
        object.__setattr__(self, "pinned", tuple(sorted(int(i) for i in self.pinned)))

    def replace(self, **changes: object) -> SearchProblem:
        """A copy with some fields changed (e.g. another seed or evaluation limit)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # ----- the layers ---------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def free_layers(self) -> list[int]:
        """Indices of the layers a method may change (every layer not pinned), in order."""
        pinned = set(self.pinned)
        return [i for i in range(self.n_layers) if i not in pinned]

    @property
    def primary(self) -> str:
        """The budget key fronts and the accuracy-drop question use (latency when none)."""
        return self.budget.primary

    # ----- costs --------------------------------------------------------------------------
    def cost(self, w_bits: np.ndarray, a_bits: np.ndarray) -> Cost:
        return self.costs.cost(w_bits, a_bits)

    def feasible(self, w_bits: np.ndarray, a_bits: np.ndarray) -> bool:
        return self.budget.satisfied(self.costs.cost(w_bits, a_bits))

    def enforce_budget(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HAQ's budget loop (:func:`haq.budget.enforce_budget`) on this problem."""
        return enforce_budget(w_bits, a_bits, self.costs, self.budget, self.choices, self.pinned)

    # ----- reference policies -------------------------------------------------------------
    def max_policy(self) -> tuple[np.ndarray, np.ndarray]:
        """Every layer at its highest choice (pinned layers at ``pinned_bits``)."""
        hi = np.array([max(c) for c in self.choices], dtype=np.int64)
        for i in self.pinned:
            hi[i] = self.pinned_bits if self.pinned_bits in self.choices[i] else max(self.choices[i])
        return hi, hi.copy()

    def common_choices(self) -> list[int]:
        """Bitwidths every free layer may take, highest first (every layer's when all are
        pinned)."""
        free = [set(self.choices[i]) for i in self.free_layers] or [set(c) for c in self.choices]
        return sorted(set.intersection(*free), reverse=True)

    def uniform_policy(self, w: int, a: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every free layer at ``w`` weight and ``a`` (default ``w``) activation bits, pinned
        layers at their pinned bits."""
        hi_w, hi_a = self.max_policy()
        free = self.free_layers
        hi_w[free] = w
        hi_a[free] = w if a is None else a
        return hi_w, hi_a

    def uniform_policies(self, feasible_only: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every uniform (w, a) policy over :meth:`common_choices` (weights outer, highest
        first), optionally only those within the budget."""
        out = []
        for wb in self.common_choices():
            for ab in self.common_choices():
                w, a = self.uniform_policy(wb, ab)
                if not feasible_only or self.feasible(w, a):
                    out.append((w, a))
        return out
