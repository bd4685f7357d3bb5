"""A tiny name -> object registry with close-match suggestions.

Models, data sets, hardware models, search methods and calibrators are all looked up by
name from the CLI; one class keeps the behaviour identical for all of them: registering a
name twice raises, an unknown name lists the close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from haq.errors import ConfigError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and the one-line description `haq list` prints."""

    name: str
    obj: T
    summary: str


class Registry(Generic[T]):
    """Names to objects for one concept (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, summary: str = "") -> T:
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name")
        self._entries[name] = Entry(name, obj, summary)
        return obj

    def decorator(self, name: str, summary: str = "") -> Callable[[T], T]:
        """``@registry.decorator("name", "summary")`` registers the decorated object."""

        def wrap(obj: T) -> T:
            return self.register(name, obj, summary)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(self.names())}"
        return f"unknown {self.kind} {name!r}: {hint} (`haq list` shows them all)"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
