"""`pareto`: NSGA-II returns a front and a feasible best policy, seeded."""

from __future__ import annotations

import pytest

from haq.api import prepare
from haq.config import SearchConfig
from tests.conftest import solve


@pytest.fixture(scope="module")
def workspace():
    return prepare(SearchConfig(hardware="bismo-edge"))


def _run(workspace, seed=0, n=24):
    cfg = SearchConfig(hardware="bismo-edge", budget=("latency=0.6",), method="pareto", seed=seed, max_evaluations=n,
                       options={"population_size": 8})
    problem, _, result = solve(cfg, workspace)
    return problem, result


def test_pareto_returns_a_non_dominated_front_and_a_feasible_best(workspace):
    problem, result = _run(workspace)
    assert result.evaluations == 24
    front = result.pareto
    assert len(front) >= 2
    assert front["latency_ms"].is_monotonic_increasing and front["accuracy"].is_monotonic_increasing
    assert problem.budget.satisfied(problem.cost(result.best_policy.w_bits, result.best_policy.a_bits))
    assert result.history["feasible"].sum() >= 1


def test_pareto_is_deterministic_given_the_seed(workspace):
    _, a = _run(workspace, seed=5, n=12)
    _, b = _run(workspace, seed=5, n=12)
    assert list(a.history["w_bits"]) == list(b.history["w_bits"])
