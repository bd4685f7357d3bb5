"""The search history as data: the columns of ``history.csv``, how bits and schemes are
written in it, and the accuracy/cost front of any history.

A notebook reads a history with ``pandas.read_csv`` and nothing else; every function here
takes and returns plain DataFrames, so the same code serves a live search, a finished run
directory and ``haq compare``'s merged history.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from haq.costs import COST_FIELDS
from haq.scheme import QuantScheme

HISTORY_COLUMNS = [
    "trial", "method", "wall_s", "w_bits", "a_bits", "accuracy",
    "latency_ms", "energy_mj", "size_mib", "bops_g", "feasible", "reward", "quant",
    "status",  # "" = measured; "failed: <reason>" = the measurement failed (accuracy empty)
]
#: The columns every history has (histories written before ``status`` existed lack it).
REQUIRED_COLUMNS = HISTORY_COLUMNS[:12]


def bits_str(bits: Sequence[int] | np.ndarray) -> str:
    """Bits as the space-separated string of history.csv (layer order)."""
    return " ".join(str(int(b)) for b in bits)


def parse_bits_str(text: str) -> np.ndarray:
    """The inverse of :func:`bits_str`: an int64 array of shape ``(L,)``."""
    return np.array([int(t) for t in str(text).split()], dtype=np.int64)


def scheme_str(scheme: QuantScheme | None) -> str:
    """A scheme as history.csv's ``quant`` column ("" = the run's own scheme)."""
    if scheme is None:
        return ""
    d = scheme.to_dict()
    return " ".join(f"{k}={d[k]}" for k in ("weight", "activation", "calibration", "calibration_images") if k in d)


def pareto_mask(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True where no other point has lower-or-equal cost and higher-or-equal accuracy
    (strictly better in one). ``cost`` and ``accuracy`` have shape ``(n,)``."""
    n = len(cost)
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    mask = np.zeros(n, dtype=bool)
    best = -np.inf
    for i in order:
        if accuracy[i] > best:
            mask[i] = True
            best = accuracy[i]
    return mask


def pareto_front(history: pd.DataFrame, cost_key: str) -> pd.DataFrame:
    """The accuracy-vs-``cost_key`` front of a history DataFrame, sorted by cost."""
    col = COST_FIELDS[cost_key]
    h = history.dropna(subset=[col, "accuracy"])
    if h.empty:
        return h.copy()
    h = h.drop_duplicates(subset=[c for c in ("w_bits", "a_bits", "quant") if c in h])
    mask = pareto_mask(h[col].to_numpy(float), h["accuracy"].to_numpy(float))
    return h[mask].sort_values(col).reset_index(drop=True)


def read_history_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]], bool]:
    """``(header, rows, torn)`` of a history.csv: the rows up to the first that is not whole
    and valid (a line cut short by a crash or a full disk, a row with the wrong number of
    fields, a trial number out of sequence, bits that are not integers). ``torn`` says whether
    anything was dropped; a file without a valid header has no rows."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):
        return [], [], bool(text)
    header = next(csv.reader([lines[0]]))
    if header[: len(REQUIRED_COLUMNS)] != REQUIRED_COLUMNS or any(c not in HISTORY_COLUMNS for c in header):
        return [], [], True
    rows: list[dict[str, str]] = []
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        if not line.endswith("\n") or len(fields) != len(header):
            return header, rows, True
        row = dict(zip(header, fields, strict=True))
        try:
            ok = int(row["trial"]) == len(rows)
            parse_bits_str(row["w_bits"]), parse_bits_str(row["a_bits"])
            if row.get("status"):
                ok = ok and row["accuracy"] == ""
            else:
                ok = ok and math.isfinite(float(row["accuracy"]))
        except ValueError:
            ok = False
        if not ok:
            return header, rows, True
        rows.append(row)
    return header, rows, False


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """history.csv of a run (or a comparison) as a DataFrame - what a notebook does with
    ``pandas.read_csv`` - with a torn tail left out: the first line that is cut short or has
    another number of fields than the header, and everything after it. Every valid run
    directory reads; a history with only its header is an empty frame."""
    text = (Path(run_dir) / "history.csv").read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    width = len(next(csv.reader([lines[0]])))
    keep = [lines[0]]
    for line in lines[1:]:
        if not line.endswith("\n") or len(next(csv.reader([line]), [])) != width:
            break
        keep.append(line)
    return pd.read_csv(io.StringIO("".join(keep)))
