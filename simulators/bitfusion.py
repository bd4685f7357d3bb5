"""BitFusion (Sharma et al., ISCA'18): a 16x32 array of bit-level fusion units, 45 nm, 500 MHz.

What the hardware is
--------------------
Each fusion unit holds 2-bit "bricks" that fuse into one 8x8-bit multiplier or into ``pf``
narrower ones, ``pf = int(8/max(a,2)) * int(8/max(w,2))`` (2x2 bits: 16 products per cycle;
3 bits run as 4, 5-7 bits as 8). ``N = 16`` rows reduce input channels, ``M = 32`` columns
produce output channels. Weights (WBUF 64 KiB), inputs (IBUF 32 KiB) and 32-bit partial sums
(OBUF 16 KiB) are double-buffered SRAMs fed by a 192-bit/cycle DRAM interface. All constants
are in :class:`BitFusionSpec` with the file each comes from (hsharma35/bitfusion,
``bf_e_conf.ini``: the configuration its notebook uses and the one APQ's table was made with).

How a layer is costed (:func:`layer_cost`)
------------------------------------------
Like the BitFusion simulator (``src/optimizer/optimizer.py``): the loops (batch, out-width,
out-height, in-channels, out-channels) are tiled by powers of two (out-channels by multiples
of ``M``; the first layer is lowered by im2col), and every one of the 5! loop orders is tried;
walking the loops inner to outer, a buffer keeps reusing its tile until the tile would
outgrow half the SRAM (double buffering), after which each outer loop re-fetches it. Per
tiling and order, with ``W = 192`` bits per cycle::

    compute = tiles * b * ceil(oc/M) * oh * ow * kh * kw * ceil(ic / (N * pf))
    first   = ceil(first tiles in / W) + ceil(last outputs out / W)
    cycles  = compute + max(0, ceil(DRAM reads / W) + ceil(DRAM writes / W) - first - compute) + first

and the layer gets the fewest cycles, ties broken by the least energy. Outputs travel as
32-bit partial sums, read back and written again for every input-channel tile.

Two rules differ from the released optimizer (``rules="released"`` restores it); with them
this model reproduces every non-depthwise entry of APQ's ``BitFusion_new.b1.dict`` to the
cycle (3015 of 3015; the released rules give 24% exact, median error 0.24%, worst 52%), so
they are what that table was made with:

1. DRAM traffic counts the real tensor (``kh*kw*ic*oc*w`` weight bits, ``oc`` outputs), while
   whether a tile *fits* a buffer uses its on-chip layout: weights padded to ``N*pf`` rows by
   ``M`` columns, outputs to ``M`` columns, and operands stored at the width the array runs
   them at (6 bits as 8, 3 as 4). The released code pads the traffic and fits the packed size.
2. DRAM reads and writes are rounded to whole interface cycles separately (formula above);
   the released code rounds the traffic between the first tiles and the last once.

Depthwise layers: the released simulator has no grouped convolution (its dnnweaver2 graph
has none), so APQ used its own mapping. What its depthwise entries show: cycles are never
below ``oh*ow*kh*kw*ceil(C / (8*pf))`` (8 = ``depthwise_lanes`` channels per cycle at 8x8
bits, half the array's 16 rows), and the layer behaves as separate passes of ``M = 32``
channels, each with its own DRAM prologue and epilogue (the cost is flat in C within a
32-channel step). We model exactly that - passes of ``depthwise_pass_channels``, each tiled
over (batch, out-width, out-height) as above - which is a fit, not the released code: median
error 3.1%, p90 11%, worst 23% (7x7 outputs at W4A4); ``benchmarks/bitfusion_fidelity.py``
prints it. Grouped (non-depthwise) convs are ``groups`` dense convs; linear layers are 1x1
convs over ``batch * tokens`` rows.

Energy (``src/simulator/stats.py``, ``simulator.py``, CACTI 45 nm): core 235.104 pJ per
compute cycle, SRAM per bit read and written, DRAM 15 pJ/bit - dynamic only, as the released
simulator. APQ's energies are 1.13x these (median); adding SRAM leakage (212.5 mW, the
``leakage="sram"`` option) brings the median ratio to 1.00, with 0.9% median error: the rest
is SRAM access accounting we could not pin down (its spread is 0.95-1.05x). ``leakage="all"``
adds the core's 30.4 mW. Depthwise energies stay below APQ's (median 1.21x with SRAM leakage),
whose depthwise SRAM traffic we do not know.

Searchers see :meth:`BitFusion.cost_table`: latency (ms) and energy (mJ) at every integer bit
pair 1-8, each made monotone in both bitwidths (:func:`monotone_envelope`); float slots are
NaN (no float fallback).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np

from haq.bits import INT_BITS, slot
from haq.costs import CostTable
from haq.errors import ConfigError, HardwareError
from haq.layers import LAYER_KINDS, LayerSpec
from haq.simulators import register_hardware
from haq.simulators.base import empty_table

_NS = ("act", "wgt", "out")  # IBUF, WBUF, OBUF
_BIG = np.iinfo(np.int64).max // 4  # "this tiling does not fit"
_MAX_ELEMENTS = 1_500_000  # bit pairs x orders x tilings evaluated at once (memory bound)


@dataclass(frozen=True)
class BitFusionSpec:
    """One BitFusion configuration. Defaults: ``bf_e_conf.ini`` and its CACTI/synthesis data.

    Example: ``BitFusionSpec(leakage="sram")`` is the configuration whose energies match APQ's
    table; ``BitFusionSpec(rows=32, cols=32)`` is a larger array.
    """

    rows: int = 16  #: N, fusion-unit rows (input-channel reduction); bf_e_conf.ini [accelerator] a
    cols: int = 32  #: M, fusion-unit columns (output channels); bf_e_conf.ini [accelerator] c
    frequency_hz: float = 500e6  #: clock in Hz; bf_e_conf.ini [accelerator] frequency
    high_precision_bits: int = 8  #: widest operand of one fusion unit; bf_e_conf.ini high_prec
    low_precision_bits: int = 2  #: narrowest (one brick); bf_e_conf.ini low_prec
    wbuf_bytes: int = 65536  #: weight SRAM in bytes (half per buffer); bf_e_conf.ini Wgt_SRAM
    ibuf_bytes: int = 32768  #: input SRAM in bytes; bf_e_conf.ini Act_SRAM
    obuf_bytes: int = 16384  #: output (partial sum) SRAM in bytes; bf_e_conf.ini Out_SRAM
    dram_bits_per_cycle: int = 192  #: DRAM interface width in bits/cycle; bf_e_conf.ini [system] if_width
    partial_sum_bits: int = 32  #: bits of an output in OBUF and DRAM; optimizer.py oprec
    #: pJ per compute cycle, whole array: 4x4-array synthesis (results/systolic_array_synth.csv,
    #: 8/2 bits, 3673.5 uW at 500 MHz) x (16*32)/16, as simulator.py scales it
    core_pj_per_cycle: float = 235.104
    #: pJ per bit: CACTI 45 nm per-access energy / 32-bit word (bitfusion/sram/cacti_sweep.csv;
    #: WBUF 512 banks of 128 B, IBUF 16 of 2 KiB, OBUF 32 of 512 B read-write; simulator.py)
    wbuf_read_pj_per_bit: float = 0.683701 / 32
    wbuf_write_pj_per_bit: float = 0.925317 / 32
    ibuf_read_pj_per_bit: float = 1.90318 / 32
    ibuf_write_pj_per_bit: float = 3.63853 / 32
    obuf_read_pj_per_bit: float = 1.06097 / 32
    obuf_write_pj_per_bit: float = 2.33869 / 32
    dram_pj_per_bit: float = 15.0  #: DRAM access, pJ/bit; stats.py get_energy(dram_cost=15e-3 nJ)
    #: "apq": the rules that reproduce APQ's table; "released": optimizer.py as published
    rules: Literal["apq", "released"] = "apq"
    #: leakage in mW: CACTI bank leakage x banks (cacti_sweep.csv), core synthesis x 32
    wbuf_leakage_mw: float = 0.249588 * 512
    ibuf_leakage_mw: float = 3.22997 * 16
    obuf_leakage_mw: float = 1.03183 * 32
    core_leakage_mw: float = 0.94924 * 32
    #: leakage added to energy: "none" (the released simulator), "sram" (matches APQ), "all"
    leakage: Literal["none", "sram", "all"] = "none"
    #: depthwise channels per cycle at full precision (x pf below); fitted to APQ's table
    depthwise_lanes: int = 8
    #: channels per depthwise pass (one per column); fitted to APQ's table
    depthwise_pass_channels: int = 32

    def __post_init__(self) -> None:
        for name in (
            "rows",
            "cols",
            "high_precision_bits",
            "low_precision_bits",
            "wbuf_bytes",
            "ibuf_bytes",
            "obuf_bytes",
            "dram_bits_per_cycle",
            "partial_sum_bits",
            "depthwise_lanes",
            "depthwise_pass_channels",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"BitFusionSpec: {name} must be a positive integer, got {v!r}")
        if self.low_precision_bits > self.high_precision_bits:
            raise ConfigError(
                f"BitFusionSpec: low_precision_bits ({self.low_precision_bits}) exceeds "
                f"high_precision_bits ({self.high_precision_bits}); swap them"
            )
        if not self.frequency_hz > 0:
            raise ConfigError(f"BitFusionSpec: frequency_hz must be > 0, got {self.frequency_hz!r}")
        if self.rules not in ("apq", "released"):
            raise ConfigError(f"BitFusionSpec: rules is 'apq' or 'released', got {self.rules!r}")
        if self.leakage not in ("none", "sram", "all"):
            raise ConfigError(f"BitFusionSpec: leakage is 'none', 'sram' or 'all', got {self.leakage!r}")

    @property
    def leakage_mw(self) -> float:
        """Leakage power counted in energy, mW (see ``leakage``)."""
        sram = self.wbuf_leakage_mw + self.ibuf_leakage_mw + self.obuf_leakage_mw
        return {"none": 0.0, "sram": sram, "all": sram + self.core_leakage_mw}[self.leakage]

    def capacity_bits(self) -> dict[str, int]:
        """Bits one tile may take per buffer: half of each SRAM (double buffering)."""
        return {"act": self.ibuf_bytes * 4, "wgt": self.wbuf_bytes * 4, "out": self.obuf_bytes * 4}


DEFAULT_SPEC = BitFusionSpec()


@dataclass(frozen=True)
class ConvShape:
    """One layer as BitFusion sees it (a linear layer is a 1x1 conv).

    Example (APQ key ``(16, 64, 112, 1, 1, 0, 1)``)::

        ConvShape(in_channels=16, out_channels=64, out_hw=(112, 112), kernel=(1, 1),
                  stride=(1, 1), groups=1, batch=1, im2col=False)
    """

    in_channels: int
    out_channels: int
    out_hw: tuple[int, int]  #: output (height, width) in pixels
    kernel: tuple[int, int]  #: (kh, kw)
    stride: tuple[int, int]  #: (sh, sw)
    groups: int = 1  #: == in_channels for depthwise
    batch: int = 1  #: images (or rows of a linear layer) per inference
    im2col: bool = False  #: lower to a GEMM (the network's first layer, as the simulator does)

    @classmethod
    def from_apq_key(
        cls,
        cin: int,
        cout: int,
        in_size: int,
        kernel: int,
        stride: int,
        pad: int,
        groups: int,
        batch: int = 1,
    ) -> ConvShape:
        """From APQ's ``(cin, cout, in_size, kernel, stride, pad, groups)`` (square layers)."""
        out = (in_size + 2 * pad - kernel) // stride + 1
        return cls(cin, cout, (out, out), (kernel, kernel), (stride, stride), groups, batch)

    @classmethod
    def from_layer(cls, layer: LayerSpec, batch: int, first: bool) -> ConvShape:
        if layer.kind == "linear":
            return cls(
                layer.in_channels, layer.out_channels, (1, 1), (1, 1), (1, 1), 1, batch * layer.in_hw[0]
            )
        return cls(
            layer.in_channels,
            layer.out_channels,
            layer.out_hw,
            layer.kernel,
            layer.stride,
            layer.groups,
            batch,
            im2col=first and layer.groups == 1,
        )


