"""The hardware profile CSV: one measured latency per (layer or GEMM shape, bit pair, batch).

Two keyings share one file format (design §3)::

    # cpu: Intel(R) Xeon(R) Processor, 1 thread, torch 2.14.1, batch 1   <- machine description
    layer,kind,w_bits,a_bits,batch,latency_ms                            <- per-model profile
    stem.0,conv,8,8,1,0.0123

    # ...
    kind,M,K,N,groups,w_bits,a_bits,batch,latency_ms[,energy_mj]         <- per GEMM shape
    conv,3136,576,64,1,8,8,1,0.0257

A shape-keyed file serves every model: a layer matches a row by ``kind`` and its implicit-GEMM
shape at the batch (``M = batch*Ho*Wo``, ``K = Cin/groups*kh*kw``, ``N = Cout``; for a linear
layer ``M = batch*rows``). It may also carry the conv geometry columns
:data:`GEOMETRY_COLUMNS` (all of them or none); then they are part of the key, which is how
``haq profile --hardware cpu`` keeps two convs with the same GEMM shape but different kernels
apart. A ``layer`` column in a shape-keyed file is informational (the first layer measured
with that shape).

Leading ``#`` lines carry the machine description. Parsing is strict: every problem is one
:class:`HardwareError` naming the file, line, column and the fix.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from haq.atomic import atomic_write_text
from haq.bits import ALL_BITS
from haq.errors import HardwareError
from haq.layers import LAYER_KINDS, LayerSpec

SHAPE_COLUMNS: tuple[str, ...] = ("M", "K", "N", "groups")
GEOMETRY_COLUMNS: tuple[str, ...] = (
    "in_h", "in_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
)  # fmt: skip
REQUIRED_COLUMNS: tuple[str, ...] = ("kind", "w_bits", "a_bits", "batch", "latency_ms")
OPTIONAL_COLUMNS: tuple[str, ...] = ("energy_mj",)
_INT_COLUMNS = frozenset(("w_bits", "a_bits", "batch", *SHAPE_COLUMNS, *GEOMETRY_COLUMNS))


@dataclass(frozen=True)
class Profile:
    """A parsed profile: its rows, its machine description and how it is keyed.

    ``rows`` has the columns of the file (ints as ints, times as floats);
    ``keyed_by`` is ``"layer"`` or ``"shape"``; ``geometry`` says whether the shape key
    includes :data:`GEOMETRY_COLUMNS`.
    """

    rows: pd.DataFrame
    description: str
    keyed_by: str
    geometry: bool
    source: str

    @property
    def has_energy(self) -> bool:
        return "energy_mj" in self.rows.columns


def gemm_shape(layer: LayerSpec, batch: int) -> tuple[int, int, int, int]:
    """``(M, K, N, groups)`` of a layer's implicit GEMM at ``batch`` images.

    The lowering of ``shared/reference/measure_h100.py``: conv ``M = batch*Ho*Wo``,
    ``K = Cin/groups*kh*kw``, ``N = Cout``; linear ``M = batch*rows``, ``K = in``, ``N = out``.
    """
    if layer.kind == "linear":
        return batch * layer.in_hw[0], layer.in_channels, layer.out_channels, 1
    kh, kw = layer.kernel
    m = batch * layer.out_hw[0] * layer.out_hw[1]
    return m, layer.in_channels // layer.groups * kh * kw, layer.out_channels, layer.groups


def geometry(layer: LayerSpec) -> tuple[int, ...]:
    """The conv geometry of a layer in :data:`GEOMETRY_COLUMNS` order (zeros-free for linear)."""
    return (*layer.in_hw, *layer.kernel, *layer.stride, *layer.padding)


def shape_key(layer: LayerSpec, batch: int, with_geometry: bool) -> tuple:
    """The key a layer has in a shape-keyed profile."""
    key = (layer.kind, *gemm_shape(layer, batch), batch)
    return key + geometry(layer) if with_geometry else key


def row_key(row: dict, keyed_by: str, with_geometry: bool) -> tuple:
    """The key of a parsed row, comparable with :func:`shape_key` / ``(name, batch)``."""
    if keyed_by == "layer":
        return (row["layer"], row["batch"])
    key = (row["kind"], *(row[c] for c in SHAPE_COLUMNS), row["batch"])
    return key + tuple(row[c] for c in GEOMETRY_COLUMNS) if with_geometry else key


def read_profile(path: str | os.PathLike) -> Profile:
    """Parse a profile CSV strictly; raise a one-line :class:`HardwareError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HardwareError(
            f"profile {path} does not exist; write one with `haq profile` or check the path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"profile {path} cannot be read ({exc}); pass a UTF-8 CSV file") from None
    return parse_profile(text, source=str(path))


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    """Parse the text of a profile CSV (see the module docstring for the format)."""
    lines = text.splitlines()
    desc_lines: list[str] = []
    first = 0
    while first < len(lines) and (lines[first].startswith("#") or not lines[first].strip()):
        if lines[first].startswith("#"):
            desc_lines.append(lines[first][1:].strip())
        first += 1
    if first == len(lines):
        raise HardwareError(
            f"{source}: no header line; expected columns {', '.join(REQUIRED_COLUMNS)} and layer or M,K,N,groups"
        )
    reader = csv.reader(io.StringIO("\n".join(lines[first:])))
    header = [h.strip() for h in next(reader)]
    header_line = first + 1
    cols = set(header)
    _check_header(header, cols, source, header_line)
    keyed_by = "shape" if set(SHAPE_COLUMNS) <= cols else "layer"
    with_geometry = set(GEOMETRY_COLUMNS) <= cols

    records: list[dict] = []
    seen: dict[tuple, int] = {}
    for offset, cells in enumerate(reader, start=1):
        line = header_line + offset
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise HardwareError(
                f"{source}: line {line} has {len(cells)} cells, the header has {len(header)}; "
                "fix the row so every column has a value"
            )
        row = {
            name: _cell(name, cell.strip(), source, line) for name, cell in zip(header, cells, strict=True)
        }
        _check_row(row, source, line)
        key = row_key(row, keyed_by, with_geometry) + (row["w_bits"], row["a_bits"])
        if key in seen:
            raise HardwareError(
                f"{source}: line {line} repeats the layer, batch and bit pair of line {seen[key]}; "
                "keep one row per key (average repeated measurements first)"
            )
        seen[key] = line
        records.append(row)
    if not records:
        raise HardwareError(f"{source}: the profile has a header but no rows; measure some layers first")
    rows = pd.DataFrame.from_records(records, columns=header)
    return Profile(rows, "\n".join(desc_lines), keyed_by, with_geometry, source)


def _check_header(header: list[str], cols: set[str], source: str, line: int) -> None:
    known = {"layer", *SHAPE_COLUMNS, *GEOMETRY_COLUMNS, *REQUIRED_COLUMNS, *OPTIONAL_COLUMNS}
    for name in header:
        if name not in known:
            raise HardwareError(
                f"{source}: line {line}, column {name!r} is not a profile column; "
                f"use {', '.join(sorted(known))}"
            )
    if len(cols) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise HardwareError(f"{source}: line {line}, column {dup!r} appears twice; keep one")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise HardwareError(
            f"{source}: line {line}, the header lacks column {missing[0]!r}; add it (required: {', '.join(REQUIRED_COLUMNS)})"
        )
    shape_cols = [c for c in SHAPE_COLUMNS if c in cols]
    if shape_cols and len(shape_cols) != len(SHAPE_COLUMNS):
        absent = next(c for c in SHAPE_COLUMNS if c not in cols)
        raise HardwareError(
            f"{source}: line {line}, the header lacks column {absent!r}; a shape-keyed profile needs all of M, K, N, groups"
        )
    if not shape_cols and "layer" not in cols:
        raise HardwareError(
            f"{source}: line {line}, the header has neither a 'layer' column nor M, K, N, groups; add one key"
        )
    geo = [c for c in GEOMETRY_COLUMNS if c in cols]
    if geo and (len(geo) != len(GEOMETRY_COLUMNS) or not shape_cols):
        absent = next((c for c in GEOMETRY_COLUMNS if c not in cols), "M")
        raise HardwareError(
            f"{source}: line {line}, the header lacks column {absent!r}; conv geometry needs M, K, N, groups and all of {', '.join(GEOMETRY_COLUMNS)}"
        )


def _cell(name: str, cell: str, source: str, line: int) -> object:
    where = f"{source}: line {line}, column {name!r}"
    if cell == "":
        raise HardwareError(f"{where} is empty; fill in a value")
    if name in ("layer", "kind"):
        return cell
    if name in _INT_COLUMNS:
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value != int(value):
            raise HardwareError(f"{where}: {cell!r} is not an integer; write a whole number")
        return int(value)
    try:
        value = float(cell)
    except ValueError:
        raise HardwareError(
            f"{where}: {cell!r} is not a number; write milliseconds or millijoules as a decimal"
        ) from None
    if not math.isfinite(value) or value < 0 or (name == "latency_ms" and value == 0):
        raise HardwareError(
            f"{where}: {cell!r} is not a positive finite number; remove the row or re-measure it"
        )
    return value


def _check_row(row: dict, source: str, line: int) -> None:
    where = f"{source}: line {line}, column"
    if row["kind"] not in LAYER_KINDS:
        raise HardwareError(
            f"{where} 'kind': {row['kind']!r} is not a layer kind; use {', '.join(LAYER_KINDS)}"
        )
    for col in ("w_bits", "a_bits"):
        if row[col] not in ALL_BITS:
            raise HardwareError(
                f"{where} {col!r}: {row[col]} is not a bitwidth; use 1-8 (integer), 16 or 32 (float)"
            )
    for col in ("batch", *SHAPE_COLUMNS, "kernel_h", "kernel_w", "stride_h", "stride_w", "in_h", "in_w"):
        if col in row and row[col] < 1:
            raise HardwareError(f"{where} {col!r}: {row[col]} must be at least 1")
    for col in ("pad_h", "pad_w"):
        if col in row and row[col] < 0:
            raise HardwareError(f"{where} {col!r}: {row[col]} must not be negative")


def profile_text(df: pd.DataFrame, machine_description: str) -> str:
    """The CSV text of a profile: ``#`` description lines, header, rows (floats to 6 digits)."""
    cols = list(df.columns)
    _check_header(cols, set(cols), "profile to write", 1)
    out = io.StringIO()
    for line in machine_description.splitlines() or [""]:
        out.write(f"# {line}".rstrip() + "\n")
    df.to_csv(out, index=False, float_format="%.6g", lineterminator="\n")
    return out.getvalue()


def write_profile(df: pd.DataFrame, path: str | os.PathLike, machine_description: str) -> Path:
    """Write ``df`` as a profile CSV atomically; the text reads back with :func:`read_profile`."""
    text = profile_text(df, machine_description)
    parse_profile(text, source=str(path))  # never write a file we would refuse to read
    return atomic_write_text(path, text)


def layer_label(layer: LayerSpec, batch: int) -> str:
    """How error messages name a layer: its name, kind and GEMM shape."""
    m, k, n, g = gemm_shape(layer, batch)
    return f"layer {layer.name!r} ({layer.kind}, M={m} K={k} N={n} groups={g}, batch {batch})"


def bit_pairs(rows: pd.DataFrame) -> Sequence[tuple[int, int]]:
    """The distinct (w_bits, a_bits) pairs of some rows, sorted."""
    return sorted({(int(w), int(a)) for w, a in zip(rows["w_bits"], rows["a_bits"], strict=True)})
