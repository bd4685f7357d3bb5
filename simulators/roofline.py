"""A roofline fitted to measured GPU layer timings: the fallback for shapes a table lacks.

Per precision and layer family, ``t = max(flops / peak, bytes / bandwidth) + overhead``
(milliseconds), with ``peak``, ``bandwidth`` and ``overhead`` fitted by least squares on
``log t`` so that a 7 µs layer and a 7 ms layer weigh the same. The work of a GEMM layer
is counted on the shape the reference script actually timed (``shared/reference/
measure_h100.py`` pads M, K, N to multiples of 16 and M to at least 32)::

    flops = 2*Mp*Kp*Np
    bytes = in_bytes*(Mp*Kp + Kp*Np) + out_bytes*Mp*Np     # int8 GEMMs write int32

Depthwise layers are timed as the real conv module (no GEMM): ``flops = 2*M*K*N`` and
``bytes = elt*(2*M*N + K*N)`` (input about the size of the output, plus the weights).
:func:`holdout_errors` reports how well the fit predicts shapes it has not seen (k-fold,
folds split by distinct shape so a repeated layer never sits on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from haq.errors import HardwareError

#: bytes per input element and per output element of each precision's GEMM
ELEMENT_BYTES: dict[str, tuple[int, int]] = {"fp32": (4, 4), "fp16": (2, 2), "int8": (1, 4)}
FAMILIES: tuple[str, ...] = ("gemm", "depthwise")


def _pad(x: np.ndarray, k: int = 16) -> np.ndarray:
    return (x + k - 1) // k * k


def work(family: str, precision: str, shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLOPs, bytes moved and reduction depth of layers with GEMM shapes ``shapes`` (rows of M, K, N, groups)."""
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 4)
    m, k, n = shapes[:, 0], shapes[:, 1], shapes[:, 2]
    e_in, e_out = ELEMENT_BYTES[precision]
    if family == "gemm":
        mp, kp, np_ = np.maximum(_pad(m), 32), _pad(k), _pad(n)
        return 2 * mp * kp * np_, e_in * (mp * kp + kp * np_) + e_out * mp * np_, kp
    return 2 * m * k * n, e_in * (2 * m * n + k * n), k


@dataclass(frozen=True)
class Roofline:
    """A fitted roofline for one precision and layer family.

    Example: ``Roofline("fp16", "gemm", peak_tflops=310.0, bandwidth_gbs=2100.0,
    overhead_ms=0.006, n_rows=170)``.
    """

    precision: str  #: fp32 | fp16 | int8
    family: str  #: gemm (conv and linear, lowered) | depthwise (real conv module)
    peak_tflops: float  #: fitted compute roof, 10^12 FLOP/s
    bandwidth_gbs: float  #: fitted memory roof, 10^9 bytes/s
    depth_per_us: float  #: fitted reduction roof: K elements one thread block walks per µs
    overhead_ms: float  #: fitted fixed cost per layer (launch, sync), ms
    n_rows: int  #: measurements the fit used

    def predict_ms(self, shapes: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of layers with GEMM shapes ``shapes`` (rows of M, K, N, groups)."""
        theta = np.log(
            [self.peak_tflops * 1e9, self.bandwidth_gbs * 1e6, self.depth_per_us * 1e3, self.overhead_ms]
        )
        return _model(theta, *work(self.family, self.precision, shapes))


def _model(theta: np.ndarray, flops: np.ndarray, nbytes: np.ndarray, depth: np.ndarray) -> np.ndarray:
    # theta = log(FLOP per ms), log(bytes per ms), log(K per ms), log(overhead ms)
    peak, bw, rate, over = np.exp(theta)
    return np.maximum(np.maximum(flops / peak, nbytes / bw), depth / rate) + over


def fit_roofline(family: str, precision: str, shapes: np.ndarray, times_ms: np.ndarray) -> Roofline:
    """Fit ``peak``, ``bandwidth`` and ``overhead`` to measured ``times_ms`` (NaNs skipped)."""
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 4)
    times_ms = np.asarray(times_ms, dtype=np.float64)
    ok = np.isfinite(times_ms) & (times_ms > 0)
    if ok.sum() < 3:
        raise HardwareError(
            f"cannot fit a {precision} {family} roofline from {int(ok.sum())} timings; the table needs at least 3"
        )
    shapes, times_ms = shapes[ok], times_ms[ok]
    flops, nbytes, depth = work(family, precision, shapes)
    log_t = np.log(times_ms)
    theta0 = np.log(
        [
            np.max(flops / times_ms),
            np.max(nbytes / times_ms),
            np.max(depth / times_ms),
            0.8 * np.min(times_ms),
        ]
    )
    fit = least_squares(lambda th: np.log(_model(th, flops, nbytes, depth)) - log_t, theta0, method="trf")
    peak, bw, rate, over = np.exp(fit.x)
    return Roofline(precision, family, peak / 1e9, bw / 1e6, rate / 1e3, over, int(ok.sum()))


def holdout_errors(
    family: str, precision: str, shapes: np.ndarray, times_ms: np.ndarray, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Relative error ``|pred - t| / t`` of every finite timing, predicted by a fit without its shape.

    Distinct shapes are dealt into ``folds`` groups (seeded); each group is predicted by a
    roofline fitted on the others.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 4)
    times_ms = np.asarray(times_ms, dtype=np.float64)
    ok = np.isfinite(times_ms) & (times_ms > 0)
    shapes, times_ms = shapes[ok], times_ms[ok]
    uniq, group = np.unique(shapes, axis=0, return_inverse=True)
    fold_of_shape = np.random.default_rng(seed).permutation(len(uniq)) % folds
    fold = fold_of_shape[group.ravel()]
    errors = np.empty(len(times_ms))
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        model = fit_roofline(family, precision, shapes[~test], times_ms[~test])
        errors[test] = np.abs(model.predict_ms(shapes[test]) - times_ms[test]) / times_ms[test]
    return errors


def summarize_errors(errors: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile and max of relative errors, and the row count."""
    e = np.asarray(errors, dtype=np.float64)
    return {
        "median": float(np.median(e)),
        "p90": float(np.quantile(e, 0.9)),
        "max": float(e.max()),
        "n": int(len(e)),
    }
