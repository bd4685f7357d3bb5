"""BISMO, the bit-serial matrix-multiplication overlay: ``bismo-edge`` and ``bismo-cloud``.

What the hardware is
--------------------
BISMO (Umuroglu, Rasnayake, Sjalander, FPL'18; EECS-NTNU/bismo tag v1.0) multiplies an
``M x K`` LHS matrix by the transpose of an ``N x K`` RHS matrix, both stored as *bit-planes*:
one bit of every element per plane, each row of a plane packed into ``ceil(K / Dk)`` words of
``Dk`` bits. A ``Dm x Dn`` array of dot-product units ANDs and popcounts one word of a LHS
row against one word of a RHS row per cycle, so a ``w``-bit by ``a``-bit product costs
``w * a`` binary passes. Three stages run concurrently, handing on-chip buffers to each other
with tokens (two buffer regions each, i.e. double buffering): *fetch* (DRAM -> BRAM),
*execute* (the array), *result* (int32 accumulators -> DRAM).

How a layer becomes BISMO work (:func:`lower`)
----------------------------------------------
LHS = activations (rows are output pixels, ``Dm`` per tile), RHS = weights (rows are output
channels, ``Dn`` per tile), K = the reduction. One GEMM per image:

====================  ==================  =================  ============================  ==============
layer                 GEMMs per batch     M (LHS rows)       K (bits per row per plane)    N (RHS rows)
====================  ==================  =================  ============================  ==============
conv, groups g        batch * g           out_h * out_w      in/g * kh * kw                out/g
depthwise             batch * ceil(C/Dn)  out_h * out_w      kh * kw * ceil(Dn/mult)       Dn
linear                1                   batch * tokens     in_features                   out_features
====================  ==================  =================  ============================  ==============

Depthwise is packed ``Dn`` channels at a time: the 3x3 windows of ``Dn`` channels sit side by
side in one LHS row (9 * 16 = 144 bits: one 256-bit word) against a block-diagonal ``Dn``-row
weight matrix, so every array column has its own channel. ``mult`` = out/in channels.

Stages, in cycles, for weights of ``w`` and activations of ``a`` bits (:func:`stage_cycles`)
-----------------------------------------------------------------------------------------
* activation fetch ``gemms * M * ceil(K/Dk) * a * (Dk/8) / read_port_bytes`` - every
  activation bit-plane once per GEMM;
* weight fetch: the RHS streams through in ``Dn``-row tiles, ``ceil(K/Dk) * w`` words per row,
  once per GEMM (and once more per LHS chunk when an image's activation planes overflow a
  BRAM region of ``entries_per_mem / 2`` words per memory);
* execute ``ceil(M/Dm) * ceil(N/Dn) * ceil(K/Dk) * w * a`` per GEMM;
* the weight-tile pipeline: fetch of tile ``j+1`` overlaps execution of tile ``j``, so a GEMM of
  ``n`` tiles takes ``n * max(fetch, exec) + min(fetch, exec)`` (fill and drain);
* result: int32 ``Dm x Dn`` tiles over the write port (counted only if ``count_result_writes``).

Latency = ``max(activation stream, weight-tile pipeline[, result stream])`` (with one read
port the two fetch streams add up instead) + ``pipeline_latency_cycles`` per GEMM.

Why HAQ's cloud table is memory-bound (what its numbers say)
------------------------------------------------------------
HAQ ships one table (``qmobilenetv2_imagenet100_batch16_latency_table.npy``; its simulator
is not released, mit-han-lab/haq issue #15 is unanswered). Its entries are integers in clock
cycles: the classifier (1280 -> 1000) costs exactly ``5000 * w`` (+ <= 21), i.e. 1000 * 1280
weight bits per plane over a 256-bit port. Fitting ``max(c1*w*a, c2*a, c3*w)`` to each layer
and comparing a coefficient with a stage volume wherever that term binds:

1. ``c2 = 16*H*W * ceil(K/256)`` (1.00-1.01x on every layer at 28x28 and above): activations
   are fetched as bit-planes whose rows are padded to the 256-bit word, at ``a`` bits. A 1x1
   conv with K = 16..96 moves 2.7-16x more bytes than it uses, so the 112x112 and 56x56 layers
   are activation-fetch bound and scale with ``a`` alone (layer 2: exactly ``200704 * a`` at w=1).
2. Depthwise: ``c2 = 16*H*W * C/16`` - one 256-bit word per pixel per 16 channels, the packing
   above; compute (``ceil(HW/16) * C/16 * w * a`` per image) never binds (fetch/exec = 16/w).
3. ``c3 = 16 * N * ceil(K/256)`` (1.01-1.04x on the 7x7 1x1 convs): the weights are fetched
   once per *image* - batch 16 is 16 GEMMs, not one with 16x the rows - while the classifier
   (M = the batch, one GEMM) fetches them once. Row tiles are rounded per image: the 7x7
   expansion convs give ``c1`` = 1.03-1.04x ``16 * ceil(49/16) * ceil(N/16) * ceil(K/256)``,
   1.3x the pooled ``ceil(784/16) * ...``; c1 is 1.01-1.06x it on the compute-bound convs.
4. Activations and weights stream concurrently: layer 51 at W1A1 is 41,056 cycles, the weight
   stream alone is 40,960; one shared port would need 42,528. Hence ``read_ports = 2``.
5. No result write-back is in the table: layer 3's int32 results are 2.4 M cycles over a
   256-bit port, the table says 200,784 at W1A1 (even 3-bit outputs would exceed it). And no
   per-instruction pipeline bubble: 15 cycles per output tile would add 57,600 to layer 42's
   15,408 at W1A1.

Half of MobileNetV2's cycles are in layers that scale with ``a`` only (1., 2.), so uniform
W8A8 / W4A4 is 2.52 in the table, not the 4.0 of a compute roofline. Within-layer crossovers
(sums near ``c1*w*a = c3*w``) are softer in the table than a max; the fill/drain term covers
part of that. ``benchmarks/bismo_fidelity.py`` prints the agreement.

Energy: not modelled (``energy_mj`` is None). Neither BISMO nor HAQ publishes per-operation
or per-byte energies for these builds (BISMO only gives board power, "< 5 W" on PYNQ-Z1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from haq.bits import INT_BITS, slot
from haq.costs import CostTable
from haq.errors import ConfigError, HardwareError
from haq.layers import LAYER_KINDS, LayerSpec
from haq.simulators import register_hardware
from haq.simulators.base import empty_table

RESULT_BYTES = 4  #: bytes per accumulator written by the result stage (BISMO accWidth = 32)
_POSITIVE_INT_FIELDS = "dm dk dn read_port_bytes read_ports write_port_bytes entries_per_mem batch".split()


@dataclass(frozen=True)
class BismoSpec:
    """One BISMO instance: array shape, clock, DRAM ports, buffers and batch.

    Example (the edge build)::

        BismoSpec(name="bismo-edge", dm=8, dk=256, dn=8, clock_mhz=200.0, read_port_bytes=8,
                  read_ports=1, write_port_bytes=8, entries_per_mem=1024, batch=1,
                  pipeline_latency_cycles=15, count_result_writes=False)
    """

    name: str  #: registry name
    dm: int  #: array rows: LHS (activation) rows per tile
    dk: int  #: array depth: bits of K per dot-product unit per cycle (one BRAM word), multiple of 8
    dn: int  #: array columns: RHS (weight) rows per tile
    clock_mhz: float  #: fabric clock in MHz (cycles -> ms)
    read_port_bytes: int  #: bytes per cycle of one DRAM read port
    read_ports: int  #: 1 = LHS and RHS fetches share the port; 2 = they stream concurrently
    write_port_bytes: int  #: bytes per cycle of the DRAM write port (result stage)
    entries_per_mem: int  #: Dk-bit entries of each of the Dm LHS / Dn RHS BRAMs (half per buffer region)
    batch: int  #: images per inference (the cost table's batch)
    pipeline_latency_cycles: int  #: execute datapath depth in cycles, paid once per GEMM
    count_result_writes: bool  #: whether int32 result write-back can bound latency
    #: field name(s) -> the file, paper or measurement the value comes from
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"BismoSpec {self.name}: {name} must be a positive integer, got {v!r}")
        if self.dk % 8:
            raise ConfigError(f"BismoSpec {self.name}: dk must be a multiple of 8 bits, got {self.dk}")
        if self.read_ports > 2:
            raise ConfigError(
                f"BismoSpec {self.name}: read_ports is 1 (shared) or 2 (LHS and RHS apart), got {self.read_ports}"
            )
        if not self.clock_mhz > 0:
            raise ConfigError(f"BismoSpec {self.name}: clock_mhz must be > 0, got {self.clock_mhz!r}")
        if self.pipeline_latency_cycles < 0:
            raise ConfigError(
                f"BismoSpec {self.name}: pipeline_latency_cycles must be >= 0, got {self.pipeline_latency_cycles}"
            )
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    @property
    def word_bytes(self) -> int:
        """Bytes of one BRAM word (one row-segment of one bit-plane)."""
        return self.dk // 8

    @property
    def peak_binary_tops(self) -> float:
        """Peak binary tera-ops/s: 2 * Dm * Dn * Dk per cycle (BISMO's own figure of merit)."""
        return 2 * self.dm * self.dn * self.dk * self.clock_mhz * 1e6 / 1e12


_V10 = "EECS-NTNU/bismo v1.0"
EDGE = BismoSpec(
    name="bismo-edge",
    dm=8,
    dk=256,
    dn=8,
    clock_mhz=200.0,
    read_port_bytes=8,
    read_ports=1,
    write_port_bytes=8,
    entries_per_mem=1024,
    batch=1,
    pipeline_latency_cycles=15,
    count_result_writes=False,
    sources={
        "dm, dk, dn, clock_mhz": f"{_V10} README/Makefile: `make all` builds an 8x256x8 array at 200 MHz for PYNQ-Z1",
        "read_port_bytes, write_port_bytes, read_ports": f"{_V10} BISMO.scala: read/writeChanWidth = PYNQZ1Params "
        "mrp.dataWidth = 64 bits; one fetch stage reads LHS and RHS through that one channel",
        "entries_per_mem": f"{_V10} Main.scala: lhs/rhsEntriesPerMem = 64*32*1024 / (8*256) = 1024 (256 KiB per operand)",
        "batch": "HAQ's edge setting, batch 1 (design.md section 6)",
        "pipeline_latency_cycles": f"{_V10} ExecStage.getLatency for Dk=256: BRAM 1+1+1, DPA 1, DPU 6, popcount 1+1+log2(8)",
        "count_result_writes": "HAQ's released table has no result write-back (see module docstring, finding 5)",
    },
)
CLOUD = BismoSpec(
    name="bismo-cloud",
    dm=16,
    dk=256,
    dn=16,
    clock_mhz=250.0,
    read_port_bytes=32,
    read_ports=2,
    write_port_bytes=32,
    entries_per_mem=512,
    batch=16,
    pipeline_latency_cycles=15,
    count_result_writes=False,
    sources={
        "dm, dk, dn, batch": "HAQ's cloud setting, 16x256x16 at batch 16 (design.md section 6); the released "
        "MobileNetV2 table tiles rows and channels by 16 and K by 256",
        "clock_mhz": "VU9P = AWS EC2 F1; its shell's default clk_main_a0 is 250 MHz (F1 clock recipes), within the "
        "200-300 MHz VU9P-class range; the released table is in cycles, so the clock only scales ms",
        "read_port_bytes, read_ports": "HAQ's table: the classifier costs 5000*w cycles = 1000*1280 bits / 256 per plane; "
        "activation and weight streams overlap (finding 4)",
        "write_port_bytes": "assumed equal to a read port (256 bits); unused while count_result_writes is False",
        "entries_per_mem": f"{_V10} Main.scala sizing rule 64*32*1024 / (16*256) = 512 (256 KiB per operand)",
        "pipeline_latency_cycles": f"{_V10} ExecStage.getLatency for Dk=256 (as edge)",
        "count_result_writes": "HAQ's released table has no result write-back (see module docstring, finding 5)",
    },
)


@dataclass(frozen=True)
class GemmShapes:
    """The BISMO work of ``L`` layers; every field is an int64 array of shape ``(L,)``."""

    gemms: np.ndarray  #: independent GEMMs per batch (images x groups / channel blocks)
    m: np.ndarray  #: LHS (activation) rows per GEMM
    k: np.ndarray  #: reduction length per GEMM, in bits per row per bit-plane
    n: np.ndarray  #: RHS (weight) rows per GEMM


def lower(layers: Sequence[LayerSpec], batch: int, spec: BismoSpec) -> GemmShapes:
    """Map each layer to BISMO GEMMs (see the lowering table in the module docstring)."""
    rows = []
    for layer in layers:
        kh, kw = layer.kernel
        hw = layer.out_hw[0] * layer.out_hw[1]
        if layer.kind == "linear":
            rows.append((1, batch * layer.in_hw[0], layer.in_channels, layer.out_channels))
        elif layer.kind == "depthwise":
            mult = max(1, layer.out_channels // max(1, layer.in_channels))
            blocks = -(-layer.out_channels // spec.dn)
            rows.append((batch * blocks, hw, kh * kw * -(-spec.dn // mult), min(spec.dn, layer.out_channels)))
        elif layer.kind == "conv":
            g = layer.groups
            rows.append((batch * g, hw, layer.in_channels // g * kh * kw, layer.out_channels // g))
        else:
            raise HardwareError(
                f"{spec.name} cannot cost layer {layer.name} of kind {layer.kind!r}; kinds are {', '.join(LAYER_KINDS)}"
            )
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return GemmShapes(gemms=arr[:, 0], m=arr[:, 1], k=arr[:, 2], n=arr[:, 3])


def stage_cycles(shapes: GemmShapes, spec: BismoSpec) -> dict[str, np.ndarray]:
    """Cycles of each stage and the layer total, arrays of shape ``(L, 8, 8)`` = ``[layer, w-1, a-1]``.

    Keys: ``act_fetch``, ``weight_fetch``, ``execute``, ``result`` (int32 write-back, reported
    even when not counted), ``weight_pipeline`` (weight tiles fetched while the previous one
    executes, with fill and drain) and ``total`` (the latency).
    """
    w = np.asarray(INT_BITS, dtype=np.float64)[None, :, None]  # (1, 8, 1)
    a = np.asarray(INT_BITS, dtype=np.float64)[None, None, :]  # (1, 1, 8)
    gemms, m, n = (x.astype(np.float64)[:, None, None] for x in (shapes.gemms, shapes.m, shapes.n))
    kt = -(-shapes.k // spec.dk)[:, None, None].astype(np.float64)  # words per row per plane
    tiles_m = np.ceil(m / spec.dm)
    tiles_n = np.ceil(n / spec.dn)
    cyc_per_word = spec.word_bytes / spec.read_port_bytes

    # LHS chunks: Dm-row tiles whose a bit-planes fit one of the two buffer regions.
    tiles_per_region = np.maximum(1.0, np.floor((spec.entries_per_mem // 2) / (kt * a)))
    chunks = np.ceil(tiles_m / tiles_per_region)  # weights are re-streamed once per chunk
    tiles_per_chunk = np.ceil(tiles_m / chunks)

    act_fetch = gemms * m * kt * a * cyc_per_word + 0 * w
    wtile_fetch = (n / tiles_n) * kt * w * cyc_per_word + 0 * a  # one Dn-row RHS tile (mean)
    weight_fetch = gemms * chunks * tiles_n * wtile_fetch
    etile = tiles_per_chunk * kt * w * a  # one RHS tile against every LHS tile of a chunk
    execute = gemms * tiles_m * tiles_n * kt * w * a
    weight_pipeline = (
        gemms * chunks * (tiles_n * np.maximum(wtile_fetch, etile) + np.minimum(wtile_fetch, etile))
    )
    result = gemms * tiles_m * spec.dm * tiles_n * spec.dn * RESULT_BYTES / spec.write_port_bytes + 0 * w * a

    reads = act_fetch if spec.read_ports >= 2 else act_fetch + weight_fetch
    total = np.maximum(reads, weight_pipeline)
    if spec.count_result_writes:
        total = np.maximum(total, result)
    total = total + gemms * spec.pipeline_latency_cycles
    return {
        "act_fetch": act_fetch,
        "weight_fetch": weight_fetch,
        "execute": execute,
        "result": result,
        "weight_pipeline": weight_pipeline,
        "total": total,
    }


class Bismo:
    """A BISMO instance as a :class:`~haq.simulators.base.HardwareModel` (1-8 bits, no float)."""

    float_fallback = False

    def __init__(self, spec: BismoSpec, summary: str = "") -> None:
        self.spec = spec
        self.name = spec.name
        self.summary = (
            summary or f"BISMO {spec.dm}x{spec.dk}x{spec.dn} bit-serial overlay, batch {spec.batch}"
        )
        self.description = _describe(spec)

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        if kind not in LAYER_KINDS:
            raise HardwareError(
                f"{self.name}: unknown layer kind {kind!r}; kinds are {', '.join(LAYER_KINDS)}"
            )
        return INT_BITS

    def stage_cycles(self, layers: Sequence[LayerSpec], batch: int | None = None) -> dict[str, np.ndarray]:
        """Per-stage cycles, ``(L, 8, 8)`` arrays indexed ``[layer, w-1, a-1]`` (see :func:`stage_cycles`)."""
        return stage_cycles(lower(layers, self._batch(batch), self.spec), self.spec)

    def cycles(self, layers: Sequence[LayerSpec], batch: int | None = None) -> np.ndarray:
        """Latency in clock cycles, ``(L, 8, 8)`` indexed ``[layer, w-1, a-1]`` (HAQ's table layout)."""
        return self.stage_cycles(layers, batch)["total"]

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        b = self._batch(batch)
        cyc = self.cycles(layers, b)  # (L, 8, 8)
        latency = empty_table(len(layers))
        lo, hi = slot(INT_BITS[0]), slot(INT_BITS[-1]) + 1
        latency[:, lo:hi, lo:hi] = cyc / (self.spec.clock_mhz * 1e3)  # cycles -> ms
        return CostTable(self.name, tuple(s.name for s in layers), latency, None, b)

    def _batch(self, batch: int | None) -> int:
        if batch is None:
            return self.spec.batch
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ConfigError(f"{self.name}: batch must be a positive integer, got {batch!r}")
        return int(batch)

    def __repr__(self) -> str:
        return f"Bismo({self.spec.name!r})"


def _describe(spec: BismoSpec) -> str:
    ports = "LHS and RHS concurrently" if spec.read_ports == 2 else "LHS and RHS through one port"
    lines = [
        f"BISMO {spec.dm}x{spec.dk}x{spec.dn} at {spec.clock_mhz:g} MHz ({spec.peak_binary_tops:.2f} binary TOPS peak), "
        f"batch {spec.batch}; latency in ms per batch, no energy model.",
        f"DRAM: {spec.read_ports} x {spec.read_port_bytes} B/cycle read ({ports}), {spec.write_port_bytes} B/cycle write; "
        f"{spec.entries_per_mem} x {spec.dk}-bit entries per operand memory; result write-back "
        f"{'counted' if spec.count_result_writes else 'not counted (as in HAQ)'}.",
        "Sources:",
    ]
    lines += [f"  {k}: {v}" for k, v in spec.sources.items()]
    return "\n".join(lines)


@register_hardware(
    "bismo-edge", "BISMO 8x256x8 bit-serial overlay, Zynq-7020 (PYNQ-Z1) at 200 MHz, batch 1, 1-8 bits"
)
def bismo_edge() -> Bismo:
    return Bismo(EDGE, "BISMO 8x256x8 bit-serial overlay, Zynq-7020 (PYNQ-Z1) at 200 MHz, batch 1, 1-8 bits")


@register_hardware("bismo-cloud", "BISMO 16x256x16 bit-serial overlay, VU9P at 250 MHz, batch 16, 1-8 bits")
def bismo_cloud() -> Bismo:
    return Bismo(CLOUD, "BISMO 16x256x16 bit-serial overlay, VU9P at 250 MHz, batch 16, 1-8 bits")


__all__ = [
    "CLOUD",
    "EDGE",
    "Bismo",
    "BismoSpec",
    "GemmShapes",
    "bismo_cloud",
    "bismo_edge",
    "lower",
    "stage_cycles",
]
