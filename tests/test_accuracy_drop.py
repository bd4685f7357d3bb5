"""`--max-accuracy-drop`: the cheapest policy within an accuracy bound (design §8's second
question), answered by every method from what it measured, best by `pareto`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from haq.api import prepare, search
from haq.config import SearchConfig
from haq.errors import ConfigError
from haq.ledger import best_trial
from tests.conftest import run_cli, solve


@pytest.fixture(scope="module")
def workspace():
    return prepare(SearchConfig(hardware="bismo-edge"))


def _run(workspace, drop, n=24, budget="latency=1.0", select="val"):
    cfg = SearchConfig(hardware="bismo-edge", budget=(budget,), method="pareto", max_evaluations=n,
                       options={"population_size": 8}, max_accuracy_drop=drop, select=select)
    problem, ledger, result = solve(cfg, workspace)
    return problem, ledger, result


def test_the_cheapest_measured_policy_within_the_drop_is_returned(workspace):
    _, ledger, result = _run(workspace, drop=1.0)
    fp32 = ledger.fp32_accuracy("val")
    h = result.history
    within = h[h["feasible"] & (h["accuracy"] >= fp32 - 0.01 - 1e-12)]
    assert len(within) >= 1
    m = result.best_policy.metrics
    assert m["latency_ms"] == pytest.approx(within["latency_ms"].min())
    assert m["val_accuracy"] >= fp32 - 0.01 - 1e-12
    assert result.best_policy.search["accuracy_drop_met"] is True
    assert result.best_policy.search["max_accuracy_drop"] == 1.0


def test_a_looser_drop_never_gives_a_costlier_policy_from_the_same_trials(workspace):
    problem, ledger, _ = _run(workspace, drop=None)
    chosen = []
    for drop in (0.0, 0.5, 1.0, 2.0, 5.0, 20.0):
        best = best_trial(ledger.trials, problem.replace(max_accuracy_drop=drop), ledger.fp32_accuracy("val"))
        chosen.append(best.cost.latency_ms)
    assert chosen == sorted(chosen, reverse=True)
    assert chosen[-1] < chosen[0]


def test_pareto_with_a_drop_finds_a_policy_cheaper_than_8_bit_within_it(workspace):
    problem, _, result = _run(workspace, drop=1.0, n=40)
    assert result.best_policy.search["accuracy_drop_met"] is True
    assert result.best_policy.metrics["latency_ms"] < 0.9 * problem.costs.uniform(8).latency_ms


def test_without_a_drop_the_most_accurate_policy_is_returned(workspace):
    _, _, result = _run(workspace, drop=None)
    assert result.best_policy.metrics["val_accuracy"] == pytest.approx(
        result.history.loc[result.history["feasible"], "accuracy"].max())
    assert "accuracy_drop_met" not in result.best_policy.search


def test_an_unmet_drop_returns_the_most_accurate_policy_and_says_so(workspace):
    _, ledger, result = _run(workspace, drop=0.0, n=3, budget="latency=0.45")
    h = result.history[result.history["feasible"]]
    if (h["accuracy"] >= ledger.fp32_accuracy("val")).any():
        pytest.skip("a policy at 0.45 of 8-bit latency kept fp32 accuracy on the validation split")
    assert result.best_policy.search["accuracy_drop_met"] is False
    assert result.best_policy.metrics["val_accuracy"] == pytest.approx(h["accuracy"].max())


def test_the_api_defaults_to_an_uncapped_latency_budget_with_a_drop(tmp_path):
    result = search(hardware="bismo-edge", method="uniform", max_accuracy_drop=0.5, out=tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["budget"] == ["latency=1.0"] and config["max_accuracy_drop"] == 0.5
    assert "max accuracy drop: 0.5 pt" in (tmp_path / "run" / "summary.md").read_text()
    w = np.asarray(result.best_policy.w_bits)
    assert w.max() <= 8


@pytest.mark.parametrize("drop", ["-1", "100", "abc"])
def test_a_bad_drop_is_one_line(drop):
    proc = run_cli("search", "--max-accuracy-drop", drop, "--episodes", "2")
    assert proc.returncode == 2
    assert "--max-accuracy-drop" in proc.stderr or "max-accuracy-drop" in proc.stderr.replace("'", "")
    assert "Traceback" not in proc.stderr


def test_config_refuses_a_negative_drop():
    with pytest.raises(ConfigError, match="percent points"):
        SearchConfig(max_accuracy_drop=-0.5)


@pytest.mark.parametrize(("method", "n", "options"), [
    ("hawq", 6, {"hessian_max_iter": 8, "hessian_batch_size": 64}),
    ("hago", 60, {}),
    ("quantune", 16, {"rounds": 20, "pool_size": 32}),
    ("rl", 24, {"warmup_episodes": 4}),
])
def test_every_method_answers_the_inverse_question_below_uniform_8_bit(workspace, method, n, options):
    result = search(method=method, hardware="bismo-edge", budget="bops=1.0", max_accuracy_drop=1.0,
                    max_evaluations=n, workspace=workspace, **options)
    s, m = result.best_policy.search, result.best_policy.metrics
    assert s["accuracy_drop_met"] is True
    assert m["bops_vs_uniform8"] < 0.9, "cheaper than uniform 8-bit, not just the first policy within the drop"
    assert 1 <= s["evaluations_to_answer"] <= result.evaluations
    assert s["pinned"] == [workspace.layers[0].name, workspace.layers[-1].name]
    w = result.best_policy.w_bits
    assert w[0] == 8 and w[-1] == 8, "the default pinning holds in the answer"


def test_staged_methods_bisect_the_budget_downwards_while_the_drop_holds(workspace):
    from haq.api import make_problem
    from haq.methods.budgets import fraction_range, stage_fraction, stage_plan

    problem = make_problem(SearchConfig(hardware="bismo-edge", budget=("bops=1.0",), max_accuracy_drop=1.0), workspace)
    lo, hi = fraction_range(problem)
    assert hi == pytest.approx(1.0) and 0 < lo < hi
    assert stage_fraction(problem, []) == pytest.approx(hi)
    assert stage_fraction(problem, [True]) == pytest.approx((lo + hi) / 2)
    assert stage_fraction(problem, [True, False]) == pytest.approx((lo + hi) / 2 + (hi - (lo + hi) / 2) / 2)
    assert sum(stage_plan(300)) == 300 and len(stage_plan(300)) == 6 and len(stage_plan(24)) == 2