class LayerCost(NamedTuple):
    """Cost of one layer at one bit pair."""

    cycles: int  #: total clock cycles
    energy_pj: float  #: energy in pJ (dynamic, plus leakage if the spec asks)
    compute_cycles: int  #: cycles the array computes (the rest is DRAM stall)


def layer_cost(
    cin: int,
    cout: int,
    in_size: int,
    kernel: int,
    stride: int,
    pad: int,
    groups: int,
    w_bits: int,
    a_bits: int,
    batch: int = 1,
    spec: BitFusionSpec = DEFAULT_SPEC,
) -> LayerCost:
    """Cost of one layer given as APQ's key, e.g. ``layer_cost(16, 64, 112, 1, 1, 0, 1, 8, 8)``.

    Latency in ms is ``cycles / spec.frequency_hz * 1e3``.
    """
    shape = ConvShape.from_apq_key(cin, cout, in_size, kernel, stride, pad, groups, batch)
    cyc, en, comp = shape_costs(shape, spec)
    i, j = _bits_index(w_bits), _bits_index(a_bits)
    return LayerCost(int(cyc[i, j]), float(en[i, j]), int(comp[i, j]))


def parse_apq_key(key: str) -> tuple[tuple[int, ...], int, int]:
    """``"(16, 64, 112, 1, 1, 0, 1)-W8A4"`` -> ``((16, 64, 112, 1, 1, 0, 1), 8, 4)``: the layer
    ``(cin, cout, in_size, kernel, stride, pad, groups)``, weight bits, activation bits.
    """
    m = re.fullmatch(r"\(([\d, ]+)\)-W(\d+)A(\d+)", key.strip())
    layer = tuple(int(x) for x in m.group(1).split(",") if x.strip()) if m else ()
    if m is None or len(layer) != 7:
        raise HardwareError(
            f"not an APQ BitFusion key: {key!r}; expected '(cin, cout, in, k, s, pad, groups)-W8A8'"
        )
    return layer, int(m.group(2)), int(m.group(3))


