"""Search methods: one registry, one problem type, one result type.

Each built-in method lives in its own module or folder, named as the CLI names it
(``rl``, ``hawq``, ``hago``, ``quantune``, ``pareto``, ``uniform``, ``random``), and exposes
its :class:`~haq.methods.base.MethodSpec` as ``SPEC``; the registry imports a method's module
the first time it is asked for it. :func:`register_method` adds your own.
"""

from __future__ import annotations

import importlib

from haq.methods.base import MethodSpec, SearchResult, run_method
from haq.methods.options import build_options, option_help
from haq.registry import Registry

#: Built-in methods and the module that defines each one's ``SPEC``.
BUILTIN = {
    "rl": "haq.methods.rl",
    "hawq": "haq.methods.hawq",
    "hago": "haq.methods.hago",
    "quantune": "haq.methods.quantune",
    "pareto": "haq.methods.pareto",
    "uniform": "haq.methods.uniform",
    "random": "haq.methods.random",
}

METHODS: Registry[MethodSpec] = Registry("search method")
_loaded = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a method under ``spec.name`` (twice raises)."""
    _load()
    return METHODS.register(spec.name, spec, spec.summary)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN.values():
        spec: MethodSpec = importlib.import_module(module).SPEC
        METHODS.register(spec.name, spec, spec.summary)


def get_method(name: str) -> MethodSpec:
    _load()
    return METHODS.get(name)


def list_methods() -> list[tuple[str, str]]:
    _load()
    return [(e.name, e.summary) for e in METHODS.entries()]


def list_method_options() -> list[tuple[str, str]]:
    """Every method's options as ``("method.option", "default - what it does")`` rows, from
    the options dataclasses' field metadata, for ``haq list options`` (set them with
    ``--option KEY=VALUE``)."""
    _load()
    rows = []
    for e in METHODS.entries():
        for name, default, text in option_help(e.obj.options_type):
            rows.append((f"{e.name}.{name}", f"{default!r} - {text}".rstrip(" -")))
    return rows


__all__ = [
    "BUILTIN",
    "METHODS",
    "MethodSpec",
    "SearchResult",
    "build_options",
    "get_method",
    "list_method_options",
    "list_methods",
    "register_method",
    "run_method",
]
