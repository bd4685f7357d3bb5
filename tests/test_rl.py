"""The ``rl`` method: HAQ's DDPG as SB3 pieces, the episode loop, determinism, checkpoints
and resume (design §7.1, §3, §10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from haq.api import make_problem, method_options, open_ledger, prepare, search
from haq.config import SearchConfig
from haq.envs.quantization_env import MixedPrecisionEnv
from haq.errors import ConfigError, RunDirError, SearchError
from haq.ledger import Ledger
from haq.methods import get_method, run_method
from haq.methods.rl.agent import HAQDDPG, SigmoidActor, Transition, exploration_sigma, truncated_normal
from haq.methods.rl.checkpoint import restore, save_checkpoint
from haq.methods.rl.method import (
    RLOptions,
    SearchInterrupted,
    _InterruptGuard,
    build_agent,
)
from haq.methods.rl.method import identity as _identity
from tests.conftest import solve


def run_search(config, out, resume=False, workspace=None, on_trial=None):
    return search(config, out=out, resume=resume, workspace=workspace, on_trial=on_trial)

ROOT = Path(__file__).resolve().parents[1]
HW = "bismo-edge"  # latency=0.5 is reachable there with first/last pinned


@pytest.fixture(scope="module")
def ws():
    return prepare(SearchConfig(hardware=HW))


def config(episodes: int, seed: int = 0, **options) -> SearchConfig:
    opts = {"warmup_episodes": 3, **options}
    return SearchConfig(hardware=HW, budget=("latency=0.5",), method="rl", seed=seed, max_evaluations=episodes,
                        options=opts)


def problem_of(ws, episodes: int = 10, seed: int = 0):
    return make_problem(config(episodes, seed), ws)


def agent_of(problem, seed: int = 0, **options) -> HAQDDPG:
    env = MixedPrecisionEnv(problem)
    return build_agent(env, problem.n_layers, RLOptions(**options), np.random.default_rng(seed))


def fake_transitions(n: int, rng: np.random.Generator, obs_dim: int = 10) -> list[Transition]:
    return [Transition(rng.random(obs_dim, dtype=np.float32), rng.random(1, dtype=np.float32),
                       rng.random(obs_dim, dtype=np.float32), i == n - 1) for i in range(n)]


# ----- exploration ------------------------------------------------------------------------------
def test_exploration_sigma_is_half_decaying_by_one_percent_per_episode_after_warmup():
    assert exploration_sigma(20, 20) == 0.5
    assert exploration_sigma(120, 20) == pytest.approx(0.5 * 0.99**100)
    assert exploration_sigma(620, 20) < 0.0013


def test_truncated_normal_stays_in_the_action_range_and_has_the_truncated_mean():
    rng = np.random.default_rng(0)
    for mu, sigma in ((0.9, 0.5), (0.05, 0.2), (0.5, 0.01)):
        draws = np.array([truncated_normal(mu, sigma, rng) for _ in range(4000)])
        assert draws.min() >= 0.0 and draws.max() <= 1.0
        a, b = (0 - mu) / sigma, (1 - mu) / sigma
        ref = scipy.stats.truncnorm(a, b, loc=mu, scale=sigma)
        assert abs(draws.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(len(draws))


def test_truncated_normal_is_reproducible_from_the_generator():
    x = [truncated_normal(0.3, 0.2, np.random.default_rng(7)) for _ in range(2)]
    assert x[0] == x[1]


# ----- the agent's HAQ differences --------------------------------------------------------------
def test_actor_and_critic_are_300_300_and_the_actor_ends_in_a_sigmoid(ws):
    agent = agent_of(problem_of(ws))
    assert isinstance(agent.actor, SigmoidActor)
    linears = [m for m in agent.actor.mu if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [300, 300, 1]
    assert isinstance(agent.actor.mu[-1], torch.nn.Sigmoid)
    critic = [m for m in agent.critic.qf0 if isinstance(m, torch.nn.Linear)]
    assert [m.in_features for m in critic] == [10 + 1, 300, 300] and critic[-1].out_features == 1
    out = agent.actor(torch.randn(256, 10) * 10)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_predict_returns_the_actor_output_as_the_action(ws):
    agent = agent_of(problem_of(ws))
    obs = np.random.default_rng(0).random(10, dtype=np.float32)
    action, _ = agent.predict(obs, deterministic=True)
    assert action[0] == pytest.approx(agent.mu(obs), abs=1e-7)  # no tanh rescaling


def test_actor_and_critic_learn_at_haqs_rates_and_hyperparameters(ws):
    p = problem_of(ws)
    agent = agent_of(p)
    assert [g["lr"] for g in agent.actor.optimizer.param_groups] == [1e-4]
    assert [g["lr"] for g in agent.critic.optimizer.param_groups] == [1e-3]
    assert (agent.tau, agent.gamma, agent.batch_size) == (0.01, 1.0, 64)
    agent.observe_episode(fake_transitions(80, np.random.default_rng(0)), -1.0, learn=True)
    assert [g["lr"] for g in agent.critic.optimizer.param_groups] == [1e-3]  # no SB3 schedule reset


def test_replay_buffer_holds_128_transitions_per_layer(ws):
    p = problem_of(ws)
    assert agent_of(p).replay_buffer.buffer_size == 128 * p.n_layers


def test_the_final_reward_is_written_into_every_transition_of_the_episode(ws):
    agent = agent_of(problem_of(ws))
    agent.observe_episode(fake_transitions(34, np.random.default_rng(0)), -2.5, learn=False)
    buf = agent.replay_buffer
    assert buf.pos == 34
    np.testing.assert_array_equal(buf.rewards[:34, 0], np.full(34, -2.5, dtype=np.float32))
    np.testing.assert_array_equal(buf.dones[:34, 0], [0.0] * 33 + [1.0])


def test_one_gradient_step_follows_each_transition_after_warmup_and_none_before(ws):
    agent = agent_of(problem_of(ws))
    rng = np.random.default_rng(0)
    agent.observe_episode(fake_transitions(34, rng), -1.0, learn=False)
    assert agent._n_updates == 0
    before = [p.clone() for p in agent.actor.parameters()]
    agent.observe_episode(fake_transitions(34, rng), -1.0, learn=True)
    assert agent._n_updates == 34
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))


def test_reward_baseline_is_a_moving_average_of_batch_means(ws):
    agent = agent_of(problem_of(ws))
    agent.observe_episode(fake_transitions(100, np.random.default_rng(0)), 4.0, learn=False)
    agent.train(1, 64)
    assert agent.reward_baseline == pytest.approx(4.0)  # starts at the first batch mean
    agent.replay_buffer.rewards[:100] = -2.0
    agent.train(1, 64)
    assert agent.reward_baseline == pytest.approx(4.0 + 0.5 * (-2.0 - 4.0))
    agent.train(1, 64)
    assert agent.reward_baseline == pytest.approx(1.0 + 0.5 * (-2.0 - 1.0))


def test_baseline_is_subtracted_in_the_critic_target(ws):
    """With gamma 0 the critic regresses r - ma: for a constant reward that is 0, not r."""
    agent = agent_of(problem_of(ws), gamma=0.0)
    agent.observe_episode(fake_transitions(200, np.random.default_rng(0)), 10.0, learn=False)
    agent.train(300, 64)
    batch = agent.replay_buffer.sample(64)
    q = agent.critic(batch.observations, batch.actions)[0]
    assert agent.reward_baseline == pytest.approx(10.0)
    assert q.abs().max().item() < 1.0


def test_replay_batches_are_distinct_transitions_drawn_from_the_search_generator(ws):
    agent = agent_of(problem_of(ws))
    agent.observe_episode(fake_transitions(100, np.random.default_rng(0)), 1.0, learn=False)
    agent.rng.bit_generator.state = np.random.default_rng(5).bit_generator.state
    first = agent.replay_buffer.sample(64).observations
    assert len({tuple(r.tolist()) for r in first}) == 64  # without replacement
    agent.rng.bit_generator.state = np.random.default_rng(5).bit_generator.state
    np.random.seed(123)  # the global RNG plays no part
    assert torch.equal(first, agent.replay_buffer.sample(64).observations)


def test_agent_initialisation_depends_only_on_the_generator_and_leaves_torch_global_rng_alone(ws):
    p = problem_of(ws)
    state = torch.get_rng_state()
    a, b = agent_of(p, seed=3), agent_of(p, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for x, y in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(x, y)


# ----- options --------------------------------------------------------------------------------
def test_defaults_are_haqs():
    o = RLOptions()
    assert (o.warmup_episodes, o.hidden, o.actor_lr, o.critic_lr, o.tau, o.gamma, o.batch_size,
            o.replay_per_layer, o.sigma_init, o.sigma_decay, o.baseline_alpha, o.reward_scale) == (
        20, (300, 300), 1e-4, 1e-3, 0.01, 1.0, 64, 128, 0.5, 0.99, 0.5, 0.1)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("tau", 0.0, r"tau=0.0 is invalid: expected in \(0, 1\]"),
    ("warmup_episodes", -1, "warmup_episodes=-1 is invalid"),
    ("batch_size", 0, "batch_size=0 is invalid"),
    ("checkpoint_every", -2, "checkpoint_every=-2"),
])
def test_bad_options_are_refused_with_the_value_and_the_range(field, value, match):
    with pytest.raises(ConfigError, match=match):
        RLOptions(**{field: value})


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match="has no option 'episodez'"):
        method_options(SearchConfig(method="rl", options={"episodez": 3}))


def test_zero_episodes_is_refused():
    with pytest.raises(ConfigError, match="must be at least 1"):
        SearchConfig(method="rl", max_evaluations=0)


# ----- the search -------------------------------------------------------------------------------
def run(ws, episodes: int, seed: int = 0, **options):
    return solve(config(episodes, seed, **options), ws)[2]


def bits(history) -> list[tuple[str, str]]:
    return list(zip(history["w_bits"], history["a_bits"], strict=True))


def test_search_runs_one_evaluation_per_episode_and_meets_the_budget(ws):
    result = run(ws, 6)
    assert result.evaluations == 6 and len(result.history) == 6
    assert result.history["feasible"].all()
    assert result.best_policy.metrics["latency_ms"] <= 0.5 * ws.costs.uniform(8).latency_ms * (1 + 1e-9)


def test_same_seed_gives_the_same_search_and_another_seed_another(ws):
    a, b, c = run(ws, 7, seed=1), run(ws, 7, seed=1), run(ws, 7, seed=2)
    assert bits(a.history) == bits(b.history)
    assert a.best_policy.to_dict() == b.best_policy.to_dict()
    assert bits(a.history) != bits(c.history)


def test_checkpoint_restores_agent_buffer_generator_and_episode_exactly(ws, tmp_path):
    p = problem_of(ws)
    agent = agent_of(p, seed=4)
    agent.observe_episode(fake_transitions(100, np.random.default_rng(0)), -1.5, learn=True)
    identity = _identity(p, RLOptions())
    save_checkpoint(tmp_path / "checkpoint", agent, 0, agent.rng.bit_generator.state, identity)

    fresh = agent_of(p, seed=4)
    assert restore(tmp_path / "checkpoint", fresh, fresh.rng, open_ledger(p, ws, get_method("rl")), identity) == 0
    sd, sd2 = agent.policy.state_dict(), fresh.policy.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    opt, opt2 = agent.critic.optimizer.state_dict(), fresh.critic.optimizer.state_dict()
    assert all(torch.equal(opt["state"][k]["exp_avg"], opt2["state"][k]["exp_avg"]) for k in opt["state"])
    for k in ("observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(agent.replay_buffer, k), getattr(fresh.replay_buffer, k))
    assert fresh.replay_buffer.pos == agent.replay_buffer.pos
    assert fresh.reward_baseline == agent.reward_baseline
    assert fresh.rng.bit_generator.state == agent.rng.bit_generator.state
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["format"] == "haq-rl-checkpoint/1" and saved["episode"] == 0


def test_checkpoint_of_another_search_is_refused(ws, tmp_path):
    p = problem_of(ws)
    agent = agent_of(p)
    save_checkpoint(tmp_path / "checkpoint", agent, 0, agent.rng.bit_generator.state, _identity(p, RLOptions()))
    other = _identity(p, RLOptions(warmup_episodes=5))
    with pytest.raises(RunDirError, match="belongs to another search"):
        restore(tmp_path / "checkpoint", agent, agent.rng, open_ledger(p, ws, get_method("rl")), other)


def test_checkpoint_files_are_json_npz_and_an_sb3_zip_without_pickled_buffers(ws, tmp_path):
    p = problem_of(ws)
    agent = agent_of(p)
    save_checkpoint(tmp_path / "ck", agent, 3, agent.rng.bit_generator.state, _identity(p, RLOptions()))
    names = sorted(f.name for f in (tmp_path / "ck").iterdir())
    assert names == ["agent-000003.zip", "replay-000003.npz", "state.json"]
    with np.load(tmp_path / "ck" / "replay-000003.npz", allow_pickle=False) as z:
        assert z["observations"].dtype == np.float32


def _interrupt_at(trial_index: int):
    def on_trial(trial):
        if trial.index == trial_index:
            signal.raise_signal(signal.SIGINT)
    return on_trial


def test_sigint_saves_a_checkpoint_and_resume_gives_the_uninterrupted_result(ws, tmp_path):
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, Python's default otherwise
    cfg = config(10, seed=5, checkpoint_every=4)
    full = run_search(cfg, tmp_path / "full", workspace=ws)
    with pytest.raises(SearchInterrupted, match="SIGINT: RL search stopped before episode 6"):
        run_search(cfg, tmp_path / "cut", workspace=ws, on_trial=_interrupt_at(6))
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["episode"] == 6
    resumed = run_search(cfg, tmp_path / "cut", resume=True, workspace=ws)
    assert resumed.extras["resumed_from_episode"] == 6
    assert bits(resumed.history) == bits(full.history)
    assert (tmp_path / "cut" / "policy.json").read_text() == (tmp_path / "full" / "policy.json").read_text()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_sigterm_while_playing_stops_at_once_with_a_checkpoint_of_the_episode_start(ws, tmp_path):
    cfg = config(6, checkpoint_every=0)
    handler_before = signal.getsignal(signal.SIGTERM)  # Ray, when a test started it, installs its own
    with pytest.raises(SearchInterrupted, match="SIGTERM") as info:
        solve(cfg, ws, checkpoint_dir=tmp_path / "checkpoint",
              on_trial=lambda t: signal.raise_signal(signal.SIGTERM) if t.index == 2 else None)
    assert info.value.signum == signal.SIGTERM
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["episode"] == 2
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_a_signal_while_learning_is_honoured_after_the_episode_and_a_second_one_at_once():
    guard = _InterruptGuard(enabled=True)
    with guard:
        guard.phase = "learning"
        signal.raise_signal(signal.SIGTERM)  # noted, not raised: the agent is mid-update
        assert guard.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


class _NaNAfter:
    """A real evaluator whose accuracy turns NaN from one call on (a diverged model)."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.calls, self.scheme = inner, calls, inner.scheme

    def accuracies(self, policies, split="val"):
        out = []
        for item in policies:
            self.calls -= 1
            out.append(float("nan") if self.calls < 0 else self.inner.accuracies([item], split)[0])
        return out

    def fp32_accuracy(self, split="val"):
        return self.inner.fp32_accuracy(split)

    def with_scheme(self, scheme):
        return self

    def fidelities(self, policies):
        return self.inner.fidelities(policies)

    def split_size(self, split):
        return self.inner.split_size(split)


