"""HAQ: reinforcement-learning search with DDPG, hardware cost in the loop (design §7.1).

Source: mit-han-lab/haq ``rl_quantize.py`` (the episode loop), ``lib/rl/ddpg.py`` (the agent,
here :mod:`haq.search.ddpg`), ``lib/env/linear_quantize_env.py`` (the environment, here
:class:`haq.envs.quantization_env.MixedPrecisionEnv`).

One episode = one policy = one evaluation: the agent picks weight then activation bits for
every layer, the environment lowers the policy to the budget, measures it and returns the
reward. Warm-up episodes act uniformly at random; later ones sample a truncated normal
around the actor's action whose width decays per episode. At the end of an episode its
transitions enter the replay buffer with the final reward, each followed by one gradient
step. The best policy is the most accurate feasible one (= highest reward), re-measured on
the test split by :func:`haq.search.base.run_method`.

Differences from the reference loop, all deliberate: warm-up is episodes ``0 ..
warmup-1`` (the reference's ``episode <= warmup`` acts randomly for ``warmup + 1`` episodes and
its sigma starts at ``0.5 * 0.99``); no dummy transition is appended after each episode (the
reference's sequential memory needs one to give the last step a next state, SB3's buffer
stores next states); the reward is held-out accuracy without finetuning (see the
environment).

Checkpoints (``<run>/checkpoint/``) are written every ``checkpoint_every`` episodes, at the
end, and when the search is interrupted (SIGINT/SIGTERM, or a non-finite accuracy):
``state.json`` (episode counter, generator state, reward baseline, what the checkpoint
belongs to) names ``agent-<episode>.zip`` (SB3 ``save``; read back with
``set_parameters``, which loads only tensors, with ``weights_only=True``) and
``replay-<episode>.npz`` (the buffer's arrays, loaded with ``allow_pickle=False``). Nothing is
unpickled. ``state.json`` is written last, so a crash mid-checkpoint leaves the previous one.
Resuming rebuilds the agent from the seed, loads the checkpoint, re-enters the episodes
before it from ``history.csv`` without re-measuring them, and continues: the result equals
an uninterrupted run with the same seed.
"""

from __future__ import annotations

import csv
import io
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from haq.atomic import atomic_write_bytes, atomic_write_json
from haq.errors import ConfigError, RunDirError, SearchError
from haq.search import register_method
from haq.search.base import MethodSpec, SearchProblem, parse_bits_str
from haq.search.ddpg import HAQDDPG, Transition, exploration_sigma, truncated_normal

CHECKPOINT_FORMAT = "haq-rl-checkpoint/1"


