"""HAWQ-V3's released ILP rebuilt from its published inputs: the reproduction check.

``hawq_ilp_published.json`` (tests/data) holds, per model, the Hutchinson traces, weight
deltas, parameter counts, BOPs and T4 latencies that Zhen-Dong/HAWQ ``ILP.ipynb`` feeds its ILP,
and the configurations it shipped in ``bit_config.py``. Solving the same ILP with our
:class:`~haq.methods.hawq.ilp.MultipleChoiceIlp` must give the shipped configurations
(``benchmarks/hawq_cost.py``, ``tests/test_hawq.py``). Kept apart from the method itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from haq.errors import ConfigError
from haq.methods.hawq.ilp import BudgetRow, MultipleChoiceIlp

PUBLISHED_BITS = (4, 8)  #: option 0 = 4 bits, option 1 = 8 bits
_PUBLISHED_KINDS = ("modelsize", "bops", "latency")


def published_ilp(inputs: dict[str, Any], config: str) -> MultipleChoiceIlp:
    """The ILP of Zhen-Dong/HAWQ ``ILP.ipynb`` for one shipped configuration.

    ``inputs`` is one model of ``hawq_ilp_published.json`` (traces already divided by the
    parameter count, deltas ``||Q(W)-W||^2``, parameters in millions, bops = MACs/1e6,
    T4 latencies); ``config`` is ``{modelsize,bops,latency}_{alpha}``. The notebook's units:
    size ``params * b/8`` (its ``0.5 * x * params`` with x = 1 or 2), BOPs ``bops * (b/32)^2``
    (``bops/64`` at 4 bits, ``bops/16`` at 8), latency the measured int4/int8 table; budget
    ``cost(all-4) + alpha * (cost(all-8) - cost(all-4))``; ties force equal bits.
    """
    kind, _, alpha_text = config.rpartition("_")
    if kind not in _PUBLISHED_KINDS:
        raise ConfigError(f"published config {config!r}: use {{{','.join(_PUBLISHED_KINDS)}}}_ALPHA, e.g. bops_0.5")
    alpha = float(alpha_text)
    trace = np.asarray(inputs["Hutchinson_trace"], dtype=np.float64)
    d4 = np.asarray(inputs["delta_weights_4bit_square"], dtype=np.float64)
    d8 = np.asarray(inputs["delta_weights_8bit_square"], dtype=np.float64)
    params = np.asarray(inputs["parameters"], dtype=np.float64)
    bops = np.asarray(inputs["bops"], dtype=np.float64)
    table = {
        "modelsize": np.stack([params * 4 / 8, params * 8 / 8], axis=1),
        "bops": np.stack([bops * (4 / 32) ** 2, bops * (8 / 32) ** 2], axis=1),
        "latency": np.stack([inputs["latency_int4"], inputs["latency_int8"]], axis=1).astype(np.float64),
    }[kind]
    low, high = table[:, 0].sum(), table[:, 1].sum()
    return MultipleChoiceIlp(
        np.stack([trace * d4, trace * d8], axis=1),
        [BudgetRow(kind, table, float(low + alpha * (high - low)))],
        ties=[(int(i), int(j)) for i, j in inputs["ties"]],
        labels=np.broadcast_to(np.array(PUBLISHED_BITS), (len(trace), 2)),
    )


def published_objective(inputs: dict[str, Any], bits: np.ndarray) -> float:
    """The notebook's objective ``sum trace_i * (d8_i - d4_i) * [bits_i == 8]`` (lower is better)."""
    trace = np.asarray(inputs["Hutchinson_trace"], dtype=np.float64)
    diff = np.asarray(inputs["delta_weights_8bit_square"]) - np.asarray(inputs["delta_weights_4bit_square"])
    return float((trace * diff * (np.asarray(bits) == 8)).sum())
