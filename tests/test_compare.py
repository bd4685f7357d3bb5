"""`haq compare`: the same problem, the same evaluation limit, one table; and the baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from haq.api import make_problem, open_ledger, prepare
from haq.compare import COLUMNS, compare
from haq.config import SearchConfig
from haq.errors import ConfigError, RunDirError, SearchError, UnknownNameError
from haq.methods import get_method, run_method
from tests.conftest import run_cli, solve


@pytest.fixture(scope="module")
def workspace():
    return prepare(SearchConfig(hardware="bismo-edge"))


def _config(**kw) -> SearchConfig:
    return SearchConfig(**({"hardware": "bismo-edge", "budget": ("latency=0.6",), "max_evaluations": 8} | kw))


def test_compare_gives_every_method_the_same_limit_and_one_row_each(workspace, tmp_path):
    table = compare(_config(), ["uniform", "random"], seeds=2, out=tmp_path, workspace=workspace)
    assert list(table.columns) == COLUMNS and list(table["method"]) == ["uniform", "random"]
    assert (table["evaluations"] <= 8).all() and table["budget_met"].all()
    assert table["on_front"].any()
    for name in ("comparison.csv", "comparison.md", "history.csv", "plots/pareto.png",
                 "policies/uniform-seed0.json", "policies/random-seed1.json"):
        assert (tmp_path / name).is_file(), name
    history = pd.read_csv(tmp_path / "history.csv")
    assert set(history["method"]) == {"uniform", "random"} and set(history["seed"]) == {0, 1}


def test_an_unknown_method_fails_before_any_work(workspace):
    with pytest.raises(UnknownNameError, match="did you mean random"):
        compare(_config(), ["uniform", "randm"], workspace=workspace)


def test_zero_seeds_is_refused(workspace):
    with pytest.raises(ConfigError, match="--seeds 0"):
        compare(_config(), ["uniform"], seeds=0, workspace=workspace)


def test_uniform_returns_the_best_feasible_uniform_policy(workspace):
    problem, _, result = solve(_config(method="uniform", max_evaluations=100), workspace)
    free = problem.free_layers
    w, a = result.best_policy.w_bits, result.best_policy.a_bits
    assert len(set(w[free])) == 1 and len(set(a[free])) == 1
    assert problem.budget.satisfied(problem.cost(w, a))
    h = result.history
    assert result.best_policy.metrics["val_accuracy"] == h.loc[h["feasible"], "accuracy"].max()


def test_random_is_seeded_and_budget_enforced(workspace):
    def run(seed):
        return solve(_config(method="random", seed=seed), workspace)[2]

    a, b, c = run(3), run(3), run(4)
    assert list(a.history["w_bits"]) == list(b.history["w_bits"])
    assert list(a.history["w_bits"]) != list(c.history["w_bits"])
    assert a.history["feasible"].all()


def test_too_few_evaluations_for_a_method_names_the_minimum(workspace):
    from dataclasses import replace

    spec = replace(get_method("uniform"), min_evaluations=lambda p: 5)
    problem = make_problem(_config(method="uniform", max_evaluations=2), workspace)
    with pytest.raises(SearchError, match="--max-evaluations 2 is too few for uniform: it needs at least 5"):
        run_method(spec, problem, open_ledger(problem, workspace, spec), spec.options_type())


def test_a_budget_a_method_cannot_express_is_named(workspace):
    from dataclasses import replace

    spec = replace(get_method("uniform"), budget_keys=("size",))
    problem = make_problem(_config(method="uniform"), workspace)
    with pytest.raises(SearchError, match="method uniform cannot express a latency budget"):
        run_method(spec, problem, open_ledger(problem, workspace, spec), spec.options_type())


def test_cli_compare_prints_the_table_and_writes_it(tmp_path):
    proc = run_cli("compare", "--methods", "uniform,random", "--hardware", "bismo-edge", "--budget", "latency=0.6",
                   "--max-evaluations", "5", "--seeds", "1", "--out", str(tmp_path / "cmp"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "| uniform |" in proc.stdout and "| random |" in proc.stdout
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("\n") == 4


def test_policies_from_compare_load_and_fit_the_model(workspace, tmp_path):
    from haq.policy import Policy

    compare(_config(), ["uniform"], seeds=1, out=tmp_path, workspace=workspace)
    p = Policy.load(tmp_path / "policies" / "uniform-seed0.json").matched_to(workspace.layers)
    assert np.isfinite(workspace.costs.cost(p.w_bits, p.a_bits).latency_ms)


def test_a_comparison_is_a_run_directory_that_refuses_to_be_overwritten(workspace, tmp_path):
    compare(_config(), ["uniform"], seeds=1, out=tmp_path / "cmp", workspace=workspace)
    assert (tmp_path / "cmp" / "runs" / "uniform-seed0" / "policy.json").is_file()
    assert not (tmp_path / "cmp" / ".lock").exists()
    with pytest.raises(RunDirError, match="holds a finished comparison; pass --force"):
        compare(_config(), ["uniform"], seeds=1, out=tmp_path / "cmp", workspace=workspace)
    table = compare(_config(), ["uniform"], seeds=1, out=tmp_path / "cmp", workspace=workspace, force=True)
    assert list(table["method"]) == ["uniform"]


def test_a_killed_comparison_resumes_to_the_same_table(workspace, tmp_path):
    full = compare(_config(), ["uniform", "random"], seeds=2, out=tmp_path / "full", workspace=workspace)
    part = tmp_path / "part"
    compare(_config(), ["uniform", "random"], seeds=2, out=part, workspace=workspace)
    # killed during random seed 1: its run has 3 trials, no result; the comparison has no table
    run = part / "runs" / "random-seed1"
    lines = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(lines[:4]) + "\n")
    for name in ("result.json", "policy.json"):
        (run / name).unlink()
    for name in ("comparison.csv", "comparison.md"):
        (part / name).unlink()
    with pytest.raises(RunDirError, match="pass --resume"):
        compare(_config(), ["uniform", "random"], seeds=2, out=part, workspace=workspace)
    resumed = compare(_config(), ["uniform", "random"], seeds=2, out=part, workspace=workspace, resume=True)
    cols = [c for c in full.columns if c != "wall_s"]
    assert resumed[cols].equals(full[cols])
    h = pd.read_csv(run / "history.csv")
    assert list(h["trial"]) == list(range(8))
