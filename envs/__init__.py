"""Gymnasium environments of haq (installed as ``haq.envs``).

Importing this package registers ``haq/MixedPrecision-v0`` and nothing heavier: the
environment module (torch, the model zoo) loads only when the environment is made.
``gymnasium.make("haq.envs:haq/MixedPrecision-v0")`` imports it on the fly.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENV_ID = "haq/MixedPrecision-v0"
ENTRY_POINT = "haq.envs.quantization_env:MixedPrecisionEnv"


def register_envs() -> None:
    """Register haq's environments with Gymnasium (idempotent)."""
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point=ENTRY_POINT)


register_envs()

__all__ = ["ENTRY_POINT", "ENV_ID", "register_envs"]
