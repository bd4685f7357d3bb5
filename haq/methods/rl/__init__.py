"""``rl``: HAQ, a DDPG agent picks per-layer bits with the hardware cost in the loop.

* :mod:`.method` - the episode loop and its ``SPEC`` (the environment is
  :class:`haq.envs.quantization_env.MixedPrecisionEnv`).
* :mod:`.agent` - HAQ's DDPG, built from Stable-Baselines3's.
* :mod:`.checkpoint` - agent, replay buffer and loop state on disk; resume.
"""

from haq.methods.rl.method import DEFAULT_EPISODES, SPEC, RLOptions, SearchInterrupted, run_rl

__all__ = ["DEFAULT_EPISODES", "SPEC", "RLOptions", "SearchInterrupted", "run_rl"]
