"""Every method proposes batches where its algorithm allows, and how a batch is measured never
changes a result: measured as whole batches or one policy at a time, and (where the method has
a batch size) proposed in batches or one by one, the history is the same."""

from __future__ import annotations

import pytest

from haq.api import make_problem, method_options, prepare
from haq.config import SearchConfig
from haq.ledger import Ledger
from haq.methods import get_method, run_method
from tests.conftest import solve

FAST = {
    "uniform": {},
    "random": {},
    "hawq": {"hessian_max_iter": 8, "hessian_batch_size": 64, "use_cache": False},
    "pareto": {"population_size": 6},
    "quantune": {"k": 3, "pool_size": 32, "rounds": 20},
    "rl": {"warmup_episodes": 3},
    "hago": {},
}


@pytest.fixture(scope="module")
def ws():
    return prepare(SearchConfig(hardware="bismo-edge"))


def config(method: str, n: int = 14, **options) -> SearchConfig:
    return SearchConfig(hardware="bismo-edge", budget=("latency=0.6",), method=method, max_evaluations=n,
                        options={**FAST[method], **options})


def history(result):
    return result.history.drop(columns="wall_s")


class BatchLedger(Ledger):
    """A ledger that records how many proposals each ``evaluate_many`` call carried."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def evaluate_many(self, proposals):
        proposals = list(proposals)
        self.batches.append(len(proposals))
        return super().evaluate_many(proposals)


def batches_of(cfg: SearchConfig, ws) -> list[int]:
    spec = get_method(cfg.method)
    options = method_options(cfg)
    problem = make_problem(cfg, ws, options)
    ledger = BatchLedger(problem, ws.evaluator, method=spec.name)
    run_method(spec, problem, ledger, options)
    return ledger.batches


@pytest.mark.parametrize("method", list(FAST))
def test_whole_batches_and_one_policy_at_a_time_give_the_same_history(ws, method):
    _, _, batched = solve(config(method), ws)
    _, _, serial = solve(config(method), ws, max_batch=1)
    assert history(batched).equals(history(serial))


@pytest.mark.parametrize(("method", "option", "one", "many"), [
    ("random", "batch_size", 1, 16),
    ("pareto", "batch_size", 1, 0),  # 0 = one NSGA-II generation
])
def test_proposing_in_batches_or_one_by_one_gives_the_same_history(ws, method, option, one, many):
    _, _, a = solve(config(method, n=20, **{option: one}), ws)
    _, _, b = solve(config(method, n=20, **{option: many}), ws)
    assert history(a).equals(history(b))


def test_uniform_measures_every_candidate_in_one_batch(ws):
    assert batches_of(config("uniform", n=100), ws)[0] >= 4


def test_random_draws_batches_of_its_batch_size(ws):
    assert batches_of(config("random", n=20, batch_size=8), ws)[:2] == [8, 8]


def test_hawq_measures_all_its_ilp_alternatives_in_one_batch(ws):
    assert batches_of(config("hawq", n=5, alternatives=4), ws) == [5]


def test_pareto_measures_one_generation_per_batch(ws):
    sizes = batches_of(config("pareto", n=30, population_size=6), ws)
    assert sizes[0] == 6 + 3  # the enqueued uniform policies ride with generation 0
    assert set(sizes[1:-1]) == {6}


def test_quantune_measures_its_top_k_per_round_as_one_batch(ws):
    assert set(batches_of(config("quantune", n=9, k=3), ws)) == {3}


def test_rl_plays_episodes_per_update_episodes_then_measures_them_together(ws):
    assert batches_of(config("rl", n=8, episodes_per_update=4), ws) == [4, 4]
    assert set(batches_of(config("rl", n=5), ws)) == {1}, "the default is HAQ's loop: one episode, one update"


def test_hago_stays_sequential(ws):
    assert set(batches_of(config("hago", n=10), ws)) == {1}
