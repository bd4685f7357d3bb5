"""The RL environment haq/MixedPrecision-v0: HAQ's episode, observation, action map,
budget loop and reward (design §7.1), checked on the embedded digits model."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import haq.envs
from haq.api import make_env, make_problem, open_ledger, prepare
from haq.budget import enforce_budget
from haq.config import SearchConfig
from haq.envs.quantization_env import (
    FEATURES,
    MixedPrecisionEnv,
    action_to_bits,
    layer_features,
    minmax_columns,
)
from haq.errors import ConfigError
from haq.methods import get_method
from haq.problem import EvaluationLimitReached

CONFIG = SearchConfig(hardware="bismo-edge", budget=("latency=0.5",), method="rl", max_evaluations=50)


@pytest.fixture(scope="module")
def ws():
    return prepare(CONFIG)


@pytest.fixture
def problem(ws):
    return make_problem(CONFIG, ws)


@pytest.fixture
def ledger(problem, ws):
    return open_ledger(problem, ws, get_method("rl"))


def run_episode(env, actions):
    """Step through one episode with ``actions(t)``; returns observations, rewards, last info."""
    obs, _ = env.reset(seed=0)
    observations, rewards = [obs], []
    t = 0
    while True:
        obs, r, terminated, truncated, info = env.step(np.array([actions(t)], dtype=np.float32))
        observations.append(obs)
        rewards.append(r)
        t += 1
        if terminated or truncated:
            return observations, rewards, info


# ----- registration and the Gymnasium contract -----------------------------------------------
def test_registered_id_makes_the_environment(problem, ledger):
    env = gymnasium.make(haq.envs.ENV_ID, problem=problem, ledger=ledger)
    assert isinstance(env.unwrapped, MixedPrecisionEnv)
    assert env.unwrapped.problem is problem and env.unwrapped.ledger is ledger


def test_module_colon_id_form_works(problem, ledger):
    env = gymnasium.make("haq.envs:haq/MixedPrecision-v0", problem=problem, ledger=ledger)
    assert isinstance(env.unwrapped, MixedPrecisionEnv)
    assert gymnasium.spec(haq.envs.ENV_ID).entry_point == "haq.api:make_env"


def test_environment_passes_gymnasium_check_env(problem, ledger):
    check_env(MixedPrecisionEnv(problem, ledger), skip_render_check=True)


def test_without_a_ledger_the_last_step_proposes_and_measures_nothing(problem):
    env = MixedPrecisionEnv(problem)
    _, rewards, info = run_episode(env, lambda t: 1.0)
    assert rewards == [0.0] * (2 * problem.n_layers)
    assert info["measured"] is False and "accuracy" not in info
    assert problem.feasible(info["w_bits"], info["a_bits"])


@pytest.mark.slow
def test_make_without_arguments_builds_the_default_problem():
    env = gymnasium.make(haq.envs.ENV_ID)
    p = env.unwrapped.problem
    default = SearchConfig()
    assert (p.model_name, p.hardware, p.budget.budget.to_dict()) == (
        default.model, default.hardware, {"latency": default.budget[0].split("=")[1]})


@pytest.mark.slow
def test_make_kwargs_choose_another_problem():
    env = gymnasium.make(haq.envs.ENV_ID, hardware="bismo-edge", budget="size=0.5", pin="none", max_evaluations=3)
    p = env.unwrapped.problem
    assert p.hardware == "bismo-edge" and p.budget.budget.keys == ("size",)
    assert p.pinned == () and p.max_evaluations == 3


def test_problem_and_problem_arguments_are_exclusive(problem):
    with pytest.raises(ConfigError, match="either a SearchProblem or the arguments"):
        make_env(problem=problem, hardware="bitfusion")


# ----- episode structure -------------------------------------------------------------------------
def test_episode_has_two_steps_per_layer_weight_then_activation(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    observations, rewards, _ = run_episode(env, lambda t: 0.5)
    assert len(rewards) == 2 * problem.n_layers
    flags = [o[FEATURES.index("is_weight_step")] for o in observations[:-1]]
    assert flags == [1.0, 0.0] * problem.n_layers  # HAQ's reference inverts it after step 1


def test_observation_walks_the_layers_in_order(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    observations, _, _ = run_episode(env, lambda t: 0.5)
    index = FEATURES.index("layer_index")
    seen = [o[index] for o in observations[:-1:2]]
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0


def test_previous_bits_feature_is_last_choice_over_max_bits(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    obs, _ = env.reset()
    assert obs[FEATURES.index("prev_bits")] == 1.0
    env.step(np.array([0.5], dtype=np.float32))  # layer 0 is pinned at 8
    obs, *_ = env.step(np.array([0.5], dtype=np.float32))
    obs, *_ = env.step(np.array([0.0], dtype=np.float32))  # layer 1 weight -> lowest bits
    assert obs[FEATURES.index("prev_bits")] == pytest.approx(min(problem.choices[1]) / max(problem.choices[1]))


def test_observations_stay_in_the_observation_space(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    rng = np.random.default_rng(0)
    observations, _, _ = run_episode(env, lambda t: rng.uniform())
    assert all(env.observation_space.contains(o) for o in observations)


def test_stepping_after_the_episode_needs_a_reset(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    run_episode(env, lambda t: 1.0)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.array([0.5], dtype=np.float32))


# ----- features ----------------------------------------------------------------------------------
def test_features_are_minmax_normalised_over_layers_and_constant_columns_left_raw():
    table = np.array([[0.0, 16, 3, 5], [1.0, 32, 3, 7], [0.0, 64, 3, 9]])
    out = minmax_columns(table)
    np.testing.assert_allclose(out[:, 1], [0.0, 1 / 3, 1.0])
    np.testing.assert_allclose(out[:, 2], [3, 3, 3])  # constant: raw, as HAQ leaves it
    np.testing.assert_allclose(out[:, 3], [0.0, 0.5, 1.0])


def test_layer_features_follow_haq_including_the_linear_convention(ws):
    raw = layer_features(ws.layers)
    assert raw.shape == (len(ws.layers), 8)
    last = ws.layers[-1]
    assert last.kind == "linear"
    # is_depthwise 0, stride 0, kernel 1, in_h*in_w = in_features
    assert raw[-1].tolist() == [0.0, last.in_channels, last.out_channels, 0.0, 1.0, last.params,
                                last.in_channels, len(ws.layers) - 1]
    dw = next(i for i, s in enumerate(ws.layers) if s.kind == "depthwise")
    assert raw[dw, 0] == 1.0


# ----- actions -----------------------------------------------------------------------------------
def test_action_maps_to_bits_with_haqs_formula():
    every = tuple(range(2, 9))  # 7 integer widths: each owns 1/7 of [0, 1]
    edges = np.linspace(0, 1, 8)
    for k, b in enumerate(every):
        mid = (edges[k] + edges[k + 1]) / 2
        assert action_to_bits(mid, every) == b
    assert action_to_bits(0.0, every) == 2 and action_to_bits(1.0, every) == 8


def test_action_outside_unit_interval_is_clipped():
    assert action_to_bits(-3.0, (2, 4, 8)) == 2 and action_to_bits(7.0, (2, 4, 8)) == 8


def test_bits_the_hardware_cannot_run_round_up_to_supported_ones():
    # BitFusion runs 2, 4, 8: formula bits 3 -> 4, 5..7 -> 8
    got = {action_to_bits(a, (2, 4, 8)) for a in np.linspace(0, 1, 101)}
    assert got == {2, 4, 8}
    assert action_to_bits(1.5 / 7, (2, 4, 8)) == 4  # the formula gives 3


def test_pinned_layers_keep_their_bits_whatever_the_action(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    _, _, info = run_episode(env, lambda t: 0.0)
    for i in problem.pinned:
        assert info["w_bits"][i] == 8 and info["a_bits"][i] == 8


# ----- budget and reward -------------------------------------------------------------------------
def test_budget_is_met_after_enforcement_with_haqs_loop(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    _, _, info = run_episode(env, lambda t: 1.0)  # everything at 8 bits: over budget
    assert info["proposal_met_budget"] is False
    assert info["budget_met"] is True
    w, a = enforce_budget(info["proposed_w_bits"], info["proposed_a_bits"], problem.costs, problem.budget,
                          problem.choices, problem.pinned)
    np.testing.assert_array_equal(info["w_bits"], w)
    np.testing.assert_array_equal(info["a_bits"], a)


def test_policy_within_budget_is_left_alone(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    _, _, info = run_episode(env, lambda t: 0.2)  # 3 bits everywhere: ~0.4 of 8-bit latency
    assert info["proposal_met_budget"] is True
    np.testing.assert_array_equal(info["w_bits"], info["proposed_w_bits"])
    np.testing.assert_array_equal(info["a_bits"], info["proposed_a_bits"])


def test_reward_is_zero_until_the_last_step_then_a_tenth_of_the_accuracy_change_in_points(problem, ledger, ws):
    env = MixedPrecisionEnv(problem, ledger)
    _, rewards, info = run_episode(env, lambda t: 0.6)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    expected = 0.1 * (100 * info["accuracy"] - 100 * ledger.fp32_accuracy("val"))
    assert rewards[-1] == pytest.approx(expected)
    assert info["accuracy"] == ws.evaluator.evaluate(info["w_bits"], info["a_bits"], "val")


def test_info_carries_policy_accuracy_every_cost_and_budget_state(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    _, _, info = run_episode(env, lambda t: 0.5)
    cost = problem.cost(info["w_bits"], info["a_bits"])
    assert info["latency_ms"] == cost.latency_ms and info["energy_mj"] == cost.energy_mj
    assert info["size_mib"] == cost.size_mib and info["bops_g"] == cost.bops_g
    assert 0.0 <= info["accuracy"] <= 1.0 and 0.0 <= info["fp32_accuracy"] <= 1.0
    assert set(info["budget_usage"]) == {"latency"} and info["budget_usage"]["latency"] <= 1.0 + 1e-9
    assert info["trial"] == 0


def test_each_episode_is_one_counted_evaluation_up_to_the_limit(ws):
    problem = make_problem(SearchConfig(hardware="bismo-edge", method="rl", max_evaluations=2), ws)
    ledger = open_ledger(problem, ws, get_method("rl"))
    env = MixedPrecisionEnv(problem, ledger)
    run_episode(env, lambda t: 0.5)
    run_episode(env, lambda t: 0.4)
    assert ledger.evaluations == 2
    with pytest.raises(EvaluationLimitReached):
        run_episode(env, lambda t: 0.3)


def test_environment_is_deterministic(problem, ledger):
    env = MixedPrecisionEnv(problem, ledger)
    acts = np.random.default_rng(1).uniform(size=2 * problem.n_layers)
    first = run_episode(env, lambda t: acts[t])
    second = run_episode(env, lambda t: acts[t])
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]
