"""``gpu-h100``: per-layer GPU latency from a table measured by ``measure_h100.py``.

The shipped table (``profiles/h100_layer_latency.csv``, a copy of
``shared/reference/h100_layer_latency.csv``) times every conv and linear layer of
torchvision ResNet-50 and MobileNetV2 at 224x224, batch 1 and 64, on one H100. A table
written by ``haq profile --hardware gpu`` on another GPU has the same columns and is read
the same way (``--hardware table:PATH``).

Which column costs which bitwidth, and why:

- conv and linear layers use the implicit-GEMM timings of one lowering for every precision:
  32 bits → ``gemm_fp32_ms`` (strict fp32; tf32 has 10 mantissa bits, numerics our
  float evaluator does not model), 16 → ``gemm_fp16_ms``, 8 → ``gemm_int8_ms``
  (``torch._int_mm``, w8a8). Comparing ``module_fp32_ms`` with an int8 GEMM would mix the
  cost of the precision with the cost of the conv lowering.
- depthwise layers have module timings only (no GEMM lowering, no int8 kernel): 32 →
  ``module_fp32_ms``, 16 → ``module_fp16_ms``; 8 bits are unsupported for depthwise.
- fp8 (``gemm_fp8_ms``) is not exposed: the bitwidth vocabulary has no fp8 slot and an 8 here
  means integer numerics, which is what the evaluator simulates. bf16 and tf32 likewise.
- a mixed pair runs at the wider of its two precisions (the narrower operand is up-cast;
  the cast is not in the table), e.g. (w8, a16) costs the fp16 GEMM.

A layer matches the table by GEMM shape ``(M, K, N, groups)`` at the batch (conv and linear
share GEMM rows; depthwise rows also match on batch); repeated shapes take the median of
their rows. Shapes the table lacks, and the int8 shapes where ``torch._int_mm`` refused
(NaN), are predicted by a roofline fitted per precision to the table
(:mod:`haq.simulators.roofline`). No energy (``energy_mj=None``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from haq.bits import slot
from haq.costs import CostTable
from haq.errors import HardwareError
from haq.layers import LAYER_KINDS, LayerSpec
from haq.simulators.base import empty_table
from haq.simulators.profile_csv import gemm_shape
from haq.simulators.roofline import Roofline, fit_roofline, holdout_errors, summarize_errors

H100_CSV = Path(__file__).parent / "profiles" / "h100_layer_latency.csv"

#: which reference column costs which bitwidth, per family (see the module docstring)
GPU_COLUMNS: dict[str, dict[int, str]] = {
    "gemm": {32: "gemm_fp32_ms", 16: "gemm_fp16_ms", 8: "gemm_int8_ms"},
    "depthwise": {32: "module_fp32_ms", 16: "module_fp16_ms"},
}
PRECISION_OF_BITS: dict[int, str] = {32: "fp32", 16: "fp16", 8: "int8"}
#: the columns measure_h100.py writes, in its order
GPU_REFERENCE_COLUMNS: tuple[str, ...] = (
    "model", "batch", "layer", "kind", "M", "K", "N", "groups", "macs",
    "module_fp32_ms", "module_fp16_ms", "gemm_fp32_ms", "gemm_tf32_ms", "gemm_fp16_ms",
    "gemm_bf16_ms", "gemm_int8_ms", "gemm_fp8_ms",
)  # fmt: skip
_INT = ("batch", "M", "K", "N", "groups", "macs")
_TEXT = ("model", "layer", "kind")


def is_gpu_reference_format(path: str | os.PathLike) -> bool:
    """Whether the first non-comment line of ``path`` is a GPU reference header."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    return "gemm_fp32_ms" in [c.strip() for c in line.split(",")]
    except (OSError, UnicodeDecodeError):
        return False  # the profile reader reports it
    return False


