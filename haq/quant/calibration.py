"""Activation statistics (collected once) and the calibrators that turn them into ranges.

:func:`collect_stats` runs the float model over the calibration images once and keeps, per
quantizable layer input: the global min/max (a ``torch.ao`` ``MinMaxObserver``), the
per-batch min/max (HAGO's ``avg_range``), and two 2048-bin histograms, of ``x`` over
[min, max] and of ``|x|`` over [0, max|x|]. Every calibrator then works from these
statistics alone, so switching calibrator or bitwidth never re-runs the model.

Calibrators (``QuantScheme.calibration``):

* ``minmax`` - the observed range.
* ``avg-minmax`` - mean over batches of per-batch min and max (HAGO's default).
* ``percentile:P`` - the P-th and (100-P)-th percentiles.
* ``entropy`` - TensorRT's KL-divergence threshold on the ``|x|`` histogram (exact zeros,
  which every grid represents, left out so ReLU's spike at 0 does not drag it down).
* ``mse`` - the clipping range that minimises the expected squared quantization error at
  the given bitwidth (searched over 100 candidates on the histogram).

``entropy`` and ``mse`` depend on the bitwidth; ranges are cached per (layer, bits).

The statistics are cached on disk (:func:`cached_stats`): one ``.npz`` (no pickles) per
(folded model weights, calibration images, layers), so a second process - a Ray worker, a
resumed search, the next test - reads them instead of re-running the model.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

from haq.atomic import atomic_write_bytes
from haq.cache import cache_dir
from haq.quant.quantizers import activation_params

HIST_BINS = 2048
STATS_VERSION = 1  #: bump when collect_stats changes what it computes


@dataclass
class ActivationStats:
    """Statistics of one layer's input over the calibration images."""

    min: float
    max: float
    batch_mins: np.ndarray  #: (n_batches,)
    batch_maxs: np.ndarray  #: (n_batches,)
    hist: np.ndarray  #: (HIST_BINS,) counts of x over [min, max]
    abs_hist: np.ndarray  #: (HIST_BINS,) counts of |x| over [0, max|x|], exact zeros left out

    @property
    def abs_max(self) -> float:
        return max(abs(self.min), abs(self.max))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.range": np.array([self.min, self.max]),
            f"{prefix}.batch_mins": self.batch_mins,
            f"{prefix}.batch_maxs": self.batch_maxs,
            f"{prefix}.hist": self.hist,
            f"{prefix}.abs_hist": self.abs_hist,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ActivationStats:
        lo, hi = arrays[f"{prefix}.range"]
        return cls(float(lo), float(hi), arrays[f"{prefix}.batch_mins"], arrays[f"{prefix}.batch_maxs"],
                   arrays[f"{prefix}.hist"], arrays[f"{prefix}.abs_hist"])


