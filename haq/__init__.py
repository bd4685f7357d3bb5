"""haq: find the best per-layer bitwidths of a trained network for a given piece of hardware.

The library API::

    import haq
    result = haq.search(model="digits-mobilenet", hardware="bitfusion", budget="latency=0.7", method="rl")
    result.best_policy.save("policy.json")

Data flows one way (each layer imports only those below it; ``lint-imports`` checks it):
model and data (:mod:`haq.models`, :mod:`haq.data`) -> layer descriptions
(:mod:`haq.layers`) -> evaluator (:mod:`haq.quant`) and hardware costs (:mod:`haq.simulators`)
-> the frozen problem and the run's ledger (:mod:`haq.problem`, :mod:`haq.ledger`) -> the
methods (:mod:`haq.methods`) -> orchestration (:mod:`haq.api`, :mod:`haq.compare`) -> run
directories and the CLI. Importing haq registers the Gymnasium environment
``haq/MixedPrecision-v0``.
"""

from __future__ import annotations

import haq.envs  # noqa: F401  (registers haq/MixedPrecision-v0)
from haq.api import Workspace, make_problem, prepare, search
from haq.budget import Budget
from haq.compare import compare
from haq.config import SearchConfig
from haq.costs import Cost
from haq.deploy import export
from haq.errors import HaqError
from haq.history import read_history
from haq.layers import LayerSpec, describe
from haq.ledger import Ledger
from haq.methods import SearchResult
from haq.policy import LayerBits, Policy, parse_policy
from haq.problem import Proposal, SearchProblem, Trial
from haq.scheme import QuantScheme

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Cost",
    "HaqError",
    "LayerBits",
    "LayerSpec",
    "Ledger",
    "Policy",
    "Proposal",
    "QuantScheme",
    "SearchConfig",
    "SearchProblem",
    "SearchResult",
    "Trial",
    "Workspace",
    "compare",
    "describe",
    "export",
    "make_problem",
    "parse_policy",
    "prepare",
    "read_history",
    "search",
]
