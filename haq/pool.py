"""Evaluation pools: where the accuracies of a batch of proposals are measured.

The ledger (:mod:`haq.ledger`) hands each batch of policies it has to measure to a pool and
commits the results in proposal order, so a result never depends on which pool measured it.

* :class:`InProcessPool` - the default: this process's evaluator, one policy after another.
* :class:`haq.ray_pool.RayPool` - Ray actors, from a laptop (``workers=N`` starts a local
  Ray) to a cluster (``address=``), one code path. ``pip install 'haq[ray]'``.

Results never depend on the pool: every worker builds the same evaluator from the same
state and the ledger commits in proposal order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from haq.problem import Measures
from haq.scheme import QuantScheme

Item = tuple[np.ndarray, np.ndarray, QuantScheme]  #: (w_bits (L,), a_bits (L,), scheme)


class EvaluationPool(Protocol):
    """Measures validation accuracies of policies, in order."""

    def measure(self, items: Sequence[Item], split: str = "val") -> Iterator[float]:
        """Top-1 accuracy in [0, 1] of each item, yielded in the order of ``items`` as soon as
        it and every earlier one are known (so the ledger commits them one by one)."""
        ...

    def close(self) -> None:
        """Release workers (nothing for the in-process pool)."""
        ...


class InProcessPool:
    """Measures on this process's evaluator, one policy after another (no extra memory)."""

    workers = 1

    def __init__(self, evaluator: Measures) -> None:
        self.evaluator = evaluator

    def measure(self, items: Sequence[Item], split: str = "val") -> Iterator[float]:
        for item in items:
            yield self.evaluator.accuracies([item], split)[0]

    def close(self) -> None:
        pass
