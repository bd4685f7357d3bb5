"""Measured hardware models: a user's profile table, this CPU, and the H100 reference table.

| name | source of every number | bits |
|---|---|---|
| ``table:PATH`` | the CSV at PATH (:mod:`haq.simulators.profile_csv` format, or the GPU reference format) | the bit pairs the table has |
| ``cpu`` | this machine, timed per layer shape on first use and cached (:mod:`haq.simulators.profiling`) | 8, 32 |
| ``gpu-h100`` | ``profiles/h100_layer_latency.csv`` (one H100, ``shared/reference/measure_h100.py``); a fitted roofline for shapes it lacks | 8, 16, 32 (depthwise 16, 32) |

None of them models energy: their cost tables have ``energy_mj=None`` (a user table with an
``energy_mj`` column is the exception). Measured latencies are not monotone in bits (on the
H100, ``torch._int_mm`` at batch 1 is slower than fp16): a measured table is what was
measured, nothing is smoothed.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from haq.atomic import atomic_write_json, atomic_write_text
from haq.bits import slot
from haq.cache import cache_dir, content_key
from haq.costs import CostTable
from haq.errors import HardwareError
from haq.layers import LayerSpec
from haq.simulators import register_hardware
from haq.simulators.base import empty_table
from haq.simulators.gpu_reference import ReferenceGpuHardware, is_gpu_reference_format
from haq.simulators.profile_csv import (
    GEOMETRY_COLUMNS,
    Profile,
    bit_pairs,
    layer_label,
    read_profile,
    row_key,
    shape_key,
    write_profile,
)
from haq.simulators.profiling import (
    CPU_METHOD_DOC,
    CPU_METHOD_VERSION,
    SWITCH_COLUMNS,
    producers,
    profile_cpu,
    profile_switches,
    run_overhead_ns,
    switch_key,
)

# --------------------------------------------------------------------------- table:PATH


class TableHardware:
    """A hardware model that is a lookup table: ``get_hardware("table:PATH")``.

    Supported bits are those the table has, per layer kind; every bit pair the table has
    for a kind must be there for every layer of that kind, otherwise :meth:`cost_table`
    names the missing layer and pair. Pairs the table never has are NaN in the cost table.
    """

    float_fallback: bool

    def __init__(self, profile: Profile, name: str | None = None, summary: str | None = None) -> None:
        self.profile = profile
        self.name = name or f"table:{profile.source}"
        self.summary = summary or f"measured profile {profile.source}"
        self.description = profile.description or f"profile read from {profile.source}"
        rows = profile.rows
        self._pairs: dict[str, tuple[tuple[int, int], ...]] = {
            kind: tuple(bit_pairs(sub)) for kind, sub in rows.groupby("kind")
        }
        self._all_bits = tuple(sorted({b for pairs in self._pairs.values() for p in pairs for b in p}))
        self.float_fallback = 32 in self._all_bits
        self._batches = tuple(sorted(int(b) for b in rows["batch"].unique()))
        self._latency: dict[tuple, dict[tuple[int, int], float]] = {}
        self._energy: dict[tuple, dict[tuple[int, int], float]] = {}
        for rec in rows.to_dict("records"):
            key = row_key(rec, profile.keyed_by, profile.geometry)
            pair = (int(rec["w_bits"]), int(rec["a_bits"]))
            self._latency.setdefault(key, {})[pair] = float(rec["latency_ms"])
            if profile.has_energy:
                self._energy.setdefault(key, {})[pair] = float(rec["energy_mj"])

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> TableHardware | ReferenceGpuHardware:
        """Read a profile CSV (or a GPU reference-format CSV, see :class:`ReferenceGpuHardware`)."""
        if is_gpu_reference_format(path):
            return ReferenceGpuHardware(path, name=f"table:{path}")
        return cls(read_profile(path))

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        pairs = self._pairs.get(kind)
        if not pairs:
            return self._all_bits
        return tuple(sorted({b for p in pairs for b in p}))

    def bit_pairs(self, kind: str) -> tuple[tuple[int, int], ...]:
        """The (w_bits, a_bits) pairs the table has for layers of ``kind``."""
        return self._pairs.get(kind, ())

    def resolve_batch(self, batch: int | None) -> int:
        if batch is not None:
            return int(batch)
        if 1 in self._batches or len(self._batches) == 1:
            return 1 if 1 in self._batches else self._batches[0]
        raise HardwareError(
            f"{self.name} has batches {', '.join(map(str, self._batches))}; pass --batch to choose one"
        )

    def _key(self, layer: LayerSpec, batch: int) -> tuple:
        if self.profile.keyed_by == "layer":
            return (layer.name, batch)
        return shape_key(layer, batch, self.profile.geometry)

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        batch = self.resolve_batch(batch)
        lat = empty_table(len(layers))
        en = empty_table(len(layers)) if self.profile.has_energy else None
        for i, layer in enumerate(layers):
            key = self._key(layer, batch)
            measured = self._latency.get(key)
            if measured is None:
                raise HardwareError(
                    f"{self.name}: no row for {layer_label(layer, batch)}{self._key_hint(layer, batch)}; "
                    "add its rows or measure this model with `haq profile`"
                )
            for w, a in self._pairs.get(layer.kind, ()):
                if (w, a) not in measured:
                    raise HardwareError(
                        f"{self.name}: no row for {layer_label(layer, batch)} at w_bits={w} a_bits={a} "
                        f"(other {layer.kind} layers have it); add the row or drop that pair from the table"
                    )
                lat[i, slot(w), slot(a)] = measured[(w, a)]
                if en is not None:
                    en[i, slot(w), slot(a)] = self._energy[key][(w, a)]
        return CostTable(self.name, tuple(x.name for x in layers), lat, en, batch)

    def _key_hint(self, layer: LayerSpec, batch: int) -> str:
        if self.profile.keyed_by == "layer":
            return f" (the table is keyed by layer name; batches {', '.join(map(str, self._batches))})"
        if batch not in self._batches:
            return f" (the table has batches {', '.join(map(str, self._batches))})"
        if self.profile.geometry:
            geo = dict(zip(GEOMETRY_COLUMNS, shape_key(layer, batch, True)[6:], strict=True))
            return " with " + " ".join(f"{k}={v}" for k, v in geo.items())
        return ""


# --------------------------------------------------------------------------- cpu


def cpu_model_name() -> str:
    """The CPU model string of this machine (``model name`` in /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


class CpuProfileHardware:
    """``cpu``: real fp32 and int8 kernels of this machine, timed per layer shape.

    :meth:`cost_table` looks up the cached profile of this machine (key: CPU model string,
    ONNX Runtime version, thread count, batch, measurement method) and measures the layer shapes it
    lacks, so the first call for a new model profiles it (seconds) and later calls are a
    read. How each bit pair is timed, and why, is in :mod:`haq.simulators.profiling`.

    Args:
        threads: intra-op threads the layers run with (``None``: torch's current setting, by
            default the machine's cores).
        repeats: timed runs per layer shape and bit pair (the median is kept).
        warmup: untimed runs before timing.
        progress: ``progress(done, total, what)`` after each timed pass, for a CLI bar.
    """

    name = "cpu"
    summary = "this CPU: ONNX Runtime fp32 and int8 (QLinearConv) kernels timed per layer shape, cached"
    float_fallback = True

    def __init__(
        self,
        threads: int | None = None,
        repeats: int = 30,
        warmup: int = 3,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self.threads = int(threads or torch.get_num_threads())
        self.repeats = repeats
        self.warmup = warmup
        self.progress = progress
        self.measured_shapes = 0  #: layer shapes this instance has timed (cache misses)
        self.description = CPU_METHOD_DOC

    def supported_bits(self, kind: str) -> tuple[int, ...]:
        return (8, 32)

    def machine_key(self, batch: int) -> dict:
        return {
            "cpu": cpu_model_name(),
            "onnxruntime": _ort_version(),
            "threads": self.threads,
            "batch": int(batch),
            "method": CPU_METHOD_VERSION,
        }

    def profile_path(self, batch: int = 1) -> Path:
        """The cached profile CSV of this machine at ``batch`` (may not exist yet)."""
        return cache_dir("profiles") / f"cpu-{content_key(self.machine_key(batch))}.csv"

    def machine_description(self, batch: int) -> str:
        k = self.machine_key(batch)
        return (
            f"cpu: {k['cpu']}, {k['threads']} thread(s), onnxruntime {k['onnxruntime']} (CPU execution provider), "
            f"batch {k['batch']}, method {k['method']}\n"
            "measured by haq profile: median of timed runs in execution order, see haq.simulators.profiling"
        )

    def cost_table(self, layers: Sequence[LayerSpec], batch: int | None = None) -> CostTable:
        batch = int(batch or 1)
        path = self.profile_path(batch)
        cached = read_profile(path).rows if path.exists() else None
        known = set() if cached is None else {row_key(r, "shape", True) for r in cached.to_dict("records")}
        missing, seen = [], set()
        for layer in layers:
            key = shape_key(layer, batch, True)
            if key not in known and key not in seen:
                seen.add(key)
                missing.append(layer)
        if missing:
            new = profile_cpu(
                layers, batch=batch, repeats=self.repeats, warmup=self.warmup,
                threads=self.threads, progress=self.progress, only=missing,
            )  # fmt: skip
            self.measured_shapes += len(missing)
            cached = new if cached is None else pd.concat([cached, new], ignore_index=True)
            write_profile(cached, path, self.machine_description(batch))
        table = TableHardware(read_profile(path), name=self.name, summary=self.summary).cost_table(layers, batch)
        lat = table.latency_ms.copy()
        if len(layers):
            lat[0] += self.run_overhead_ms(batch)  # finite entries only change: NaN + x is NaN
        return CostTable(table.hardware, table.layer_names, lat, table.energy_mj, table.batch,
                         switch_ms=self.switch_ms(layers, batch), producer=producers(layers))

    def switch_path(self, batch: int = 1) -> Path:
        """The cached switch costs of this machine at ``batch``, beside the profile (the
        profile CSV keeps its format)."""
        return self.profile_path(batch).with_suffix(".switches.csv")

    def switch_ms(self, layers: Sequence[LayerSpec], batch: int = 1) -> np.ndarray:
        """``(L, 2)`` ms: each layer's input switched into / out of the integer domain
        (:func:`~haq.simulators.profiling.profile_switches`), measured for the input shapes
        the cache lacks and cached."""
        path = self.switch_path(batch)
        known = pd.DataFrame(columns=list(SWITCH_COLUMNS))
        if path.is_file():
            try:
                known = pd.read_csv(path)[list(SWITCH_COLUMNS)]
            except (ValueError, KeyError, pd.errors.ParserError):
                known = pd.DataFrame(columns=list(SWITCH_COLUMNS))  # a damaged cache is re-measured
        cached = {tuple(r[:-2]) for r in known.itertuples(index=False)}
        missing = [x for x in layers if switch_key(x, batch) not in cached]
        if missing:
            new = profile_switches(missing, batch, self.repeats, self.warmup, self.threads)
            known = new if not len(known) else pd.concat([known, new], ignore_index=True)
            atomic_write_text(path, known.to_csv(index=False))
        have = {tuple(r[:-2]): (r[-2], r[-1]) for r in known.itertuples(index=False)}
        return np.array([have[switch_key(x, batch)] for x in layers], dtype=np.float64).reshape(len(layers), 2)

    def run_overhead_ms(self, batch: int = 1) -> float:
        """The fixed cost of one ``InferenceSession.run`` on this machine (binding the input
        and output, starting the executor; ~6 us here), ms, measured once and cached beside
        the profile. The per-layer times exclude it (they are differences); a whole model
        pays it once, so the cost table charges it to the first layer."""
        path = self.profile_path(batch).with_suffix(".run.json")
        if path.is_file():
            try:
                return float(json.loads(path.read_text())["run_overhead_ms"])
            except (ValueError, KeyError, TypeError):
                pass
        ms = run_overhead_ns(self.threads) / 1e6
        atomic_write_json(path, {"run_overhead_ms": ms})
        return ms


@register_hardware("cpu", CpuProfileHardware.summary)
def _cpu() -> CpuProfileHardware:
    return CpuProfileHardware()


def profile_machine(
    hardware: str,
    layers: Sequence[LayerSpec],
    path: str | os.PathLike,
    batch: int = 1,
    threads: int | None = None,
    repeats: int = 30,
    model_name: str = "model",
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """What ``haq profile`` does: measure ``layers`` on this machine and write a profile CSV.

    ``hardware``: ``cpu`` (every layer shape at every :data:`~haq.simulators.profiling.
    CPU_PAIRS` pair, the profile format; use it with ``--hardware table:PATH``) or ``gpu``
    (the columns of ``measure_h100.py``; refused with one line where there is no CUDA).
    Always measures afresh; the ``cpu`` model's own cache is not touched.
    """
    if hardware == "cpu":
        hw = CpuProfileHardware(threads=threads, repeats=repeats)
        df = profile_cpu(layers, batch=batch, repeats=repeats, threads=hw.threads, progress=progress)
        return write_profile(df, path, hw.machine_description(batch))
    if hardware in ("gpu", "gpu-h100"):
        from haq.simulators.gpu_profiling import gpu_description, profile_gpu, write_gpu_profile

        df = profile_gpu(layers, batch=batch, model_name=model_name, progress=progress)
        return write_gpu_profile(df, path, gpu_description())
    raise HardwareError(
        f"haq profile measures 'cpu' or 'gpu', not {hardware!r}; pass --hardware cpu or --hardware gpu"
    )


# --------------------------------------------------------------------------- gpu-h100


@register_hardware(
    "gpu-h100", "NVIDIA H100 reference table (fp32/fp16/int8 GEMMs per layer shape) + fitted roofline"
)
def _gpu_h100() -> ReferenceGpuHardware:
    return ReferenceGpuHardware()
