"""The one small error hierarchy of haq.

Every error a user can cause derives from :class:`HaqError`. Its message is one line that
says what was expected, what was received and how to fix it; the CLI prints exactly that
line and exits with code 2, never a traceback.
"""

from __future__ import annotations


class HaqError(Exception):
    """Base of every user-facing error: one actionable line, CLI exit code 2.

    The line stays one line whatever the user typed: control characters in the message (a
    newline or NUL inside a name or path echoed back) are shown escaped, as ``repr`` would.
    """

    exit_code = 2

    def __str__(self) -> str:
        text = super().__str__()
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class ConfigError(HaqError):
    """An argument, option or config value is malformed or out of range."""


class UnknownNameError(HaqError):
    """A registry lookup failed (model, data, hardware, method, calibrator, layer)."""


class PolicyError(HaqError):
    """A policy file or shorthand is malformed or does not fit the model or hardware."""


class BudgetError(HaqError):
    """A budget is malformed, uses an unknown key, or cannot be met."""


class HardwareError(HaqError):
    """A hardware model cannot cost a layer or bit pair, or a profile is malformed."""


class DataError(HaqError):
    """A data set is missing, empty, unreadable or of the wrong shape."""


class ModelError(HaqError):
    """A model cannot be built or its weights do not fit it."""


class SearchError(HaqError):
    """A search cannot start or had to stop (NaN accuracy, evaluation limit too low)."""


class RunDirError(HaqError):
    """A run directory is locked, from another configuration, or its checkpoint is unusable."""


class StorageError(HaqError):
    """A file cannot be written: the disk is full (or read-only). What was written stays valid."""