def test_nan_accuracy_stops_the_search_names_the_episode_and_keeps_a_checkpoint(ws, tmp_path):
    cfg = config(10, checkpoint_every=100)
    p = make_problem(cfg, ws)
    ledger = Ledger(p, _NaNAfter(ws.evaluator, calls=4), method="rl", checkpoint_dir=tmp_path / "checkpoint")
    with pytest.raises(SearchError, match=r"RL episode 4: trial 4 \(rl\) measured a non-finite accuracy"):
        run_method(get_method("rl"), p, ledger, method_options(cfg))
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["episode"] == 4


def test_tensorboard_logging_writes_event_files(ws, tmp_path):
    run(ws, 4, warmup_episodes=2, tensorboard_dir=str(tmp_path / "tb"))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# ----- SIGKILL mid-search, then --resume ---------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from haq.api import search
    from haq.config import SearchConfig
    cfg = SearchConfig(hardware="bismo-edge", budget=("latency=0.5",), method="rl", seed=11, max_evaluations=16,
                       options={"warmup_episodes": 3, "checkpoint_every": 2})
    search(cfg, out=sys.argv[1], resume=len(sys.argv) > 2)
""")


@pytest.mark.slow
def test_search_killed_with_sigkill_resumes_to_the_same_policy_as_an_uninterrupted_run(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script)]
    full = subprocess.Popen([*cmd, str(tmp_path / "full")], env=env)  # the reference, alongside
    victim = subprocess.Popen([*cmd, str(tmp_path / "cut")], env=env)
    history = tmp_path / "cut" / "history.csv"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and victim.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) - 1 >= 7:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the search finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert 0 < state["episode"] < 16 and not (tmp_path / "cut" / "policy.json").exists()

    subprocess.run([*cmd, str(tmp_path / "cut"), "--resume"], check=True, env=env, timeout=600)
    assert full.wait(timeout=600) == 0
    assert (tmp_path / "cut" / "policy.json").read_text() == (tmp_path / "full" / "policy.json").read_text()
    full_rows = (tmp_path / "full" / "history.csv").read_text().splitlines()
    cut_rows = (tmp_path / "cut" / "history.csv").read_text().splitlines()
    assert [r.split(",")[3:6] for r in cut_rows] == [r.split(",")[3:6] for r in full_rows]  # bits, accuracy