@lru_cache(maxsize=8192)
def shape_costs(shape: ConvShape, spec: BitFusionSpec) -> tuple[np.ndarray, ...]:
    """Cycles, energy (pJ) and compute cycles of ``shape`` at every bit pair, each ``[8, 8]``
    indexed ``[w_bits - 1, a_bits - 1]`` (read-only; memoised per distinct shape and spec:
    pass both positionally, e.g. ``shape_costs(shape, DEFAULT_SPEC)``, to share the memo).
    """
    w, a = (g.ravel() for g in np.meshgrid(np.arange(1, 9), np.arange(1, 9), indexing="ij"))
    if shape.groups == 1:
        cyc, en, comp = _dense(spec, shape, a, w)
    elif shape.groups == shape.in_channels:  # depthwise (x channel multiplier)
        cyc, en, comp = _depthwise(spec, shape, a, w)
        mult = max(1, shape.out_channels // shape.in_channels)
        cyc, en, comp = cyc * mult, en * mult, comp * mult
    else:  # grouped: `groups` dense convs of in/g -> out/g channels
        g = shape.groups
        sub = ConvShape(
            shape.in_channels // g,
            shape.out_channels // g,
            shape.out_hw,
            shape.kernel,
            shape.stride,
            1,
            shape.batch,
            False,
        )
        cyc, en, comp = _dense(spec, sub, a, w)
        cyc, en, comp = cyc * g, en * g, comp * g
    en = en + spec.leakage_mw * cyc / spec.frequency_hz * 1e9  # mW * s = mJ; 1e9 pJ per mJ
    out = tuple(np.asarray(x).reshape(8, 8) for x in (cyc, en, comp))
    for x in out:
        x.flags.writeable = False
    return out


def monotone_envelope(cost: np.ndarray) -> np.ndarray:
    """``cost[w, a]`` -> the least cost over all ``w' >= w, a' >= a`` (same shape ``[8, 8]``).

    The tiling search is not monotone in the bitwidths (nor is APQ's table: 12 of its 779
    layers in latency, 117 in energy), because a wider operand changes which tiles fit. A
    narrower operand can always run in a wider mode, so the cost table - what searchers see -
    takes this envelope of latency and of energy; :func:`layer_cost` stays the raw simulator.
    """
    return np.minimum.accumulate(np.minimum.accumulate(cost[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]


def _bits_index(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise HardwareError(
            f"bitfusion costs integer bitwidths 1-8; got {bits!r} (float layers cannot run on it)"
        )
    return int(bits) - 1


def _pow2_tiles(n: int, unit: int = 1) -> np.ndarray:
    """Tile sizes the optimizer tries: ``min(unit * 2^k, n)``, k = 0..ceil(log2(n / unit)) (optimizer.py)."""
    k = math.ceil(math.log2(-(-n // unit))) if n > unit else 0
    return np.unique(np.minimum(unit * (1 << np.arange(k + 1)), n)).astype(np.int64)


def _cdiv(a, b):
    return -(-a // b)


def _operands(spec: BitFusionSpec, a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Perf factor, the widths the array runs operands at, and a key equal for bit pairs that
    run alike (``[P]`` each)."""
    hi, lo = spec.high_precision_bits, spec.low_precision_bits
    fa, fw = hi // np.maximum(a, lo), hi // np.maximum(w, lo)
    return fa * fw, hi // fa, hi // fw, fa * (hi + 1) + fw


def _dense(spec: BitFusionSpec, s: ConvShape, a: np.ndarray, w: np.ndarray):
    """A dense (groups = 1) conv: the five-loop tiling search of optimizer.py."""
    N, M, ps = spec.rows, spec.cols, spec.partial_sum_bits
    (OH, OW), (kh, kw), (sh, sw) = s.out_hw, s.kernel, s.stride
    pf, ca, cw, key = (x[:, None] for x in _operands(spec, a, w))  # [P, 1]
    a, w = a[:, None], w[:, None]
    kmax = math.ceil(math.log2(max(OH, OW))) if max(OH, OW) > 1 else 0
    sp = 1 << np.arange(kmax + 1)
    oc_tiles = _pow2_tiles(s.out_channels) if s.im2col else _pow2_tiles(s.out_channels, M)
    b, k, ic, oc = (
        x.ravel()
        for x in np.meshgrid(
            _pow2_tiles(s.batch), np.arange(kmax + 1), _pow2_tiles(s.in_channels), oc_tiles, indexing="ij"
        )
    )
    oh, ow = np.minimum(sp[k], OH), np.minimum(sp[k], OW)  # [T] square tiles, as the simulator
    kk, ocp = kh * kw, _cdiv(oc, M) * M
    nums = {
        "B": _cdiv(s.batch, b),
        "OW": _cdiv(OW, ow),
        "OH": _cdiv(OH, oh),
        "IC": _cdiv(s.in_channels, ic),
        "OC": _cdiv(s.out_channels, oc),
    }
    deps = {
        "B": ("act", "out"),
        "OW": ("act", "out"),
        "OH": ("act", "out"),
        "IC": ("act", "wgt"),
        "OC": ("wgt", "out"),
    }
    act_px = oh * ow * kk * b if s.im2col else (kh + (oh - 1) * sh) * (kw + (ow - 1) * sw) * b
    red = kk * ic if s.im2col else ic  # reduction the rows see per step
    rows_p = _cdiv(kk * ic, N * pf) * N * pf  # weight rows padded to the array
    fit = {"act": act_px * ic * ca, "wgt": rows_p * ocp * cw, "out": (oh * ow * ocp * b * ps)[None, :]}
    traffic = {"act": act_px * ic * a, "wgt": kk * ic * oc * w, "out": (oh * ow * oc * b * ps)[None, :]}
    if spec.rules == "released":  # padded traffic, and tiles fit by their traffic
        traffic = fit = {"act": traffic["act"], "wgt": rows_p * oc * w, "out": fit["out"]}
    steps = _cdiv(red, N * pf) * (1 if s.im2col else kk)
    compute = b * _cdiv(oc, M) * oh * ow * steps  # [P, T] per tile
    # SRAM reads per tile under the cheapest stationarity (optimizer.py, "inner loop")
    is_l, os_l, ws_l = ocp, _cdiv(red, N * pf) * N * pf * (1 if s.im2col else kk), b * oh * ow
    e_is = os_l * ws_l * (a + is_l * (w + ps))
    e_os = is_l * ws_l * (ps + os_l * (a + w))
    e_ws = os_l * is_l * (w + ws_l * (a + ps))
    pick_is = e_is <= np.minimum(e_os, e_ws)
    pick_os, pick_ws = ~pick_is & (e_os <= e_ws), ~pick_is & (e_os > e_ws)
    taps, macs = kk * ic * oh * ow * b, kk * ic * oh * ow * b * oc  # per tile
    ra = np.where(pick_is, taps * a, macs * a)  # input-stationary reads each input once
    rw = np.where(pick_ws, kk * ic * oc * w, macs * w)  # weight-stationary: each weight once
    ro = np.where(pick_os, oc * oh * ow * b * ps, macs * ps)  # output-stationary: each output once
    loops = [(nums[n], deps[n]) for n in ("B", "OW", "OH", "IC", "OC")]
    fit_key = key[:, 0] if spec.rules == "apq" else (a * 64 + w)[:, 0]  # released: fit at true bits
    return _search(spec, loops, traffic, fit, compute, (ra, rw, ro), fit_key)


def _depthwise(spec: BitFusionSpec, s: ConvShape, a: np.ndarray, w: np.ndarray):
    """A depthwise conv as passes of ``depthwise_pass_channels`` (see the module docstring)."""
    per = spec.depthwise_pass_channels
    full, rest = divmod(s.in_channels, per)
    total = [0, 0.0, 0]
    for channels, count in ((per, full), (rest, 1)):
        if count and channels:
            for i, x in enumerate(_depthwise_pass(spec, s, channels, a, w)):
                total[i] = total[i] + count * x
    return tuple(total)


def _depthwise_pass(spec: BitFusionSpec, s: ConvShape, c: int, a: np.ndarray, w: np.ndarray):
    ps = spec.partial_sum_bits
    (OH, OW), (kh, kw), (sh, sw) = s.out_hw, s.kernel, s.stride
    pf, ca, cw, key = (x[:, None] for x in _operands(spec, a, w))
    a, w = a[:, None], w[:, None]
    kmax = math.ceil(math.log2(max(OH, OW))) if max(OH, OW) > 1 else 0
    sp = 1 << np.arange(kmax + 1)
    b, k = (x.ravel() for x in np.meshgrid(_pow2_tiles(s.batch), np.arange(kmax + 1), indexing="ij"))
    oh, ow = np.minimum(sp[k], OH), np.minimum(sp[k], OW)
    kk, in_px = kh * kw, (kh + (oh - 1) * sh) * (kw + (ow - 1) * sw) * b
    loops = [
        (_cdiv(s.batch, b), ("act", "out")),
        (_cdiv(OW, ow), ("act", "out")),
        (_cdiv(OH, oh), ("act", "out")),
    ]
    traffic = {
        "act": in_px * c * a,
        "wgt": np.broadcast_to(kk * c * w, (len(w), len(b))),
        "out": (oh * ow * c * b * ps)[None, :],
    }
    fit = {
        "act": in_px * c * ca,
        "wgt": np.broadcast_to(kk * c * cw, (len(w), len(b))),
        "out": traffic["out"],
    }
    compute = b * oh * ow * kk * _cdiv(c, spec.depthwise_lanes * pf)
    px = c * oh * ow * b  # outputs per tile; output-stationary SRAM reads
    return _search(spec, loops, traffic, fit, compute, (px * kk * a, px * kk * w, px * ps), key[:, 0])


def _orders(loops: list[tuple[np.ndarray, tuple[str, ...]]]) -> list[tuple[int, ...]]:
    """Distinct loop orders (outer to inner). A loop of one tile is a no-op and loops with the
    same dependencies and trip counts are interchangeable, so 120 orders shrink to 12 at batch 1.
    """
    live = [i for i, (n, _) in enumerate(loops) if (n > 1).any()]
    cls = {
        i: next(j for j in live if loops[j][1] == loops[i][1] and np.array_equal(loops[j][0], loops[i][0]))
        for i in live
    }
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}
    for p in itertools.permutations(live):
        seen.setdefault(tuple(cls[i] for i in p), p)
    return list(seen.values()) or [()]


def _search(spec, loops, traffic, fit, compute, inner, fit_class):
    """Best (cycles, then energy) over tilings ``[T]`` and loop orders ``[R]``, per bit pair ``[P]``.

    ``loops``: (tile count ``[T]``, buffers that depend on the loop) per loop; ``traffic``/``fit``:
    bits of one tile per buffer, ``[P, T]``; ``compute``: cycles per tile; ``inner``: SRAM bits
    read per tile from IBUF, WBUF, OBUF (OBUF is written as much); ``fit_class``: ``[P]``, equal
    for bit pairs whose ``fit`` rows are equal. Returns cycles, energy (pJ, dynamic) and compute
    cycles, each ``[P]``.
    """
    cap, W = spec.capacity_bits(), spec.dram_bits_per_cycle
    P = compute.shape[0]
    fits = np.all([np.broadcast_to(fit[n] <= cap[n], compute.shape) for n in _NS], axis=0)  # [P, T]
    keep = fits.any(0)  # drop tilings no bit pair can use
    if not keep.any():
        raise HardwareError(
            "bitfusion: no tiling of this layer fits the on-chip buffers; enlarge them in BitFusionSpec"
        )
    T = int(keep.sum())
    loops = [(n[keep], dep) for n, dep in loops]
    fits = fits[:, keep]
    sub = {n: np.broadcast_to(v, compute.shape)[:, keep] for n, v in traffic.items()}
    fit = {n: np.broadcast_to(v, compute.shape)[:, keep] for n, v in fit.items()}
    tiles = np.prod([n for n, _ in loops], axis=0)  # [T]
    comp = compute[:, keep] * tiles  # [P, T]
    ra, rw, ro = (np.broadcast_to(x, compute.shape)[:, keep] * tiles for x in inner)
    fixed_pj = (  # order-independent energy: array, and SRAM reads of the inner loop
        comp * spec.core_pj_per_cycle
        + ra * spec.ibuf_read_pj_per_bit
        + rw * spec.wbuf_read_pj_per_bit
        + ro * (spec.obuf_read_pj_per_bit + spec.obuf_write_pj_per_bit)
    )
    per_bit = {  # pJ per bit fetched from DRAM into each buffer (outputs also go back out)
        "act": spec.dram_pj_per_bit + spec.ibuf_write_pj_per_bit,
        "wgt": spec.dram_pj_per_bit + spec.wbuf_write_pj_per_bit,
        "out": 2 * spec.dram_pj_per_bit + spec.obuf_read_pj_per_bit + spec.obuf_write_pj_per_bit,
    }
    orders = _orders(loops)
    R = len(orders)
    # Per buffer: walking each order inner -> outer, the tile grows by every loop it depends on
    # until it would overflow; from then on every outer loop re-fetches it. `held` is how many
    # tiles stay on chip, `refetch` how often the whole tensor comes from DRAM ([U, R, T], for
    # the U classes of bit pairs that fit alike; `which` maps bit pairs to them).
    _, rep, which = np.unique(fit_class, return_index=True, return_inverse=True)
    which = which.ravel()
    held, refetch = {}, {}
    for ns in _NS:
        reach, skip = [], []
        for order in orders:
            c, g, ind = [np.ones(T, np.int64)], [], np.ones(T, np.int64)
            for i in reversed(order):
                num, dep = loops[i]
                if ns in dep:
                    g.append(ind)
                    c.append(c[-1] * num)
                else:
                    ind = ind * num
            reach.append(np.stack(c, -1))
            skip.append(np.stack([*g, ind], -1))
        reach_a, skip_a = np.stack(reach), np.stack(skip)  # [R, T, D + 1]
        limits = cap[ns] // np.maximum(fit[ns][rep], 1)  # tiles of reuse a buffer can hold
        cnt = (reach_a[None, :, :, 1:] <= limits[:, None, :, None]).sum(-1)[..., None]  # [U, R, T, 1]
        held[ns] = np.take_along_axis(reach_a[None], cnt, -1)[..., 0]
        refetch[ns] = tiles // np.take_along_axis(skip_a[None], cnt, -1)[..., 0]
    # Prune: a tiling whose cycles, in its best order, cannot beat what order 0 already gets
    # for some bit pair (every tiling in order 0 is an upper bound) is never the answer.
    least = sum(sub[ns] * refetch[ns].min(1)[which] * (2 if ns == "out" else 1) for ns in _NS)
    lower = np.maximum(comp, _cdiv(least, W))  # DRAM bits moved at least, in any order
    upper = np.where(
        fits, _cycles(spec, comp, *_traffic(sub, held, refetch, which, slice(None), 0)), _BIG
    ).min(1)
    live = (fits & (lower <= upper[:, None])).any(0)
    T = int(live.sum())
    fits, comp, fixed_pj = fits[:, live], comp[:, live], fixed_pj[:, live]
    sub = {n: v[:, live] for n, v in sub.items()}
    held = {n: v[:, :, live] for n, v in held.items()}
    refetch = {n: v[:, :, live] for n, v in refetch.items()}
    out = [np.empty(P, np.int64), np.empty(P), np.empty(P, np.int64)]
    step = max(1, _MAX_ELEMENTS // (R * T))
    for lo in range(0, P, step):
        sl = slice(lo, lo + step)
        tr, first, last = _traffic(sub, held, refetch, which, sl)
        energy = fixed_pj[sl, None, :] + sum(tr[ns] * per_bit[ns] for ns in _NS)
        cyc = _cycles(spec, comp[sl, None, :], tr, first, last)
        cyc = np.where(fits[sl, None, :], cyc, _BIG).reshape(cyc.shape[0], -1)
        energy = energy.reshape(cyc.shape)
        best = cyc.min(1)
        idx = np.where(cyc == best[:, None], energy, np.inf).argmin(1)
        rows = np.arange(cyc.shape[0])
        out[0][sl], out[1][sl], out[2][sl] = best, energy[rows, idx], comp[sl][rows, idx % T]
    return tuple(out)


def _traffic(sub, held, refetch, which, sl, order=None):
    """DRAM bits per buffer, bits of the first tiles in and of the last outputs out, ``[p, R, T]``."""
    pick = slice(None) if order is None else order
    tr, first, last = {}, 0, 0
    for ns in _NS:
        t0 = sub[ns][sl, None, :] if order is None else sub[ns][sl]  # [p, 1, T] or [p, T]
        tr[ns] = t0 * refetch[ns][which[sl]][:, pick]
        on_chip = t0 * held[ns][which[sl]][:, pick]
        first = first + on_chip
        last = on_chip if ns == "out" else last
    return tr, first, last


def _cycles(spec, comp, tr, first, last):
    W = spec.dram_bits_per_cycle
    lat = _cdiv(first, W) + _cdiv(last, W)
    if spec.rules == "apq":  # reads and writes rounded to interface cycles apart
        mem = _cdiv(tr["act"] + tr["wgt"] + tr["out"], W) + _cdiv(tr["out"], W) - lat
    else:  # the traffic between the first tiles in and the last out, rounded once
        mem = _cdiv(tr["act"] + tr["wgt"] + 2 * tr["out"] - first - last, W)
    return comp + np.maximum(0, mem - comp) + lat


class BitFusion:
    """The :class:`~haq.simulators.base.HardwareModel` of BitFusion (see the module docstring)."""

    name = "bitfusion"
    summary = "BitFusion (ISCA'18) 16x32 bit-fusion array, 500 MHz, 45 nm; analytic, reproduces APQ's table"
    float_fallback = False

    def __init__(self, spec: BitFusionSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        self.description = (
            f"BitFusion, {spec.rows}x{spec.cols} fusion units at {spec.frequency_hz / 1e6:g} MHz, "
            f"{spec.low_precision_bits}-{spec.high_precision_bits} bit operands, WBUF/IBUF/OBUF "
            f"{spec.wbuf_bytes // 1024}/{spec.ibuf_bytes // 1024}/{spec.obuf_bytes // 1024} KiB, "
            f"DRAM {spec.dram_bits_per_cycle} bits/cycle (hsharma35/bitfusion bf_e_conf.ini). Latency in ms "
            "from the simulator's tiling search; energy in mJ from CACTI 45 nm SRAM, core synthesis and 15 pJ/bit "
            f"DRAM, leakage: {spec.leakage}. 3, 5-7 bits cost as 4 and 8 in compute."
        )

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        if kind not in LAYER_KINDS:
            raise HardwareError(
                f"bitfusion: unknown layer kind {kind!r}; expected one of {', '.join(LAYER_KINDS)}"
            )
        b, hi = self.spec.low_precision_bits, self.spec.high_precision_bits
        out = []
        while b <= hi:
            out.append(b)
            b *= 2
        return tuple(out)

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        batch = 1 if batch is None else batch
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise HardwareError(f"bitfusion: batch must be a positive integer, got {batch!r}")
        lat, en = empty_table(len(layers)), empty_table(len(layers))
        ints = [slot(b) for b in INT_BITS]
        ms_per_cycle = 1e3 / self.spec.frequency_hz
        for i, layer in enumerate(layers):
            shape = ConvShape.from_layer(layer, int(batch), first=layer.input_group == 0)
            cyc, pj, _ = shape_costs(shape, self.spec)
            lat[i][np.ix_(ints, ints)] = monotone_envelope(cyc) * ms_per_cycle
            en[i][np.ix_(ints, ints)] = monotone_envelope(pj) * 1e-9
        return CostTable(self.name, tuple(layer.name for layer in layers), lat, en, int(batch))


@register_hardware("bitfusion", BitFusion.summary)
def _bitfusion() -> BitFusion:
    return BitFusion()


__all__ = [
    "DEFAULT_SPEC",
    "BitFusion",
    "BitFusionSpec",
    "ConvShape",
    "LayerCost",
    "layer_cost",
    "monotone_envelope",
    "parse_apq_key",
    "shape_costs",
]
