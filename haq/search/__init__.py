"""Search methods: one registry, one problem type, one result type.

Each method lives in its own module and registers a :class:`MethodSpec` when imported;
:func:`get_method` imports them all on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

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


def _field_notes(cls: type) -> dict[str, str]:
    """One line per option: the ``#:`` comment after a field, else its entry under the
    docstring's ``Attributes:`` (both styles are in use)."""
    notes: dict[str, str] = {}
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" in doc:
        for name, text in re.findall(r"^    (\w+): (.+(?:\n        .+)*)", doc.split("Attributes:", 1)[1], flags=re.M):
            notes[name] = " ".join(text.split())
    notes.update(re.findall(r"^\s+(\w+)\s*:[^\n]*?#:\s*(.+)$", inspect.getsource(cls), flags=re.M))
    return notes


def list_method_options() -> list[tuple[str, str]]:
    """Every method's options as ``("method.option", "default - what it does")`` rows, read from
    the options dataclasses, for ``haq list options`` (set them with ``--option KEY=VALUE``)."""
    _load()
    rows = []
    for e in METHODS.entries():
        cls = e.obj.options_type
        notes = _field_notes(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            rows.append((f"{e.name}.{f.name}", f"{default!r} - {notes.get(f.name, '')}".rstrip(" -")))
    return rows


__all__ = [
    "EvaluationLimitReached",
    "METHODS",
    "MethodSpec",
    "SearchProblem",
    "SearchResult",
    "Trial",
    "get_method",
    "list_method_options",
    "list_methods",
    "pareto_front",
    "register_method",
    "run_method",
]