def collect_stats(
    model: nn.Module, layers: Sequence[nn.Module], images: torch.Tensor, batch_size: int = 256
) -> list[ActivationStats]:
    """Statistics of the input of each module in ``layers`` over ``images`` ``(N, C, H, W)``.

    Two passes over the images: ranges first, then histograms over those ranges.
    """
    n = len(layers)
    observers = [MinMaxObserver().to(images.device) for _ in range(n)]
    batch_mins: list[list[float]] = [[] for _ in range(n)]
    batch_maxs: list[list[float]] = [[] for _ in range(n)]
    hists = [np.zeros(HIST_BINS) for _ in range(n)]
    abs_hists = [np.zeros(HIST_BINS) for _ in range(n)]
    ranges: list[tuple[float, float]] = []
    pass_no = 0

    def hook(i: int):
        def fn(_m: nn.Module, inp: tuple) -> None:
            x = inp[0].detach().float()
            if pass_no == 0:
                observers[i](x)
                batch_mins[i].append(float(x.min()))
                batch_maxs[i].append(float(x.max()))
            else:
                lo, hi = ranges[i]
                hists[i] += torch.histc(x, HIST_BINS, lo, hi if hi > lo else lo + 1e-8).cpu().numpy()
                amax = max(abs(lo), abs(hi))
                nonzero = x[x != 0].abs()  # exact zeros (ReLU) are exact in any grid
                abs_hists[i] += torch.histc(nonzero, HIST_BINS, 0.0, amax if amax > 0 else 1e-8).cpu().numpy()

        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            for pass_no in (0, 1):
                if pass_no == 1:
                    # a layer its model bypasses (never called) has no statistics: (0, 0)
                    ranges = [(float(o.min_val), float(o.max_val)) if batch_mins[i] else (0.0, 0.0)
                              for i, o in enumerate(observers)]
                for start in range(0, len(images), batch_size):
                    model(images[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return [
        ActivationStats(lo, hi, np.array(batch_mins[i]), np.array(batch_maxs[i]), hists[i], abs_hists[i])
        for i, (lo, hi) in enumerate(ranges)
    ]


def stats_key(model: nn.Module, layer_names: Sequence[str], images: torch.Tensor) -> str:
    """Content key of the statistics of ``model`` (weights and buffers) on ``images``."""
    h = hashlib.sha256(f"v{STATS_VERSION}:{HIST_BINS}:{','.join(layer_names)}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(str((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_stats(
    model: nn.Module, layer_names: Sequence[str], images: torch.Tensor, device: torch.device | None = None
) -> tuple[list[ActivationStats], Literal["disk", "collected"]]:
    """Statistics of the inputs of ``layer_names`` (modules of ``model``) over ``images``,
    read from the on-disk cache when present, else collected (on ``device``, the CPU when
    None; ``model`` itself is not moved) and written there.

    Returns the statistics and where they came from. A cache file that cannot be read is
    recomputed and overwritten, never trusted.
    """
    path = cache_dir("calibration") / f"stats-{stats_key(model, layer_names, images)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            return [ActivationStats.from_arrays(arrays, f"l{i}") for i in range(len(layer_names))], "disk"
        except Exception:  # truncated, stale or foreign file: collect again
            pass
    if device is not None and device.type != "cpu":
        model, images = copy.deepcopy(model).to(device), images.to(device)
    modules = [model.get_submodule(n) for n in layer_names]
    stats = collect_stats(model, modules, images)
    arrays = {}
    for i, st in enumerate(stats):
        arrays.update(st.to_arrays(f"l{i}"))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return stats, "collected"


def calibrate(stats: ActivationStats, method: str, bits: int, mode: str) -> tuple[float, float]:
    """The (lo, hi) activation range chosen by ``method`` for ``bits`` under ``mode``."""
    if method == "minmax":
        return stats.min, stats.max
    if method == "avg-minmax":
        return float(stats.batch_mins.mean()), float(stats.batch_maxs.mean())
    if method.startswith("percentile:"):
        return _percentile_range(stats, float(method.split(":", 1)[1]))
    if method == "entropy":
        t = _kl_threshold(stats.abs_hist, stats.abs_max, _levels(stats, bits, mode))
        # the threshold is on |x|: clip it to each side's observed extent
        return (max(-t, stats.min) if stats.min < 0 else 0.0), min(t, stats.max)
    if method == "mse":
        return _mse_range(stats, bits, mode)
    raise ValueError(f"unknown calibrator {method!r}")  # QuantScheme validated it already


def _levels(stats: ActivationStats, bits: int, mode: str) -> int:
    """Quantization levels on the magnitude axis: 2^b for non-negative data, else 2^(b-1)."""
    signed = stats.min < 0 and mode != "unsigned"
    return 2 ** (bits - 1) if signed else 2**bits


def _bin_edges(lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi if hi > lo else lo + 1e-8, HIST_BINS + 1)


def _percentile_range(stats: ActivationStats, p: float) -> tuple[float, float]:
    total = stats.hist.sum()
    if total == 0:
        return stats.min, stats.max
    cdf = np.cumsum(stats.hist) / total
    edges = _bin_edges(stats.min, stats.max)
    hi = float(edges[min(int(np.searchsorted(cdf, p / 100.0)) + 1, HIST_BINS)])
    lo = float(edges[np.searchsorted(cdf, 1 - p / 100.0)]) if stats.min < 0 else stats.min
    return lo, hi


def _kl_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """TensorRT's entropy calibration: the |x| threshold whose quantized distribution (with
    ``levels`` bins) has the smallest KL divergence from the clipped reference."""
    if amax <= 0 or hist.sum() == 0:
        return amax
    levels = max(2, min(levels, HIST_BINS))
    width = amax / HIST_BINS
    best_i, best_kl = HIST_BINS, np.inf
    # TensorRT starts at 128 of 2048 bins for int8; keep that floor at lower bitwidths too,
    # where the KL of a few coarse bins is degenerate on discrete data.
    start = max(levels, HIST_BINS // 16)
    for i in range(start, HIST_BINS + 1, max(1, (HIST_BINS - start) // 256)):
        ref = hist[:i].astype(np.float64).copy()
        ref[i - 1] += hist[i:].sum()  # clipped mass goes to the last bin
        nz = hist[:i] > 0
        # quantize the first i bins into `levels` groups, spread each group's mass back
        # evenly over its non-zero bins
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        nonzero = np.bincount(group, weights=nz, minlength=levels)
        q = np.where(nz, mass[group] / np.maximum(nonzero[group], 1), 0.0)
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        sel = p > 0
        kl = float(np.sum(p[sel] * np.log(p[sel] / np.maximum(q[sel], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width


def _mse_range(stats: ActivationStats, bits: int, mode: str) -> tuple[float, float]:
    """Clip range minimising sum_bins count * (fakequant(center) - center)^2."""
    edges = _bin_edges(stats.min, stats.max)
    centers = (edges[:-1] + edges[1:]) / 2
    counts = stats.hist
    sel = counts > 0
    centers, counts = centers[sel], counts[sel]
    if len(centers) == 0:
        return stats.min, stats.max
    best, best_err = (stats.min, stats.max), np.inf
    for frac in np.linspace(0.05, 1.0, 100):
        lo, hi = stats.min * frac, stats.max * frac
        s, z, qmin, qmax = activation_params(lo, hi, bits, mode)
        q = (np.clip(np.round(centers / s) + z, qmin, qmax) - z) * s
        err = float(np.sum(counts * (q - centers) ** 2))
        if err < best_err:
            best_err, best = err, (lo, hi)
    return best
