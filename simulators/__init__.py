"""Hardware models: one protocol (:class:`HardwareModel`), one registry.

``get_hardware("bitfusion")`` returns a ready model; ``get_hardware("table:/path.csv")``
wraps a user's profile CSV. ``list_hardware()`` is what ``haq list hardware`` prints.
Each module registers its models when imported below.
"""

from __future__ import annotations

from collections.abc import Callable

from haq.registry import Registry
from haq.simulators.base import HardwareModel, check_policy_bits, round_up_bits, snap_bits

HARDWARE: Registry[Callable[[], HardwareModel]] = Registry("hardware")


def register_hardware(name: str, summary: str) -> Callable:
    """Decorator: register a zero-argument factory of a :class:`HardwareModel`."""
    return HARDWARE.decorator(name, summary)


def get_hardware(name: str) -> HardwareModel:
    """Build the hardware model ``name``; ``table:PATH`` reads a user profile CSV."""
    _load_builtin()
    if name.startswith("table:"):
        from haq.simulators.measured import TableHardware

        path = name[len("table:") :]
        if not path.strip() or "\x00" in path:
            from haq.errors import HardwareError

            raise HardwareError(f"hardware {name!r}: write table:PATH with the path of a profile CSV (haq profile writes one)")
        return TableHardware.from_csv(path)
    return HARDWARE.get(name)()


def list_hardware() -> list[tuple[str, str]]:
    _load_builtin()
    return [(e.name, e.summary) for e in HARDWARE.entries()] + [
        ("table:PATH", "any latency/energy profile CSV in the haq profile format")
    ]


_loaded = False


def _load_builtin() -> None:
    """Import the built-in model modules once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in ("bitfusion", "bismo", "measured"):
        importlib.import_module(f"haq.simulators.{mod}")


__all__ = [
    "HARDWARE",
    "HardwareModel",
    "check_policy_bits",
    "get_hardware",
    "list_hardware",
    "register_hardware",
    "round_up_bits",
    "snap_bits",
]
