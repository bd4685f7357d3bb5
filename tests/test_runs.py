"""Run directories: the files design §3 promises, locking, resume, history flushing."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from haq.api import search
from haq.config import SearchConfig
from haq.errors import RunDirError
from haq.runs import HistoryWriter, RunDir


def run_search(config: SearchConfig, out, resume: bool = False):
    return search(config, out=out, resume=resume)


def _cfg(**kw) -> SearchConfig:
    base = dict(method="random", hardware="bismo-edge", budget=("latency=0.6",), max_evaluations=6, seed=1)
    return SearchConfig(**(base | kw))


def test_a_search_writes_the_whole_run_directory(tmp_path):
    result = run_search(_cfg(), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "policy.json", "history.csv", "pareto.csv", "summary.md", "result.json",
                 "plots/bitwidths.png", "plots/pareto.png", "plots/search.png"):
        assert (run / name).is_file(), name
    assert not (run / ".lock").exists()
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns[:6]) == ["trial", "method", "wall_s", "w_bits", "a_bits", "accuracy"]
    assert len(history) == result.evaluations == 6
    assert len(history.loc[0, "w_bits"].split()) == 17
    policy = json.loads((run / "policy.json").read_text())
    assert policy["search"]["method"] == "random" and policy["hardware"] == "bismo-edge"


def test_the_best_policy_meets_the_budget_and_is_measured_on_test(tmp_path):
    result = run_search(_cfg(), tmp_path / "run")
    m = result.best_policy.metrics
    ref = result.per_layer  # per-layer costs add up to the policy's cost
    assert m["latency_ms"] == pytest.approx(ref["latency_ms"].sum())
    assert m["val_accuracy"] in set(result.history["accuracy"])
    assert 0 <= m["accuracy"] <= 1


def test_an_existing_run_is_not_overwritten(tmp_path):
    run_search(_cfg(), tmp_path / "run")
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        run_search(_cfg(), tmp_path / "run")


def test_resume_with_another_config_names_the_difference(tmp_path):
    run_search(_cfg(), tmp_path / "run")
    with pytest.raises(RunDirError, match="was run with hardware='bismo-edge', not 'bitfusion'"):
        run_search(_cfg(hardware="bitfusion"), tmp_path / "run", resume=True)


def test_a_run_in_progress_is_locked(tmp_path):
    run = RunDir(tmp_path / "run")
    run.open({"a": 1}, resume=False)
    (tmp_path / "run" / ".lock").write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(RunDirError, match=r"in use by a running search \(pid"):
        RunDir(tmp_path / "run").open({"a": 1}, resume=True)


def test_a_stale_lock_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    run.open({"a": 1}, resume=False)
    (tmp_path / "run" / ".lock").write_text("999999999")
    RunDir(tmp_path / "run").open({"a": 1}, resume=True)


def test_resume_answers_measured_policies_from_history_and_ends_identically(tmp_path):
    full = run_search(_cfg(max_evaluations=8), tmp_path / "full")
    part = tmp_path / "part"
    run_search(_cfg(max_evaluations=8), part)
    lines = (part / "history.csv").read_text().splitlines()
    (part / "history.csv").write_text("\n".join(lines[:5]) + "\n")  # killed after 4 trials
    (part / "policy.json").unlink()
    resumed = run_search(_cfg(max_evaluations=8), part, resume=True)
    assert json.loads((part / "policy.json").read_text())["layers"] == json.loads((tmp_path / "full" / "policy.json").read_text())["layers"]
    h = pd.read_csv(part / "history.csv")
    assert list(h["trial"]) == list(range(8))
    assert list(h["accuracy"]) == list(full.history["accuracy"])
    assert resumed.evaluations == 8


def test_history_writer_drops_rows_a_diverging_rerun_replaces(tmp_path):
    path = tmp_path / "history.csv"
    w = HistoryWriter(path)
    row = {"trial": 0, "method": "m", "wall_s": 0.1, "w_bits": "8 8", "a_bits": "8 8", "accuracy": 0.5,
           "latency_ms": 1.0, "energy_mj": None, "size_mib": 1.0, "bops_g": 1.0, "feasible": True, "reward": None,
           "quant": ""}
    w(row)
    w(row | {"trial": 1, "w_bits": "4 4"})
    w2 = HistoryWriter(path)
    assert len(w2.existing) == 2
    w2(row)  # same as before: skipped
    w2(row | {"trial": 1, "w_bits": "2 2"})  # diverged: replaces trial 1
    h = pd.read_csv(path)
    assert list(h["w_bits"]) == ["8 8", "2 2"]


def test_a_failed_start_writes_nothing_to_out(tmp_path):
    from haq.errors import BudgetError

    with pytest.raises(BudgetError, match="below the cheapest reachable"):
        run_search(_cfg(budget=("latency=0.01",)), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run_search(_cfg(), tmp_path / "run")  # the fixed command then works in the same --out


def test_a_finished_run_reads_back_as_its_result(tmp_path):
    result = run_search(_cfg(), tmp_path / "run")
    back = RunDir(tmp_path / "run").load_result()
    assert back.best_policy == result.best_policy
    assert back.evaluations == result.evaluations and back.repeats == result.repeats
    cols = ["trial", "w_bits", "a_bits", "accuracy", "latency_ms", "feasible"]
    assert back.history[cols].equals(result.history[cols])
