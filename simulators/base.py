"""The hardware-model protocol every simulator and measured profile implements.

A hardware model answers one question once per network: what does each layer cost at
each (weight bits, activation bits) pair? The answer is a :class:`haq.costs.CostTable`, and
the cost of any policy is then a gather and a sum (microseconds), so searchers can ask it
millions of times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from haq.bits import ALL_BITS, NUM_SLOTS
from haq.costs import CostTable
from haq.errors import PolicyError
from haq.layers import LayerSpec


@runtime_checkable
class HardwareModel(Protocol):
    """What the searchers and the CLI see of a hardware target.

    Attributes:
        name: registry name (``bitfusion``, ``cpu``, ``table:/path.csv``).
        summary: one line for ``haq list hardware``.
        description: units, constants and the files or papers they come from.
        float_fallback: whether a layer may be left in float (bits 32) on this hardware.
    """

    name: str
    summary: str
    description: str
    float_fallback: bool

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        """Bitwidths this hardware runs for a layer kind (conv, depthwise, linear), ascending.

        The same set applies to weights and activations; it includes 32 when
        ``float_fallback`` is true.
        """
        ...

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        """Cost of every layer at every supported bit pair; ``batch=None`` = the model's own."""
        ...


def check_policy_bits(
    hw: HardwareModel,
    layers: Sequence[LayerSpec],
    w_bits: Sequence[int] | np.ndarray,
    a_bits: Sequence[int] | np.ndarray,
) -> None:
    """Raise a one-line :class:`PolicyError` for the first bitwidth ``hw`` cannot run."""
    for layer, w, a in zip(layers, w_bits, a_bits, strict=True):
        allowed = hw.supported_bits(layer.kind)
        for what, b in (("w_bits", w), ("a_bits", a)):
            if int(b) not in allowed:
                up = round_up_bits(int(b), allowed)
                fix = f" - use --round-up to map to {up}" if up is not None and up != int(b) else ""
                raise PolicyError(
                    f"{hw.name} runs {_or_list(allowed)} bits for {layer.kind} layers; got {what}={b} "
                    f"for layer {layer.name}{fix}"
                )


def round_up_bits(bits: int, allowed: Sequence[int]) -> int | None:
    """The smallest allowed bitwidth >= ``bits`` (None if there is none)."""
    ups = [b for b in sorted(allowed) if b >= bits]
    return ups[0] if ups else None


def snap_bits(bits: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Round every entry of ``bits`` up to the next allowed bitwidth (down to the max if none)."""
    allowed_arr = np.asarray(sorted(allowed))
    idx = np.searchsorted(allowed_arr, np.asarray(bits), side="left")
    return allowed_arr[np.minimum(idx, len(allowed_arr) - 1)]


def _or_list(bits: Sequence[int]) -> str:
    b = [str(x) for x in bits]
    return b[0] if len(b) == 1 else ", ".join(b[:-1]) + " or " + b[-1]


def empty_table(n_layers: int) -> np.ndarray:
    """A ``(L, NUM_SLOTS, NUM_SLOTS)`` table of NaN, to be filled at supported bit pairs."""
    return np.full((n_layers, NUM_SLOTS, NUM_SLOTS), np.nan)


__all__ = [
    "ALL_BITS",
    "CostTable",
    "HardwareModel",
    "check_policy_bits",
    "empty_table",
    "round_up_bits",
    "snap_bits",
]
