"""HAQ's DDPG agent, built from Stable-Baselines3's ``DDPG`` with each of HAQ's differences
as one small named piece.

Source: mit-han-lab/haq ``lib/rl/ddpg.py``, ``lib/rl/memory.py``, ``rl_quantize.py``.

| HAQ                                                  | SB3 ``DDPG`` default                 | here |
|------------------------------------------------------|--------------------------------------|------|
| actor 300-300 ReLU, sigmoid output = action in [0,1]  | 400-300, tanh, actions scaled to ±1  | :class:`SigmoidActor`, :class:`HAQPolicy` |
| critic 300-300 on (state, action)                    | 400-300                              | ``net_arch`` |
| Adam, lr 1e-4 (actor), 1e-3 (critic)                 | one learning rate                    | :class:`HAQDDPG` |
| τ 0.01, γ 1.0, batch 64, replay 128·L transitions    | 0.005, 0.99, 256, 10^6               | :class:`HAQDDPG` arguments |
| moving-average reward baseline in the critic target  | none                                 | :meth:`HAQDDPG.train` |
| batches drawn without replacement                    | ``np.random`` with replacement       | :class:`HAQReplayBuffer` (the search's Generator) |
| final reward in every transition, one gradient step per transition at episode end | per-step rewards, ``train_freq`` | :meth:`HAQDDPG.observe_episode` |
| truncated normal exploration σ = 0.5·0.99^(episode−warm-up) | additive action noise         | :func:`exploration_sigma`, :func:`truncated_normal` |
| warm-up episodes of uniform random actions           | ``learning_starts`` steps            | the episode loop (:mod:`haq.methods.rl.method`) |

Everything else (networks, optimizers, Polyak updates, the replay buffer's storage, the
logger, ``save``/``set_parameters``) is SB3's own. SB3's ``learn()`` is not used: HAQ writes
rewards after the episode, which SB3's step-wise rollout collection cannot express.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from scipy.special import ndtr, ndtri
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import nn
from torch.nn import functional as F


def exploration_sigma(episode: int, warmup: int, sigma0: float = 0.5, decay: float = 0.99) -> float:
    """HAQ's exploration width: ``sigma0 * decay ** (episode - warmup)`` (``init_delta`` 0.5,
    ``delta_decay`` 0.99 in ``rl_quantize.py``); 0.5 at the first learned episode, 0.18 a
    hundred episodes later, 0.0012 after 600."""
    return float(sigma0 * decay ** (episode - warmup))


def truncated_normal(mu: float, sigma: float, rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One draw from the normal ``N(mu, sigma)`` truncated to ``[low, high]`` (HAQ's
    ``sample_from_truncated_normal_distribution``, there via ``scipy.stats.truncnorm``):
    exploration that never leaves the action range, instead of noise clipped onto its edges.

    Inverse-CDF sampling with one uniform draw from ``rng``: ``x = mu + sigma
    Phi^-1(U(Phi(a), Phi(b)))``. ``mu`` lies inside the range, so ``a <= 0 <= b`` and the
    CDF is never evaluated deep in one tail only (where this form would lose precision);
    it is ~50x faster than ``truncnorm.rvs`` per draw.
    """
    mu = float(np.clip(mu, low, high))
    if sigma <= 0:
        return mu
    lo, hi = ndtr((low - mu) / sigma), ndtr((high - mu) / sigma)
    x = mu + sigma * float(ndtri(rng.uniform(lo, hi)))
    return float(np.clip(x, low, high))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (None: unchanged), then restore.

    The agent's networks are tiny (batch 64, width 300): extra threads only add
    synchronisation, and on a busy 2-core machine OpenMP's spinning threads made one
    gradient step 50x slower than single-threaded (46 s vs 0.8 s per episode, measured).
    The evaluator keeps the process's setting.
    """
    if n is None or n == th.get_num_threads():
        yield
        return
    old = th.get_num_threads()
    th.set_num_threads(n)
    try:
        yield
    finally:
        th.set_num_threads(old)


class SigmoidActor(Actor):
    """SB3's deterministic actor with HAQ's output layer: a sigmoid, so the network's output
    *is* the action in [0, 1] (SB3 ends in tanh and rescales ±1 to the action space)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.mu[-1], nn.Tanh):  # SB3 changed its actor; fail loudly
            raise TypeError(f"SB3's actor no longer ends in Tanh ({self.mu[-1]!r}); update SigmoidActor")
        self.mu[-1] = nn.Sigmoid()