@dataclass(frozen=True)
class RLOptions:
    """Options of the ``rl`` method; defaults are HAQ's (``rl_quantize.py`` arguments).

    The number of episodes is the problem's ``max_evaluations`` (``--episodes``).
    """

    warmup_episodes: int = 20  #: episodes of uniform random actions before learning (HAQ --warmup 20)
    hidden: tuple[int, ...] = (300, 300)  #: hidden widths of actor and critic (HAQ --hidden1/2 300)
    actor_lr: float = 1e-4  #: Adam learning rate of the actor (HAQ --lr_a)
    critic_lr: float = 1e-3  #: Adam learning rate of the critic (HAQ --lr_c)
    tau: float = 0.01  #: Polyak coefficient of the target networks (HAQ --tau)
    gamma: float = 1.0  #: discount per step (HAQ --discount)
    batch_size: int = 64  #: transitions per gradient step (HAQ --bsize)
    replay_per_layer: int = 128  #: replay capacity in transitions per quantizable layer (HAQ --rmsize)
    sigma_init: float = 0.5  #: exploration width at the first learned episode (HAQ --init_delta)
    sigma_decay: float = 0.99  #: per-episode decay of the exploration width (HAQ --delta_decay)
    baseline_alpha: float = 0.5  #: rate of the moving-average reward baseline (HAQ moving_alpha)
    reward_scale: float = 0.1  #: reward per percent point of accuracy change vs fp32 (HAQ 0.1)
    checkpoint_every: int = 10  #: episodes between checkpoints; 0 = only at the end and on interrupt
    tensorboard_dir: str | None = None  #: folder for TensorBoard event files (SB3 logger); None = off
    device: str = "cpu"  #: torch device of the agent's networks
    agent_threads: int | None = 1  #: torch threads while the agent computes (tiny nets); None = unchanged

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
            ("checkpoint_every", self.checkpoint_every >= 0, "an integer >= 0 (0: only at the end)"),
            ("agent_threads", self.agent_threads is None or self.agent_threads >= 1, "None or an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"rl option {name}={getattr(self, name)!r} is invalid: expected {expected}")

    def agent_kwargs(self) -> dict[str, Any]:
        return dict(hidden=self.hidden, actor_lr=self.actor_lr, critic_lr=self.critic_lr, tau=self.tau,
                    gamma=self.gamma, batch_size=self.batch_size, replay_per_layer=self.replay_per_layer,
                    baseline_alpha=self.baseline_alpha, device=self.device, threads=self.agent_threads)


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


# ----- checkpoints ----------------------------------------------------------------------------
def _identity(problem: SearchProblem, options: RLOptions) -> dict[str, Any]:
    """What a checkpoint must match to be resumed into ``problem``."""
    opts = asdict(options)
    for k in ("checkpoint_every", "tensorboard_dir", "device", "agent_threads"):
        opts.pop(k)
    opts["hidden"] = list(options.hidden)
    return {
        "model": problem.model_name,
        "hardware": problem.hardware.name,
        "layers": [s.name for s in problem.layers],
        "budget": problem.budget.budget.to_dict(),
        "seed": int(problem.seed),
        "options": opts,
    }


def save_checkpoint(folder: Path, agent: HAQDDPG, episode: int, rng_state: Mapping[str, Any],
                    identity: Mapping[str, Any]) -> None:
    """Write the agent, replay buffer and loop state as of the start of ``episode``."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{episode:06d}"
    buf = io.BytesIO()
    agent.save(buf)
    agent_file = atomic_write_bytes(folder / f"agent-{tag}.zip", buf.getvalue()).name
    buf = io.BytesIO()
    np.savez(buf, **agent.buffer.state_arrays())  # type: ignore[arg-type]  # numpy stubs read ** as allow_pickle
    replay_file = atomic_write_bytes(folder / f"replay-{tag}.npz", buf.getvalue()).name
    atomic_write_json(folder / "state.json", {
        "format": CHECKPOINT_FORMAT,
        "episode": int(episode),
        "agent": agent_file,
        "replay": replay_file,
        "rng": rng_state,
        "reward_baseline": agent.reward_baseline,
        "n_updates": int(agent._n_updates),
        **identity,
    })
    for old in [*folder.glob("agent-*.zip"), *folder.glob("replay-*.npz")]:
        if old.name not in (agent_file, replay_file):
            old.unlink(missing_ok=True)


def read_checkpoint(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """``state.json`` of a checkpoint folder (None if there is none), checked against the
    search it is to be resumed into."""
    path = folder / "state.json"
    if not path.is_file():
        return None
    import json

    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{path} is not valid JSON; delete {folder} to restart the search from its history") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint; delete {folder} to restart the search")
    for key, want in identity.items():
        have = state.get(key)
        if have != want:
            raise RunDirError(
                f"checkpoint {folder} belongs to another search ({key} {_show(key, have)}, this one "
                f"{_show(key, want)}); resume with the settings it was made with or choose another --out"
            )
    return state


def _show(key: str, value: Any) -> str:
    if key == "layers" and isinstance(value, list):
        return f"{len(value)} layers ({value[0] if value else ''} ...)"
    return repr(value)


def _history_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def restore(folder: Path, agent: HAQDDPG, rng: np.random.Generator, problem: SearchProblem,
            identity: dict[str, Any]) -> int:
    """Load the checkpoint in ``folder`` (if any) and re-enter its episodes into ``problem``
    from history.csv without measuring them. Returns the episode to continue from (0 when
    there is nothing to resume)."""
    state = read_checkpoint(folder, identity)
    if state is None:
        return 0
    episode = int(state["episode"])
    rows = _history_rows(folder.parent)
    if len(rows) < episode or any(int(r["trial"]) != i for i, r in enumerate(rows[:episode])):
        return 0  # history shorter than the checkpoint: re-run from the start (replay answers)
    try:
        agent.set_parameters(str(folder / state["agent"]), exact_match=True, device=agent.device)
        with np.load(folder / state["replay"], allow_pickle=False) as arrays:
            agent.buffer.load_state_arrays(arrays)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RunDirError(
            f"checkpoint {folder} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"delete {folder} to restart the search from its history"
        ) from None
    agent.reward_baseline = state["reward_baseline"]
    agent._n_updates = int(state.get("n_updates", 0))
    rng.bit_generator.state = state["rng"]
    for row in rows[:episode]:
        problem.replay[int(row["trial"])] = row
        problem.evaluate(parse_bits_str(row["w_bits"]), parse_bits_str(row["a_bits"]),
                         reward=float(row["reward"]) if row.get("reward") not in (None, "") else None)
    return episode


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


def run_rl(problem: SearchProblem, options: RLOptions) -> dict[str, Any]:
    """HAQ's search loop (``rl_quantize.py`` ``train``) on ``problem``; see the module doc."""
    from haq.envs.quantization_env import MixedPrecisionEnv

    env = MixedPrecisionEnv(problem=problem, reward_scale=options.reward_scale)
    rng = np.random.default_rng(problem.seed)
    t0 = time.perf_counter()
    agent = build_agent(env, problem.n_layers, options, rng)
    build_s = time.perf_counter() - t0
    folder = problem.run_dir / "checkpoint" if problem.run_dir is not None else None
    identity = _identity(problem, options)
    start = restore(folder, agent, rng, problem, identity) if folder is not None else 0
    logger = _logger(options)
    agent.set_logger(logger)
    best = max((t.accuracy for t in problem.trials if t.feasible), default=None)
    episode = start
    clock = {"acting_s": 0.0, "learning_s": 0.0}
    try:
        with _InterruptGuard(enabled=folder is not None) as guard:
            for episode in range(start, problem.max_evaluations):
                at_start = rng.bit_generator.state
                guard.phase = "acting"
                try:
                    if guard.requested:  # arrived between two episodes
                        raise KeyboardInterrupt
                    transitions, reward, info = play_episode(env, agent, rng, episode, options, clock)
                except (KeyboardInterrupt, SearchError) as exc:
                    if folder is None:
                        raise
                    guard.phase = "saving"
                    save_checkpoint(folder, agent, episode, at_start, identity)
                    if isinstance(exc, SearchError):
                        raise SearchError(f"RL episode {episode}: {exc}; checkpoint saved in {folder}") from None
                    signum = guard.requested or signal.SIGINT
                    raise SearchInterrupted(_stopped(episode, folder, signum), signum) from None
                guard.phase = "learning"
                t0 = time.perf_counter()
                agent.observe_episode(transitions, reward, learn=episode >= options.warmup_episodes)
                clock["learning_s"] += time.perf_counter() - t0
                if info["budget_met"] and (best is None or info["accuracy"] > best):
                    best = info["accuracy"]
                _log_episode(logger, agent, episode, reward, info, best, options)
                guard.phase = "saving"
                done = episode + 1
                due = options.checkpoint_every and done % options.checkpoint_every == 0
                if folder is not None and (due or done == problem.max_evaluations or guard.requested):
                    save_checkpoint(folder, agent, done, rng.bit_generator.state, identity)
                if guard.requested:
                    raise SearchInterrupted(_stopped(done, folder, guard.requested), guard.requested)
            episode = problem.max_evaluations
    finally:
        logger.close()
    return {
        "episodes": problem.evaluations,
        "resumed_from_episode": start,
        "warmup_episodes": options.warmup_episodes,
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


register_method(MethodSpec(
    name="rl",
    summary="HAQ: DDPG agent picks per-layer weight/activation bits, hardware cost in the loop (Wang et al., CVPR'19)",
    run=run_rl,
    options_type=RLOptions,
    min_evaluations=lambda problem: 1,
    default_evaluations=600,
))
