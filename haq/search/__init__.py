"""Search methods: one registry, one problem type, one result type.

Each method lives in its own module and registers a :class:`MethodSpec` when imported;
:func:`get_method` imports them all on first use.
"""

from __future__ import annotations

import importlib

from haq.registry import Registry
from haq.search.base import (
    EvaluationLimitReached,
    MethodSpec,
    SearchProblem,
    SearchResult,
    Trial,
    pareto_front,
    run_method,
)

METHODS: Registry[MethodSpec] = Registry("search method")
_MODULES = ("rl", "hawq", "hago", "quantune", "baselines", "multiobjective")
_loaded = False


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.register(spec.name, spec, spec.summary)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODULES:
        importlib.import_module(f"haq.search.{mod}")


def get_method(name: str) -> MethodSpec:
    _load()
    return METHODS.get(name)


def list_methods() -> list[tuple[str, str]]:
    _load()
    return [(e.name, e.summary) for e in METHODS.entries()]


__all__ = [
    "EvaluationLimitReached",
    "METHODS",
    "MethodSpec",
    "SearchProblem",
    "SearchResult",
    "Trial",
    "get_method",
    "list_methods",
    "pareto_front",
    "register_method",
    "run_method",
]