class HAQPolicy(TD3Policy):
    """SB3's TD3/DDPG policy with :class:`SigmoidActor`. Actions live in [0, 1] end to end
    (actor output, replay buffer, critic input, ``predict``), so the policy's
    ``scale_action``/``unscale_action`` are identities; the action space must be Box(0, 1)."""

    def make_actor(self, features_extractor: Any = None) -> Actor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return SigmoidActor(**kwargs).to(self.device)

    def scale_action(self, action: np.ndarray) -> np.ndarray:
        return action

    def unscale_action(self, scaled_action: np.ndarray) -> np.ndarray:
        return scaled_action


class HAQReplayBuffer(ReplayBuffer):
    """SB3's replay buffer, sampled like HAQ's ``SequentialMemory``: a batch holds distinct
    transitions when the buffer has enough (with replacement otherwise), drawn from the
    search's own ``numpy.random.Generator`` (``rng``) rather than the global ``np.random``, so
    the search is reproducible from its seed and resumable from the generator's state."""

    rng: np.random.Generator

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        n = self.buffer_size if self.full else self.pos
        if n == 0:
            raise ValueError("HAQReplayBuffer.sample: the buffer is empty")
        inds = self.rng.choice(n, size=batch_size, replace=n < batch_size)
        data = (
            self.observations[inds, 0, :],
            self.actions[inds, 0, :],
            self.next_observations[inds, 0, :],
            self.dones[inds, 0].reshape(-1, 1),
            self.rewards[inds, 0].reshape(-1, 1),
        )
        # fancy indexing made fresh arrays: wrap them (SB3's to_torch copies them once more)
        return ReplayBufferSamples(*(th.as_tensor(x, device=self.device) for x in data))

    # The buffer's contents as plain arrays, for numpy.savez (never pickled).
    _ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Contents and write position as arrays (for :func:`numpy.savez`)."""
        out = {k: getattr(self, k) for k in self._ARRAYS}
        out["pos"] = np.array(self.pos)
        out["full"] = np.array(self.full)
        return out

    def load_state_arrays(self, arrays: Any) -> None:
        """Restore what :meth:`state_arrays` saved (shapes must match this buffer)."""
        for k in self._ARRAYS:
            src = arrays[k]
            dst = getattr(self, k)
            if src.shape != dst.shape:
                raise ValueError(f"replay buffer {k} has shape {src.shape}, this search needs {dst.shape}")
            dst[...] = src
        self.pos = int(arrays["pos"])
        self.full = bool(arrays["full"])


@dataclass(frozen=True)
class Transition:
    """One step of an episode, before its reward is known (HAQ's trajectory ``T``)."""

    obs: np.ndarray  #: (obs_dim,) float32
    action: np.ndarray  #: (1,) float32, in [0, 1]
    next_obs: np.ndarray  #: (obs_dim,) float32
    done: bool


class HAQDDPG(DDPG):
    """SB3 ``DDPG`` with HAQ's hyperparameters and update (Wang et al., HAQ, CVPR 2019, §3.3).

    Args:
        env: the environment (a :class:`haq.envs.quantization_env.MixedPrecisionEnv`); only
            its spaces are used by SB3 here.
        n_layers: quantizable layers ``L``; the replay buffer holds ``replay_per_layer * L``
            transitions (HAQ ``--rmsize 128``: the last 64 episodes).
        rng: the search's generator; replay batches are drawn from it.
        hidden: hidden widths of actor and critic (HAQ: 300, 300; SB3's default 400, 300 is
            the TD3 paper's).
        actor_lr: Adam learning rate of the actor (HAQ ``--lr_a`` 1e-4).
        critic_lr: Adam learning rate of the critic (HAQ ``--lr_c`` 1e-3). SB3 uses one rate
            for both; HAQ's critic learns ten times faster than its actor.
        tau: Polyak coefficient of the target networks (HAQ 0.01).
        gamma: discount (HAQ 1.0: an episode is one policy, every step is equally
            responsible for its accuracy). With γ = 1 the critic target of step ``t`` sums
            the (baseline-subtracted) rewards of all later steps, so Q grows with the steps
            left; this is HAQ's choice, kept.
        batch_size: minibatch size (HAQ 64).
        baseline_alpha: rate of the moving-average reward baseline ``ma += alpha (batch
            mean - ma)`` (HAQ 0.5, "based on batch, so small"); the baseline is subtracted
            from the rewards in the critic target. Without it the rewards of a search are
            all negative (accuracy below fp32) and of nearly equal size, and the critic
            spends its capacity on that offset.
        device: torch device of the networks.
        threads: torch intra-op threads while the agent computes (see :func:`torch_threads`;
            None leaves the process's setting). One thread: on an idle 2-core machine two
            threads make one 64x300x300 product 1.6x faster but a whole learned episode
            slower (135 vs 103 ms: the many small ops pay for waking the second thread), and
            as soon as another process holds a core OpenMP's threads wait on each other and
            one product takes 14x longer (measured).
        fused_adam: Adam's fused kernel (one pass over each parameter instead of seven
            element-wise ops): the same update rule, its float results differ from the
            per-tensor implementation in the last bits.

    Speed (the agent's learning is most of an RL search's own time on a small model): one
    gradient step is ten 64x300x300 matrix products (~1.3 ms on one core at 90 GFLOP/s) plus
    Adam and Polyak; Polyak runs as two ``torch._foreach`` ops over all parameters (bit-identical
    to SB3's per-tensor loop) and Adam fused.
    """

    def __init__(
        self,
        env: Any,
        n_layers: int,
        rng: np.random.Generator,
        hidden: Sequence[int] = (300, 300),
        actor_lr: float = 1e-4,
        critic_lr: float = 1e-3,
        tau: float = 0.01,
        gamma: float = 1.0,
        batch_size: int = 64,
        replay_per_layer: int = 128,
        baseline_alpha: float = 0.5,
        device: str = "cpu",
        threads: int | None = 1,
        fused_adam: bool = True,
    ) -> None:
        super().__init__(
            HAQPolicy,
            env,
            learning_rate=actor_lr,
            buffer_size=int(replay_per_layer) * int(n_layers),
            learning_starts=0,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            replay_buffer_class=HAQReplayBuffer,
            policy_kwargs={"net_arch": {"pi": list(hidden), "qf": list(hidden)},
                           "optimizer_kwargs": {"fused": True} if fused_adam else {}},
            device=device,
            seed=None,  # seeded by the caller through torch.manual_seed (see haq.methods.rl.method.build_agent)
        )
        self.critic_lr = float(critic_lr)
        for group in self.critic.optimizer.param_groups:
            group["lr"] = self.critic_lr
        self.baseline_alpha = float(baseline_alpha)
        self.reward_baseline: float | None = None  #: HAQ's ``moving_average``; None until the first batch
        self.rng = rng
        self.buffer.rng = rng
        self.last_losses: dict[str, float] = {}
        self.threads = threads
        # (online, target) parameter lists of both networks, for the foreach Polyak update
        self._polyak_pairs: list[tuple[list[th.Tensor], list[th.Tensor]]] = [
            (list(self.critic.parameters()), list(self.critic_target.parameters())),
            (list(self.actor.parameters()), list(self.actor_target.parameters())),
        ]
        self.set_logger(Logger(folder=None, output_formats=[]))

    @property
    def buffer(self) -> HAQReplayBuffer:
        """The replay buffer, typed (SB3 declares it optional; ours always exists)."""
        assert isinstance(self.replay_buffer, HAQReplayBuffer)
        return self.replay_buffer

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "rng"]

    # ----- HAQ's pieces --------------------------------------------------------------------
    @th.no_grad()
    def mu(self, obs: np.ndarray) -> float:
        """The actor's action for one observation, in [0, 1]."""
        x = th.as_tensor(np.asarray(obs, dtype=np.float32)[None], device=self.device)
        with torch_threads(self.threads):
            return float(self.actor(x)[0, 0])

    def observe_episode(self, transitions: Sequence[Transition], final_reward: float, learn: bool) -> None:
        """HAQ's end-of-episode update (``rl_quantize.py`` ``train``): every transition of the
        episode is stored with the episode's final reward (intermediate rewards are 0 and
        carry no information), and, once warm-up is over (``learn``), one gradient step
        follows each transition stored."""
        r = np.array([final_reward], dtype=np.float32)
        with torch_threads(self.threads):
            if learn:
                self.policy.set_training_mode(True)
            for t in transitions:
                self.buffer.add(t.obs[None], t.next_obs[None], t.action[None], r, np.array([t.done]), [{}])
                if learn:
                    self._gradient_step(self.batch_size)
            if learn:
                self.policy.set_training_mode(False)

    @th.no_grad()
    def _polyak(self) -> None:
        """``target = (1 - tau) target + tau online`` for both networks: SB3's
        ``polyak_update`` (``mul`` then ``add`` with ``alpha=tau``, per tensor) as two foreach
        ops over all tensors - the same arithmetic, bit for bit, without a Python loop."""
        for online, target in self._polyak_pairs:
            th._foreach_mul_(target, 1 - self.tau)  # type: ignore[arg-type]  # Parameters are Tensors
            th._foreach_add_(target, online, alpha=self.tau)  # type: ignore[arg-type]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """HAQ's ``update_policy``: DDPG with the moving-average reward baseline.

        Per step: sample a batch; ``ma += alpha (mean(r) - ma)`` (``ma`` starts at the first
        batch's mean); critic target ``(r - ma) + gamma (1 - done) Q'(s', mu'(s'))``; critic
        MSE step; actor step on ``-Q(s, mu(s))``; Polyak update of both targets with ``tau``.
        Learning rates are fixed (no SB3 schedule).
        """
        self.policy.set_training_mode(True)
        for _ in range(gradient_steps):
            self._gradient_step(batch_size)
        self.policy.set_training_mode(False)

    def _gradient_step(self, batch_size: int) -> None:
        """One step of :meth:`train` (the networks already in training mode)."""
        self._n_updates += 1
        batch = self.buffer.sample(batch_size)
        mean_r = float(batch.rewards.mean())
        if self.reward_baseline is None:
            self.reward_baseline = mean_r
        else:
            self.reward_baseline += self.baseline_alpha * (mean_r - self.reward_baseline)
        with th.no_grad():
            next_q = self.critic_target(batch.next_observations, self.actor_target(batch.next_observations))[0]
            target = (batch.rewards - self.reward_baseline) + (1.0 - batch.dones) * self.gamma * next_q
        q = self.critic(batch.observations, batch.actions)[0]
        critic_loss = F.mse_loss(q, target)
        self.critic.optimizer.zero_grad()
        critic_loss.backward()
        self.critic.optimizer.step()

        # The actor's gradient flows through the critic; the critic's own weight gradients
        # of this loss are never used (HAQ zeroes them before the next critic step), so
        # they are not computed: same update, ~15% less work per step.
        self.critic.requires_grad_(False)
        actor_loss = -self.critic.q1_forward(batch.observations, self.actor(batch.observations)).mean()
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        self.critic.requires_grad_(True)

        self._polyak()
        self.last_losses = {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}
