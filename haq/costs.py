"""What a policy costs: latency and energy from a hardware table, size and BOPs from the layers.

Units, everywhere in haq: latency in milliseconds (per batch of the hardware's batch size),
energy in millijoules, size in MiB (2^20 bytes, the unit of HAWQ-V3's tables), BOPs in
giga bit-operations (MACs x w_bits x a_bits / 1e9).

* :class:`CostTable` - a hardware model's answer for one network: latency/energy of every
  layer at every (weight bits, activation bits) pair, computed once (``simulators/``).
* :class:`CostModel` - the cost of any policy of that network: a gather and a few dot
  products (the hot path every searcher calls), and the per-layer breakdown.
* :class:`Cost` - what one policy costs.

A table may also carry *switch costs* (the measured ``cpu`` model does): the time a runtime
spends converting a tensor where an integer (8-bit weights and activations) layer meets a
float one - quantize and re-layout on the way in, re-layout and dequantize on the way out.
They are charged to the layer that reads the tensor, so a policy's cost is still a sum over
layers, but a layer's share then depends on its producer's bits too.

Size and BOPs do not depend on the hardware and are computed here, and only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from haq.bits import NUM_SLOTS, slots
from haq.errors import HardwareError
from haq.layers import LayerSpec

COST_FIELDS = {"latency": "latency_ms", "energy": "energy_mj", "size": "size_mib", "bops": "bops_g"}
UNIT_NAMES = {"latency": "ms", "energy": "mJ", "size": "MiB", "bops": "GBOPs"}


@dataclass(frozen=True)
class Cost:
    """What one policy costs. ``None`` where the hardware model does not say (energy of a
    measured latency profile, or no hardware at all)."""

    latency_ms: float | None
    energy_mj: float | None
    size_mib: float
    bops_g: float

    def get(self, key: str) -> float | None:
        """Value for a budget key (latency, energy, size, bops) in its canonical unit."""
        return getattr(self, COST_FIELDS[key])

    def to_dict(self) -> dict[str, float | None]:
        return {f: getattr(self, f) for f in COST_FIELDS.values()}


def _integer(w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Where a layer runs an integer kernel: 8-bit weights and 8-bit activations (any shape)."""
    return (np.asarray(w_bits) == 8) & (np.asarray(a_bits) == 8)


