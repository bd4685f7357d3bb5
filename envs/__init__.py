"""Gymnasium environments of haq (installed as ``haq.envs``).

Importing this package registers ``haq/MixedPrecision-v0`` and nothing heavier.
``gymnasium.make("haq/MixedPrecision-v0", model=..., hardware=..., budget=...)`` calls the
entry point :func:`haq.api.make_env`, which loads the model, data and hardware, builds the
search problem and its ledger, and returns a
:class:`~haq.envs.quantization_env.MixedPrecisionEnv`; the environment itself knows only the
problem and the ledger. ``gymnasium.make("haq.envs:haq/MixedPrecision-v0")`` imports this
package on the fly.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENV_ID = "haq/MixedPrecision-v0"
ENTRY_POINT = "haq.api:make_env"


def register_envs() -> None:
    """Register haq's environments with Gymnasium (idempotent)."""
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point=ENTRY_POINT)


register_envs()

__all__ = ["ENTRY_POINT", "ENV_ID", "register_envs"]
