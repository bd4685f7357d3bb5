"""The bitwidth vocabulary shared by policies, hardware tables and searchers.

A bitwidth is an integer: 1-8 are integer (fake-)quantized, 16 is a half-precision float
(only GPUs offer it) and 32 means "left in float". Hardware cost tables are indexed by
*slot*, not by bits, so that a ``[L, 10, 10]`` table covers every bitwidth a policy can
name::

    bits: 1 2 3 4 5 6 7 8 16 32
    slot: 0 1 2 3 4 5 6 7  8  9
"""

from __future__ import annotations

import numpy as np

from haq.errors import PolicyError

FLOAT_BITS = 32
HALF_BITS = 16
INT_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
ALL_BITS: tuple[int, ...] = (*INT_BITS, HALF_BITS, FLOAT_BITS)
NUM_SLOTS = len(ALL_BITS)

# bits -> slot lookup as an array so a whole policy converts in one gather.
_SLOT_OF = np.full(FLOAT_BITS + 1, -1, dtype=np.int64)
for _slot, _bits in enumerate(ALL_BITS):
    _SLOT_OF[_bits] = _slot


def is_valid_bits(bits: int) -> bool:
    return isinstance(bits, (int, np.integer)) and int(bits) in ALL_BITS


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` as int or raise a one-line :class:`PolicyError`."""
    if isinstance(bits, bool) or not is_valid_bits(bits):
        shown = repr(bits) if not isinstance(bits, int) or abs(bits) < 10**12 else "a huge integer"
        raise PolicyError(f"{what}={shown[:40]} is not a bitwidth: use 1-8 (integer), 16 or 32 (float)")
    return int(bits)


def slot(bits: int) -> int:
    """Table slot of one bitwidth (see module docstring)."""
    return int(_SLOT_OF[check_bits(bits)])


def slots(bits: np.ndarray) -> np.ndarray:
    """Table slots of an int array of bitwidths (no validation: the hot path)."""
    return _SLOT_OF[np.asarray(bits, dtype=np.int64)]