@dataclass(frozen=True)
class CostTable:
    """Latency and energy of every layer at every bit pair, for one model on one hardware.

    ``latency_ms[l, slot(w), slot(a)]`` is the time in milliseconds of layer ``l`` for one
    batch of ``batch`` images; ``energy_mj`` likewise in millijoules, or ``None`` when the
    hardware model has no energy (measured latency profiles). Entries the hardware cannot
    run are NaN. Shapes: ``(L, NUM_SLOTS, NUM_SLOTS)``; see :mod:`haq.bits` for slots.
    """

    hardware: str
    layer_names: tuple[str, ...]
    latency_ms: np.ndarray
    energy_mj: np.ndarray | None
    batch: int
    #: ``(L, 2)`` ms: converting layer ``l``'s input into the integer domain (column 0: it runs
    #: 8-bit, its producer does not) and out of it (column 1: the reverse); None = no switch costs
    switch_ms: np.ndarray | None = None
    #: ``(L,)`` index of the layer whose output layer ``l`` reads, -1 for the model's input
    #: (a float tensor); needed with ``switch_ms``
    producer: np.ndarray | None = None
    _rows: np.ndarray = field(init=False, repr=False, compare=False)
    _base: np.ndarray = field(init=False, repr=False, compare=False)
    _flat_lat: np.ndarray = field(init=False, repr=False, compare=False)
    _flat_en: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.layer_names)
        for what, arr in (("latency_ms", self.latency_ms), ("energy_mj", self.energy_mj)):
            if arr is not None and arr.shape != (n, NUM_SLOTS, NUM_SLOTS):
                raise HardwareError(
                    f"{self.hardware}: {what} table has shape {arr.shape}, expected {(n, NUM_SLOTS, NUM_SLOTS)}"
                )
        object.__setattr__(self, "_rows", np.arange(n))
        # Flat views so that one policy's cost is a single take() per quantity.
        object.__setattr__(self, "_base", np.arange(n) * NUM_SLOTS * NUM_SLOTS)
        object.__setattr__(self, "_flat_lat", np.ascontiguousarray(self.latency_ms, dtype=np.float64).ravel())
        en = None if self.energy_mj is None else np.ascontiguousarray(self.energy_mj, dtype=np.float64).ravel()
        object.__setattr__(self, "_flat_en", en)
        if self.switch_ms is not None:
            if self.switch_ms.shape != (n, 2) or self.producer is None or self.producer.shape != (n,):
                raise HardwareError(f"{self.hardware}: switch costs need switch_ms of shape {(n, 2)} and producer of shape {(n,)}")
            if ((self.producer < -1) | (self.producer >= np.arange(n))).any():
                raise HardwareError(f"{self.hardware}: a layer's producer must come before it (or be -1, the input)")

    def switches(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """Per-layer switch cost (ms) of one policy, ``(L,)``: zeros without switch costs.
        A layer is integer when its weights and activations are both 8-bit."""
        if self.switch_ms is None or self.producer is None:
            return np.zeros(len(self))
        q = _integer(w_bits, a_bits)
        qp = np.where(self.producer >= 0, q[self.producer], False)
        return np.where(q & ~qp, self.switch_ms[:, 0], 0.0) + np.where(qp & ~q, self.switch_ms[:, 1], 0.0)

    def __len__(self) -> int:
        return len(self.layer_names)

    def per_layer(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-layer latency (ms) and energy (mJ or None) of one policy, shape ``(L,)``."""
        sw, sa = slots(w_bits), slots(a_bits)
        lat = self.latency_ms[self._rows, sw, sa] + self.switches(w_bits, a_bits)
        en = None if self.energy_mj is None else self.energy_mj[self._rows, sw, sa]
        return lat, en

    def options(self, key: str, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """``latency`` or ``energy`` of layer ``i`` at option ``k``: ``w_bits``/``a_bits`` of
        shape ``(L, K)`` give a ``(L, K)`` table (an ILP's coefficients). A switch cost
        depends on two layers' choices, so latency options carry its bound instead: an 8-bit
        option pays the switch into the integer domain, any other the switch out of it (a
        layer pays at most one of the two), so a sum of options never underestimates
        :meth:`cost` and a policy chosen within a budget from them is within it."""
        arr = self.latency_ms if key == "latency" else self.energy_mj
        if arr is None:
            raise HardwareError(f"{self.hardware} gives no per-layer {key}")
        rows = self._rows[:, None]
        out = np.asarray(arr[rows, slots(w_bits), slots(a_bits)], dtype=np.float64)
        if key == "latency" and self.switch_ms is not None and self.producer is not None:
            q = _integer(w_bits, a_bits)
            leave = np.where(self.producer >= 0, self.switch_ms[:, 1], 0.0)[:, None]
            out = out + np.where(q, self.switch_ms[:, :1], leave)
        return out

    def cost(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[float, float | None]:
        """Whole-model latency (ms) and energy (mJ or None) of one policy: the hot path."""
        idx = self._base + slots(w_bits) * NUM_SLOTS + slots(a_bits)
        lat = float(self._flat_lat.take(idx).sum())
        if self.switch_ms is not None:
            lat += float(self.switches(w_bits, a_bits).sum())
        en = None if self._flat_en is None else float(self._flat_en.take(idx).sum())
        return lat, en


@dataclass(frozen=True)
class CostModel:
    """Cost of any policy of one model on one hardware: a gather and a few dot products.

    Build once per (model, hardware); :meth:`cost` is the hot path every searcher calls.
    ``table`` None = no hardware: size and BOPs only.
    """

    layers: Sequence[LayerSpec]
    table: CostTable | None  #: latency/energy per layer and bit pair; None = size/BOPs only
    _params: np.ndarray = field(init=False, repr=False, compare=False)
    _macs: np.ndarray = field(init=False, repr=False, compare=False)
    _bias_bytes: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "_params", np.array([s.params for s in self.layers], dtype=np.float64))
        object.__setattr__(self, "_macs", np.array([s.macs for s in self.layers], dtype=np.float64))
        object.__setattr__(self, "_bias_bytes", 4.0 * sum(s.bias_params for s in self.layers))

    # ----- size and BOPs: the one place they are computed -----------------------------------
    def layer_size_mib(self, w_bits: np.ndarray) -> np.ndarray:
        """Weight size per layer in MiB at ``w_bits`` (``(L,)`` or ``(L, K)``; float biases
        not included: they are the constant :attr:`bias_mib`)."""
        w = np.asarray(w_bits, dtype=np.float64)
        params = self._params.reshape((-1,) + (1,) * (w.ndim - 1))
        return params * w / 8 / 2**20

    def layer_bops_g(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """Bit operations per image and layer in G (``(L,)`` or ``(L, K)``)."""
        w = np.asarray(w_bits, dtype=np.float64)
        macs = self._macs.reshape((-1,) + (1,) * (w.ndim - 1))
        return macs * w * np.asarray(a_bits, dtype=np.float64) / 1e9

    @property
    def bias_mib(self) -> float:
        """Float32 biases of every layer, MiB (the same for every policy)."""
        return self._bias_bytes / 2**20

    # ----- whole policies --------------------------------------------------------------------
    def cost(self, w_bits: np.ndarray, a_bits: np.ndarray) -> Cost:
        w = np.asarray(w_bits, dtype=np.float64)
        a = np.asarray(a_bits, dtype=np.float64)
        lat, en = (None, None) if self.table is None else self.table.cost(w_bits, a_bits)
        size = (self._params.dot(w) / 8 + self._bias_bytes) / 2**20
        bops = self._macs.dot(w * a) / 1e9
        return Cost(lat, en, float(size), float(bops))

    def uniform(self, bits: int = 8) -> Cost:
        """Cost of every layer at ``bits`` (weights and activations)."""
        b = np.full(len(self.layers), bits)
        return self.cost(b, b)

    def per_layer(self, w_bits: np.ndarray, a_bits: np.ndarray) -> pd.DataFrame:
        """One row per layer: name, kind, bits, MACs, params, latency (ms), energy (mJ),
        size (MiB, with the layer's float bias) and BOPs (G)."""
        w = np.asarray(w_bits, dtype=np.int64)
        a = np.asarray(a_bits, dtype=np.int64)
        lat, en = self.table.per_layer(w, a) if self.table is not None else (None, None)
        size = (self._params * w / 8 + np.array([4.0 * s.bias_params for s in self.layers])) / 2**20
        bops = self.layer_bops_g(w, a)
        return pd.DataFrame({
            "layer": [s.name for s in self.layers],
            "kind": [s.kind for s in self.layers],
            "w_bits": w,
            "a_bits": a,
            "macs": [s.macs for s in self.layers],
            "params": [s.params for s in self.layers],
            "latency_ms": lat if lat is not None else [None] * len(self.layers),
            "energy_mj": en if en is not None else [None] * len(self.layers),
            "size_mib": size,
            "bops_g": bops,
        })
