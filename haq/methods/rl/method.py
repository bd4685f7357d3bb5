"""HAQ: reinforcement-learning search with DDPG, hardware cost in the loop (design §7.1).

Source: mit-han-lab/haq ``rl_quantize.py`` (the episode loop), ``lib/rl/ddpg.py`` (the agent,
here :mod:`haq.methods.rl.agent`), ``lib/env/linear_quantize_env.py`` (the environment, here
:class:`haq.envs.quantization_env.MixedPrecisionEnv`).

One episode = one policy = one evaluation: the agent picks weight then activation bits for
every layer, the environment lowers the policy to the budget, measures it and returns the
reward. Warm-up episodes act uniformly at random; later ones sample a truncated normal
around the actor's action whose width decays per episode. At the end of an episode its
transitions enter the replay buffer with the final reward, each followed by one gradient
step. The best policy is the most accurate feasible one (= highest reward), re-measured on
the test split by :func:`haq.methods.base.run_method`.

With ``--max-accuracy-drop`` (the cheapest policy within a drop) the episodes run in stages
under tighter and tighter budgets, bisecting for the cheapest budget that still admits a
policy within the drop (:mod:`haq.methods.budgets`); the agent keeps learning across stages.

``episodes_per_update`` > 1 plays that many episodes with the same actor (no learning between
them), measures their policies as one batch (several workers at once, with an evaluation
pool), then learns from each in order. The default, 1, is HAQ's loop.

Differences from the reference loop, all deliberate: warm-up is episodes ``0 ..
warmup-1`` (the reference's ``episode <= warmup`` acts randomly for ``warmup + 1`` episodes and
its sigma starts at ``0.5 * 0.99``); no dummy transition is appended after each episode (the
reference's sequential memory needs one to give the last step a next state, SB3's buffer
stores next states); the reward is held-out accuracy without finetuning (see the
environment).

Checkpoints (:mod:`haq.methods.rl.checkpoint`) are written every ``checkpoint_every``
episodes, at the end, and when the search is interrupted. Resuming rebuilds the agent from
the seed, loads the checkpoint, re-enters the episodes before it from ``history.csv`` without
re-measuring them, and continues: the result equals an uninterrupted run with the same seed.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from haq.errors import ConfigError, SearchError
from haq.ledger import Ledger
from haq.methods.base import MethodSpec
from haq.methods.budgets import current_stage
from haq.methods.options import option
from haq.methods.rl.agent import HAQDDPG, Transition, exploration_sigma, truncated_normal
from haq.methods.rl.checkpoint import restore, save_checkpoint
from haq.problem import Proposal, SearchProblem

#: Episodes (= evaluations) of an RL search when none are given: the embedded 8x8 models
#: converge well within it; HAQ ran 600 on ImageNet models (``--episodes 600``).
DEFAULT_EPISODES = 300


@dataclass(frozen=True)
class RLOptions:
    """Options of the ``rl`` method; defaults are HAQ's (``rl_quantize.py`` arguments).

    The number of episodes is the problem's ``max_evaluations`` (``--episodes``, default
    :data:`DEFAULT_EPISODES`).
    """

    warmup_episodes: int = option(20, "episodes of uniform random actions before learning (HAQ --warmup 20)")
    hidden: tuple[int, ...] = option((300, 300), "hidden widths of actor and critic (HAQ --hidden1/2 300)")
    actor_lr: float = option(1e-4, "Adam learning rate of the actor (HAQ --lr_a)")
    critic_lr: float = option(1e-3, "Adam learning rate of the critic (HAQ --lr_c)")
    tau: float = option(0.01, "Polyak coefficient of the target networks (HAQ --tau)")
    gamma: float = option(1.0, "discount per step (HAQ --discount)")
    batch_size: int = option(64, "transitions per gradient step (HAQ --bsize)")
    replay_per_layer: int = option(128, "replay capacity in transitions per quantizable layer (HAQ --rmsize)")
    sigma_init: float = option(0.5, "exploration width at the first learned episode (HAQ --init_delta)")
    sigma_decay: float = option(0.99, "per-episode decay of the exploration width (HAQ --delta_decay)")
    baseline_alpha: float = option(0.5, "rate of the moving-average reward baseline (HAQ moving_alpha)")
    reward_scale: float = option(0.1, "reward per percent point of accuracy change vs fp32 (HAQ 0.1)")
    episodes_per_update: int = option(1, "episodes played with one actor and measured as one batch before learning (1 = HAQ)")
    checkpoint_every: int = option(10, "episodes between checkpoints; 0 = only at the end and on interrupt")
    tensorboard_dir: str | None = option(None, "folder for TensorBoard event files (SB3 logger); None = off")
    device: str = option("cpu", "torch device of the agent's networks")
    agent_threads: int | None = option(1, "torch threads while the agent computes (tiny nets); None = unchanged")
    fused_adam: bool = option(True, "Adam's fused kernel (same update, ~20% faster agent; last-bit float differences "
                                    "from torch's per-tensor Adam, so set false to reproduce older runs)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        checks = [
            ("warmup_episodes", self.warmup_episodes >= 0, "an integer >= 0"),
            ("hidden", len(self.hidden) >= 1 and min(self.hidden) >= 1, "one or more widths >= 1"),
            ("actor_lr", self.actor_lr > 0, "> 0"),
            ("critic_lr", self.critic_lr > 0, "> 0"),
            ("tau", 0 < self.tau <= 1, "in (0, 1]"),
            ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("replay_per_layer", self.replay_per_layer >= 2, "an integer >= 2"),
            ("sigma_init", self.sigma_init >= 0, ">= 0"),
            ("sigma_decay", 0 < self.sigma_decay <= 1, "in (0, 1]"),
            ("baseline_alpha", 0 <= self.baseline_alpha <= 1, "in [0, 1]"),
            ("reward_scale", self.reward_scale > 0, "> 0"),
            ("episodes_per_update", self.episodes_per_update >= 1, "an integer >= 1"),
            ("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0 (0: only at the end)"),
            ("agent_threads", self.agent_threads is None or self.agent_threads >= 1, "None or an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"rl option {name}={getattr(self, name)!r} is invalid: expected {expected}")

    def agent_kwargs(self) -> dict[str, Any]:
        return dict(hidden=self.hidden, actor_lr=self.actor_lr, critic_lr=self.critic_lr, tau=self.tau,
                    gamma=self.gamma, batch_size=self.batch_size, replay_per_layer=self.replay_per_layer,
                    baseline_alpha=self.baseline_alpha, device=self.device, threads=self.agent_threads,
                    fused_adam=self.fused_adam)


class SearchInterrupted(KeyboardInterrupt):
    """The search stopped on SIGINT/SIGTERM after saving its checkpoint (``signum`` says which)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def build_agent(env: Any, n_layers: int, options: RLOptions, rng: np.random.Generator) -> HAQDDPG:
    """The agent of a search, initialised from the search's generator only (the global
    torch RNG is left as it was)."""
    torch_seed = int(rng.integers(2**31 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        return HAQDDPG(env, n_layers, rng, **options.agent_kwargs())


def play_episode(env: Any, agent: HAQDDPG, rng: np.random.Generator, episode: int, options: RLOptions,
                 clock: dict[str, float] | None = None) -> tuple[list[Transition], float, dict[str, Any]]:
    """One episode: uniform random actions during warm-up, then a truncated normal around
    the actor's action. Returns the transitions, the final reward and the final ``info``;
    adds the seconds spent choosing actions to ``clock["acting_s"]``."""
    obs, _ = env.reset()
    learned = episode >= options.warmup_episodes
    sigma = exploration_sigma(episode, options.warmup_episodes, options.sigma_init, options.sigma_decay)
    transitions: list[Transition] = []
    while True:
        t0 = time.perf_counter()
        a = truncated_normal(agent.mu(obs), sigma, rng) if learned else float(rng.uniform(0.0, 1.0))
        action = np.array([a], dtype=np.float32)
        if clock is not None:
            clock["acting_s"] = clock.get("acting_s", 0.0) + time.perf_counter() - t0
        next_obs, reward, terminated, truncated, info = env.step(action)
        transitions.append(Transition(obs, action, next_obs, bool(terminated)))
        obs = next_obs
        if terminated or truncated:
            return transitions, float(reward), info


# ----- interrupts -----------------------------------------------------------------------------
@dataclass
class _InterruptGuard:
    """SIGINT/SIGTERM during a search. While an episode is being played (``phase ==
    "acting"``, agent untouched since the last episode) the signal interrupts at once and the
    loop checkpoints the episode's start; while the agent learns or saves, it is noted and
    honoured right after (checkpoint, then stop). A second signal interrupts at once in any phase
    (the last checkpoint on disk stays valid). Handlers are only installed in the main
    thread and are restored afterwards."""

    enabled: bool
    phase: str = "idle"
    requested: int | None = None
    _old: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> _InterruptGuard:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        again = self.requested is not None
        self.requested = signum
        if self.phase == "acting" or again:
            raise KeyboardInterrupt


# ----- the method -----------------------------------------------------------------------------
def _logger(options: RLOptions) -> Any:
    from stable_baselines3.common.logger import Logger, make_output_format

    if options.tensorboard_dir is None:
        return Logger(folder=None, output_formats=[])
    try:
        fmt = make_output_format("tensorboard", str(options.tensorboard_dir))
    except ImportError:
        raise ConfigError("rl option tensorboard_dir needs TensorBoard: pip install 'haq[tensorboard]'") from None
    return Logger(folder=str(options.tensorboard_dir), output_formats=[fmt])


def identity(problem: SearchProblem, options: RLOptions) -> dict[str, Any]:
    """What a checkpoint must match to be resumed into ``problem`` (options that change
    results; not where logs go or how many threads compute)."""
    opts = asdict(options)
    for k in ("checkpoint_every", "tensorboard_dir", "device", "agent_threads"):
        opts.pop(k)
    opts["hidden"] = list(options.hidden)
    if options.episodes_per_update == 1:
        opts.pop("episodes_per_update")  # checkpoints written before the option existed stay valid
    return {
        "model": problem.model_name,
        "hardware": problem.hardware,
        "layers": [s.name for s in problem.layers],
        "budget": problem.budget.budget.to_dict(),
        "seed": int(problem.seed),
        "options": opts,
    }


def run_rl(problem: SearchProblem, ledger: Ledger, options: RLOptions) -> dict[str, Any]:
    """HAQ's search loop (``rl_quantize.py`` ``train``) on ``problem``; see the module doc."""
    from haq.envs.quantization_env import MixedPrecisionEnv

    env = MixedPrecisionEnv(problem, reward_scale=options.reward_scale)  # episodes measured here, in batches
    rng = np.random.default_rng(problem.seed)
    t0 = time.perf_counter()
    agent = build_agent(env, problem.n_layers, options, rng)
    build_s = time.perf_counter() - t0
    folder = ledger.checkpoint_dir
    ident = identity(problem, options)
    start = restore(folder, agent, rng, ledger, ident) if folder is not None else 0
    logger = _logger(options)
    agent.set_logger(logger)
    fp32 = ledger.fp32_accuracy("val")
    reward = env.reward_function(fp32)
    best = max((t.accuracy for t in ledger.trials if t.feasible), default=None)
    episode = start
    clock = {"acting_s": 0.0, "learning_s": 0.0}
    stage_envs: dict[float, MixedPrecisionEnv] = {}
    try:
        with _InterruptGuard(enabled=folder is not None) as guard:
            while episode < problem.max_evaluations:
                n = min(options.episodes_per_update, problem.max_evaluations - episode)
                if problem.max_accuracy_drop is not None:  # the inverse question: bisect the budget
                    stage = current_stage(problem, ledger)
                    limit = stage.budget.limits[problem.primary]
                    env = stage_envs.setdefault(limit, MixedPrecisionEnv(stage, reward_scale=options.reward_scale))
                at_start = rng.bit_generator.state
                guard.phase = "acting"
                try:
                    if guard.requested:  # arrived between two batches
                        raise KeyboardInterrupt
                    played = [play_episode(env, agent, rng, episode + k, options, clock) for k in range(n)]
                    trials = ledger.evaluate_many(
                        [Proposal(info["w_bits"], info["a_bits"], reward=reward) for _, _, info in played])
                except (KeyboardInterrupt, SearchError) as exc:
                    if folder is None:
                        raise
                    guard.phase = "saving"
                    save_checkpoint(folder, agent, episode, at_start, ident)
                    if isinstance(exc, SearchError):
                        raise SearchError(f"RL episode {episode}: {exc}; checkpoint saved in {folder}") from None
                    signum = guard.requested or signal.SIGINT
                    raise SearchInterrupted(_stopped(episode, folder, signum), signum) from None
                guard.phase = "learning"
                for k, ((transitions, _, info), trial) in enumerate(zip(played, trials, strict=True)):
                    assert trial.reward is not None  # every proposal carries the reward function
                    t0 = time.perf_counter()
                    agent.observe_episode(transitions, trial.reward, learn=episode + k >= options.warmup_episodes)
                    clock["learning_s"] += time.perf_counter() - t0
                    info.update(env.measured_info(trial, fp32))
                    if info["budget_met"] and (best is None or info["accuracy"] > best):
                        best = info["accuracy"]
                    _log_episode(logger, agent, episode + k, trial.reward, info, best, options)
                guard.phase = "saving"
                done = episode + n
                every = options.checkpoint_every
                due = every and done // every > episode // every
                episode = done
                if folder is not None and (due or done == problem.max_evaluations or guard.requested):
                    save_checkpoint(folder, agent, done, rng.bit_generator.state, ident)
                if guard.requested:
                    raise SearchInterrupted(_stopped(done, folder, guard.requested), guard.requested)
    finally:
        logger.close()
    return {
        "episodes": ledger.evaluations,
        "resumed_from_episode": start,
        "warmup_episodes": options.warmup_episodes,
        "episodes_per_update": options.episodes_per_update,
        "final_sigma": exploration_sigma(max(episode - 1, 0), options.warmup_episodes, options.sigma_init,
                                         options.sigma_decay),
        "reward_baseline": agent.reward_baseline,
        "agent_build_s": build_s,  #: constructing the agent (the first torch optimizer imports torch._dynamo)
        "agent_acting_s": clock["acting_s"],  #: choosing actions (actor forward + exploration), this process
        "agent_learning_s": clock["learning_s"],  #: replay inserts + gradient steps, this process
    }


def _stopped(episode: int, folder: Path | None, signum: int) -> str:
    name = signal.Signals(signum).name
    return (f"{name}: RL search stopped before episode {episode}; checkpoint saved in {folder} - "
            "continue with --resume")


def _log_episode(logger: Any, agent: HAQDDPG, episode: int, reward: float, info: dict[str, Any],
                 best: float | None, options: RLOptions) -> None:
    logger.record("episode/reward", reward)
    logger.record("episode/accuracy", info["accuracy"])
    if best is not None:
        logger.record("episode/best_feasible_accuracy", best)
    for key in ("latency_ms", "energy_mj", "size_mib", "bops_g"):
        if info.get(key) is not None:
            logger.record(f"episode/{key}", info[key])
    logger.record("episode/proposal_met_budget", float(info["proposal_met_budget"]))
    if episode >= options.warmup_episodes:
        logger.record("train/sigma", exploration_sigma(episode, options.warmup_episodes, options.sigma_init,
                                                       options.sigma_decay))
    for key, value in agent.last_losses.items():
        logger.record(f"train/{key}", value)
    if agent.reward_baseline is not None:
        logger.record("train/reward_baseline", agent.reward_baseline)
    logger.dump(step=episode)


SPEC = MethodSpec(
    name="rl",
    summary="HAQ: DDPG agent picks per-layer weight/activation bits, hardware cost in the loop (Wang et al., CVPR'19)",
    run=run_rl,
    options_type=RLOptions,
    default_evaluations=DEFAULT_EPISODES,
)