def read_gpu_reference(path: str | os.PathLike) -> tuple[pd.DataFrame, str]:
    """Read a reference-format CSV strictly: (rows, ``#`` description); see :func:`parse_gpu_reference`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"GPU table {path} cannot be read ({exc}); check the path") from None
    return parse_gpu_reference(text, source=str(path))


def parse_gpu_reference(text: str, source: str = "<gpu table>") -> tuple[pd.DataFrame, str]:
    """Parse the text of a reference-format CSV: (rows, ``#`` description).

    Exactly the columns of :data:`GPU_REFERENCE_COLUMNS` (any order); a timing may be empty
    or ``nan`` (the kernel refused the shape, or a depthwise layer's GEMM) except the module
    timings, which every layer has.
    """
    lines = text.splitlines()
    desc = [ln[1:].strip() for ln in lines if ln.startswith("#")]
    first = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")), None)
    if first is None:
        raise HardwareError(f"{source}: no header line; expected {', '.join(GPU_REFERENCE_COLUMNS)}")
    reader = csv.reader(lines[first:])
    header = [h.strip() for h in next(reader)]
    for col in header:
        if col not in GPU_REFERENCE_COLUMNS:
            raise HardwareError(
                f"{source}: line {first + 1}, column {col!r} is not a GPU table column; use {', '.join(GPU_REFERENCE_COLUMNS)}"
            )
    for col in GPU_REFERENCE_COLUMNS:
        if col not in header:
            raise HardwareError(
                f"{source}: line {first + 1}, the header lacks column {col!r}; write every column measure_h100.py writes"
            )
    records = []
    for offset, cells in enumerate(reader, start=1):
        line = first + 1 + offset
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise HardwareError(
                f"{source}: line {line} has {len(cells)} cells, the header has {len(header)}; fix the row"
            )
        rec = {
            col: _gpu_cell(col, cell.strip(), f"{source}: line {line}, column {col!r}")
            for col, cell in zip(header, cells, strict=True)
        }
        if rec["kind"] not in LAYER_KINDS:
            raise HardwareError(
                f"{source}: line {line}, column 'kind': {rec['kind']!r} is not a layer kind; use {', '.join(LAYER_KINDS)}"
            )
        for col in ("module_fp32_ms", "module_fp16_ms"):
            if not math.isfinite(float(rec[col])):  # type: ignore[arg-type]
                raise HardwareError(
                    f"{source}: line {line}, column {col!r} is nan; every layer has a module timing: re-measure it"
                )
        records.append(rec)
    if not records:
        raise HardwareError(f"{source}: the table has a header but no rows; measure some layers first")
    return pd.DataFrame.from_records(records, columns=list(GPU_REFERENCE_COLUMNS)), "\n".join(desc)


def _gpu_cell(col: str, cell: str, where: str) -> object:
    if col in _TEXT:
        if not cell:
            raise HardwareError(f"{where} is empty; fill in a value")
        return cell
    if cell == "" and col not in _INT:
        return math.nan  # measure_h100.py leaves a refused or unmeasured kernel empty
    try:
        value = float(cell)
    except ValueError:
        raise HardwareError(
            f"{where}: {cell!r} is not a number; write a decimal (empty or nan for a refused kernel)"
        ) from None
    if col in _INT:
        if not math.isfinite(value) or value != int(value) or value < 1:
            raise HardwareError(f"{where}: {cell!r} is not a positive integer; write a whole number")
        return int(value)
    if math.isinf(value) or (math.isfinite(value) and value <= 0):
        raise HardwareError(
            f"{where}: {cell!r} is not a positive time in ms; write nan if the kernel refused"
        )
    return value


def _family(kind: str) -> str:
    return "depthwise" if kind == "depthwise" else "gemm"


class ReferenceGpuHardware:
    """Latency of layers on the GPU that measured a reference-format table (default: H100).

    See the module docstring for the column choices. ``lookup(layer, batch, bits)`` returns
    the latency and where it came from (``table`` or ``roofline``); ``rooflines`` holds the
    fits and :meth:`holdout` their error on shapes left out of the fit.
    """

    float_fallback = True

    def __init__(self, path: str | os.PathLike = H100_CSV, name: str = "gpu-h100") -> None:
        self.name = name
        self.path = Path(path)
        self.rows, desc = read_gpu_reference(self.path)
        self.summary = f"GPU reference table {self.path.name} + fitted roofline"
        self.description = desc or (
            "one NVIDIA H100, torch on CUDA, triton.testing.do_bench median "
            "(shared/reference/measure_h100.py); fp32/fp16/int8 implicit GEMMs per layer shape"
        )
        self._table: dict[tuple, dict[int, float]] = {}
        self.rooflines: dict[tuple[str, str], Roofline] = {}
        for family, columns in GPU_COLUMNS.items():
            sub = self.rows[(self.rows["kind"] == "depthwise") == (family == "depthwise")]
            if sub.empty:
                continue
            keys = ["M", "K", "N", "groups"] + (["batch"] if family == "depthwise" else [])
            med = sub.groupby(keys)[list(columns.values())].median()
            for key, vals in med.iterrows():
                key = key if isinstance(key, tuple) else (key,)
                self._table[(family, *map(int, key))] = {
                    b: float(vals[c]) for b, c in columns.items() if math.isfinite(vals[c])
                }
            shapes = sub[["M", "K", "N", "groups"]].to_numpy()
            for bits, col in columns.items():
                times = sub[col].to_numpy(dtype=float)
                if np.isfinite(times).sum() >= 3:
                    self.rooflines[(family, PRECISION_OF_BITS[bits])] = fit_roofline(
                        family, PRECISION_OF_BITS[bits], shapes, times
                    )

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        return tuple(sorted(GPU_COLUMNS[_family(kind)]))

    def lookup(self, layer: LayerSpec, batch: int, bits: int) -> tuple[float, str]:
        """Latency (ms) of ``layer`` at ``batch`` with both operands at ``bits``, and its source."""
        family = _family(layer.kind)
        if bits not in GPU_COLUMNS[family]:
            raise HardwareError(
                f"{self.name} has no {bits}-bit kernel for {layer.kind} layers (layer {layer.name!r}); "
                f"use {' or '.join(map(str, self.supported_bits(layer.kind)))} bits"
            )
        shape = gemm_shape(layer, batch)
        key = (family, *shape) + ((batch,) if family == "depthwise" else ())
        measured = self._table.get(key, {})
        if bits in measured:
            return measured[bits], "table"
        fit = self.rooflines.get((family, PRECISION_OF_BITS[bits]))
        if fit is None:
            raise HardwareError(
                f"{self.name}: no {bits}-bit timings for {family} layers to fit a roofline; add rows"
            )
        return float(fit.predict_ms(np.array(shape))[0]), "roofline"

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        batch = int(batch or 1)
        lat = empty_table(len(layers))
        for i, layer in enumerate(layers):
            bits = self.supported_bits(layer.kind)
            at = {b: self.lookup(layer, batch, b)[0] for b in bits}
            for w in bits:
                for a in bits:
                    lat[i, slot(w), slot(a)] = at[max(w, a)]
        return CostTable(self.name, tuple(x.name for x in layers), lat, None, batch)

    def holdout(self, folds: int = 5, seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
        """Roofline error on held-out shapes, per (family, precision): median, p90, max, n."""
        out = {}
        for (family, precision), _ in self.rooflines.items():
            bits = next(b for b, p in PRECISION_OF_BITS.items() if p == precision)
            sub = self.rows[(self.rows["kind"] == "depthwise") == (family == "depthwise")]
            errors = holdout_errors(
                family, precision, sub[["M", "K", "N", "groups"]].to_numpy(),
                sub[GPU_COLUMNS[family][bits]].to_numpy(dtype=float), folds=folds, seed=seed,
            )  # fmt: skip
            out[(family, precision)] = summarize_errors(list(errors))
        return out
