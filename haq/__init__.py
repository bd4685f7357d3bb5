"""haq: find the best per-layer bitwidths of a trained network for a given piece of hardware.

The library API::

    import haq
    result = haq.search(model="digits-mobilenet", hardware="bitfusion", budget="latency=0.7", method="rl")
    result.best_policy.save("policy.json")

``haq.search`` here is the function :func:`haq.api.search`; the search methods themselves
live in the sub-package ``haq.search`` (import from it with ``from haq.search import ...``).
Importing haq registers the Gymnasium environment ``haq/MixedPrecision-v0``.
"""

from __future__ import annotations

import haq.envs  # noqa: F401  (registers haq/MixedPrecision-v0)
import haq.search as _search_package  # noqa: F401  (load the sub-package before the name is rebound)
from haq.api import SearchConfig, Workspace, make_problem, prepare
from haq.api import search as search  # noqa: PLC0414 - the function shadows the sub-package name
from haq.budget import Budget, Cost
from haq.compare import compare
from haq.errors import HaqError
from haq.layers import LayerSpec, describe
from haq.policy import LayerBits, Policy, parse_policy
from haq.quant.scheme import QuantScheme
from haq.runs import read_history

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Cost",
    "HaqError",
    "LayerBits",
    "LayerSpec",
    "Policy",
    "QuantScheme",
    "SearchConfig",
    "Workspace",
    "compare",
    "describe",
    "make_problem",
    "parse_policy",
    "prepare",
    "read_history",
    "search",
]
