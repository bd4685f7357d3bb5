"""The ledger: the one way a method measures accuracy. Batches are cut at the limit as serial
calls would be, committed in proposal order, a repeated policy is answered from the ledger
(and still counted), a resumed run is answered from its history, and the problem stays frozen.
Every accuracy here is a real evaluation of the embedded digits-mobilenet."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from haq.api import make_problem, open_ledger, prepare
from haq.config import SearchConfig
from haq.errors import SearchError
from haq.ledger import Ledger
from haq.methods import get_method
from haq.pool import InProcessPool
from haq.problem import EvaluationLimitReached, Proposal

CONFIG = SearchConfig(hardware="bismo-edge", budget=("latency=0.6",), method="random", max_evaluations=6)


class CountingEvaluator:
    """The workspace's evaluator, counting the policies it is asked to measure."""

    def __init__(self, inner) -> None:
        self.inner, self.scheme, self.measured = inner, inner.scheme, []

    def accuracies(self, policies, split="val"):
        self.measured += [(tuple(w), tuple(a), split) for w, a, _ in policies]
        return self.inner.accuracies(policies, split)

    def fp32_accuracy(self, split="val"):
        return self.inner.fp32_accuracy(split)

    def with_scheme(self, scheme):
        return self if scheme == self.scheme else self.inner.with_scheme(scheme)


@pytest.fixture(scope="module")
def ws():
    return prepare(CONFIG)


@pytest.fixture(scope="module")
def problem(ws):
    return make_problem(CONFIG, ws)  # a frozen value: every test may share it


def proposals(problem, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = np.array([rng.choice(c) for c in problem.choices])
        a = np.array([rng.choice(c) for c in problem.choices])
        out.append(Proposal(*problem.enforce_budget(w, a)))
    return out


def rows(ledger):
    return ledger.history().drop(columns="wall_s").to_dict("records")


def test_a_batch_is_committed_in_proposal_order_with_consecutive_trial_numbers(ws, problem):
    ledger = open_ledger(problem, ws, get_method("random"))
    batch = proposals(problem, 4)
    trials = ledger.evaluate_many(batch)
    assert [t.index for t in trials] == [0, 1, 2, 3]
    for p, t in zip(batch, trials, strict=True):
        assert np.array_equal(p.w_bits, t.w_bits) and np.array_equal(p.a_bits, t.a_bits)


def test_batched_and_serial_measurement_give_the_same_history(ws, problem):
    batch = proposals(problem, 5)
    serial = open_ledger(problem, ws, get_method("random"))
    for p in batch:
        serial.evaluate(p)
    batched = open_ledger(problem, ws, get_method("random"))
    batched.evaluate_many(batch)
    assert rows(serial) == rows(batched)


def test_a_batch_longer_than_the_evaluations_left_is_cut_exactly_where_serial_calls_stop(ws, problem):
    batch = proposals(problem, 9)
    serial = open_ledger(problem, ws, get_method("random"))
    with pytest.raises(EvaluationLimitReached):
        for p in batch:
            serial.evaluate(p)
    batched = open_ledger(problem, ws, get_method("random"))
    with pytest.raises(EvaluationLimitReached):
        batched.evaluate_many(batch)
    assert batched.evaluations == 6 and rows(batched) == rows(serial)
    with pytest.raises(EvaluationLimitReached):
        batched.evaluate(batch[0])


def test_a_policy_measured_before_is_answered_from_the_ledger_and_still_counts(ws, problem):
    counting = CountingEvaluator(ws.evaluator)
    ledger = Ledger(problem, counting, method="random")
    p, q = proposals(problem, 2)
    trials = ledger.evaluate_many([p, q, p, p])  # a repeat within the batch too
    ledger.evaluate(q)
    assert len(counting.measured) == 2, "each distinct policy is measured once"
    assert [t.source for t in ledger.trials] == ["measured", "measured", "repeat", "repeat", "repeat"]
    assert trials[2].accuracy == trials[0].accuracy and ledger.evaluations == 5 and ledger.repeats == 3


def test_a_resumed_run_is_answered_from_its_history_until_it_diverges(ws, problem):
    batch = proposals(problem, 4)
    first = open_ledger(problem, ws, get_method("random"))
    first.evaluate_many(batch)
    history = {int(r["trial"]): {k: str(v) for k, v in r.items()} for r in first.history().to_dict("records")}
    counting = CountingEvaluator(ws.evaluator)
    other = proposals(problem, 1, seed=9)[0]
    resumed = Ledger(problem, counting, method="random", replay=history)
    resumed.evaluate_many([*batch[:3], other])  # the re-run diverges at trial 3
    assert [t.source for t in resumed.trials] == ["replay", "replay", "replay", "measured"]
    assert len(counting.measured) == 1
    assert [t.accuracy for t in resumed.trials[:3]] == [t.accuracy for t in first.trials[:3]]


def test_a_non_finite_accuracy_stops_with_one_line_after_committing_the_trials_before_it(ws, problem):
    class NaNThird(CountingEvaluator):
        def accuracies(self, policies, split="val"):
            out = super().accuracies(policies, split)
            return [float("nan") if len(self.measured) == 3 else acc for acc in out]

    ledger = Ledger(problem, NaNThird(ws.evaluator), method="random")
    with pytest.raises(SearchError, match=r"trial 2 \(random\) measured a non-finite accuracy"):
        ledger.evaluate_many(proposals(problem, 4))
    assert ledger.evaluations == 2


def test_the_pool_may_take_the_batch_in_chunks_without_changing_anything(ws, problem):
    class RecordingPool(InProcessPool):
        sizes: list[int] = []

        def measure(self, items, split="val"):
            self.sizes.append(len(items))
            return super().measure(items, split)

    batch = proposals(problem, 5)
    whole = Ledger(problem, ws.evaluator, method="random")
    whole.evaluate_many(batch)
    pool = RecordingPool(ws.evaluator)
    chunked = Ledger(problem, ws.evaluator, method="random", pool=pool, max_batch=2)
    chunked.evaluate_many(batch)
    assert pool.sizes == [2, 2, 1] and rows(whole) == rows(chunked)


def test_the_problem_is_a_frozen_value(problem):
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.max_evaluations = 10  # type: ignore[misc]
    assert problem.replace(seed=3).seed == 3 and problem.seed == CONFIG.seed


def test_a_proposal_under_the_problems_own_scheme_is_recorded_as_the_runs_scheme(ws, problem):
    ledger = open_ledger(problem, ws, get_method("random"))
    p = proposals(problem, 1)[0]
    t = ledger.evaluate(Proposal(p.w_bits, p.a_bits, scheme=problem.scheme))
    assert t.scheme is None and ledger.history()["quant"].tolist() == [""]


def test_proposals_hold_read_only_copies_of_their_bits():
    w = np.array([8, 4, 8])
    p = Proposal(w, w)
    w[1] = 2
    assert p.w_bits[1] == 4
    with pytest.raises(ValueError):
        p.w_bits[0] = 2
