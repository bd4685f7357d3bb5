"""How sure an accuracy is: the 95 % Wilson score interval of a proportion.

A validation split of a few hundred images makes "the best of 300 evaluations" mostly noise;
every accuracy haq reports therefore carries its split size ``n`` and this interval, and two
policies whose intervals overlap are called "within noise" of each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

Z95 = 1.959963984540054  #: two-sided 95 % normal quantile


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """``(low, high)`` in [0, 1] of a proportion ``accuracy`` observed on ``n`` images.

    >>> [round(x, 4) for x in wilson_interval(0.99, 360)]
    [0.9734, 0.9963]
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(float(accuracy), 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def within_noise(a: float, b: float, n_a: int, n_b: int | None = None) -> bool:
    """Whether accuracies ``a`` (on ``n_a`` images) and ``b`` (on ``n_b``, default ``n_a``)
    have overlapping 95 % intervals."""
    lo_a, hi_a = wilson_interval(a, n_a)
    lo_b, hi_b = wilson_interval(b, n_b if n_b is not None else n_a)
    return lo_a <= hi_b and lo_b <= hi_a


def resolvable_difference(accuracy: float, n: int) -> float:
    """The half-width of the 95 % interval at ``accuracy`` on ``n`` images, in [0, 1]: a
    smaller difference between two policies is not told apart by this split."""
    lo, hi = wilson_interval(accuracy, n)
    return (hi - lo) / 2


def standard_error(accuracy: float, n: int) -> float:
    """One standard error of ``accuracy`` on ``n`` images, in [0, 1]: the Wilson interval's
    half-width over z (so it never collapses to 0 at 0 % or 100 %, where it is about one image).

    >>> round(standard_error(0.978, 359) * 359, 1)  # images
    2.9
    """
    return resolvable_difference(accuracy, n) / Z95


def accuracy_text(metrics: Mapping[str, Any], name: str = "accuracy") -> str:
    """``metrics[name]`` as ``97.22% [95.0-98.5, n=360]`` (95 % Wilson interval and split size),
    from a policy's metrics; ``n/a`` when missing."""
    acc = metrics.get(name)
    if acc is None:
        return "n/a"
    lo, hi, n = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high"), metrics.get(f"{name}_n")
    if lo is None or hi is None or not n:
        return f"{100 * float(acc):.2f}%"
    return f"{100 * float(acc):.2f}% [{100 * float(lo):.1f}-{100 * float(hi):.1f}, n={int(n)}]"
