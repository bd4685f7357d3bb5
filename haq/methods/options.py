"""Method options: typed, documented dataclass fields, built from user input with one-line errors.

Each method's options are a frozen dataclass whose fields are declared with :func:`option`,
so the help ``haq list options`` prints comes from the field itself::

    @dataclass(frozen=True)
    class RandomOptions:
        batch_size: int = option(1, "policies drawn and measured together")

:func:`build_options` turns ``--option KEY=VALUE`` pairs, a config file's ``options`` table or
``haq.search(**kwargs)`` into an instance: unknown keys get the close matches, and every value
is checked against its field's type (an ``int`` field refuses ``"abc"`` and ``2.5``, a
``tuple[int, ...]`` field takes ``[300, 300]`` or ``"300,300"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from haq.errors import ConfigError, HaqError

T = TypeVar("T")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the one line ``haq list options`` shows."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help})


def option_help(cls: type) -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of every option of an options dataclass."""
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        rows.append((f.name, f.default, str(f.metadata.get("help", ""))))
    return rows


def build_options(cls: type[T], values: Mapping[str, Any], method: str) -> T:
    """An instance of options dataclass ``cls`` from user values (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=2)
            hint = f"did you mean {', '.join(close)}?" if close else f"its options are {', '.join(fields) or 'none'}"
            raise ConfigError(f"method {method} has no option {key!r}: {hint} (`haq list options`)")
        kwargs[key] = coerce(value, hints[key], f"{method} option {key}")
    try:
        return cls(**kwargs)
    except HaqError:
        raise
    except (TypeError, ValueError) as exc:  # a check inside the dataclass that is not ours
        raise ConfigError(f"{method} options: {exc}") from None


def coerce(value: Any, annotation: Any, what: str) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, tuples of them, ``X | None``), or a
    one-line :class:`ConfigError` naming ``what``, the value and the expected type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, what)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{what}={value!r} is invalid")
    if origin is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{what}={value!r} must be a list, e.g. [1, 2] or \"1,2\"")
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, what) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{what}={value!r} must be true or false")
    if annotation in (int, float):
        return _number(value, annotation, what)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what}={value!r} must be text")
        return value
    return value


def _number(value: Any, kind: type, what: str) -> int | float:
    """A finite number (an integer when ``kind`` is int) from a number or its text."""
    expected = "an integer" if kind is int else "a number"
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or (kind is int and math.isfinite(number) and not number.is_integer()):
        raise ConfigError(f"{what}={value!r} must be {expected}")
    if not math.isfinite(number):
        raise ConfigError(f"{what}={value!r} must be a finite number")
    return int(number) if kind is int else number
