"""Choosing the returned policy by a rule that holds on unseen data, and saying how sure each
accuracy is: the fidelity set (every image a search may see, never test), KL / agreement
re-ranking of the top candidates, 95 % Wilson intervals with split sizes, the noise warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from haq.api import prepare
from haq.config import SearchConfig
from haq.data import load_data, load_digits
from haq.errors import ConfigError, DataError
from haq.methods.base import rerank
from haq.stats import resolvable_difference, standard_error, wilson_interval, within_noise
from tests.conftest import run_cli, solve
from tests.test_data import _make_imagefolder


@pytest.fixture(scope="module")
def ws():
    return prepare(SearchConfig())


def config(select: str, **kw) -> SearchConfig:
    return SearchConfig(method="random", max_evaluations=24, select=select, **kw)


# ----- the fidelity set ----------------------------------------------------------------------
def test_the_fidelity_set_is_every_image_a_search_may_see_and_never_a_test_image():
    data = load_digits()
    parts = data.fidelity_parts()
    assert sum(len(p) for p in parts) == len(data.train) + len(data.val) == 1437
    test_rows = {tuple(x.flatten().tolist()) for x in data.test.x}
    seen = {tuple(x.flatten().tolist()) for p in parts for x in p.x}
    assert not (test_rows & seen - {tuple(x.flatten().tolist()) for x in data.train.x}), "no test image"
    assert data.fidelity_description() == {"images": 1437, "source": "train + val", "labelled_validation_images": 359}


def test_unlabeled_images_join_an_imagefolders_fidelity_set(tmp_path):
    _make_imagefolder(tmp_path / "data", classes=2, per_class=10)
    _make_imagefolder(tmp_path / "extra", classes=1, per_class=7)
    data = load_data(f"imagefolder:{tmp_path / 'data'}", image_size=32, unlabeled=str(tmp_path / "extra"))
    assert data.unlabeled is not None and len(data.unlabeled) == 7 and (data.unlabeled.y == -1).all()
    assert data.fidelity_description()["source"] == "calib + val + unlabeled"


def test_unlabeled_images_for_the_digits_data_are_one_line():
    with pytest.raises(DataError, match="drop --unlabeled"):
        load_data("digits", unlabeled="/tmp")


def test_fidelity_of_the_float_model_is_perfect_and_lower_bits_drift_away(ws):
    n = len(ws.layers)
    kl32, agree32 = ws.evaluator.fidelity(np.full(n, 32), np.full(n, 32))
    kl8, _ = ws.evaluator.fidelity(np.full(n, 8), np.full(n, 8))
    kl3, agree3 = ws.evaluator.fidelity(np.full(n, 3), np.full(n, 3))
    assert kl32 == pytest.approx(0.0, abs=1e-12) and agree32 == 1.0
    assert 0 < kl8 < kl3 and agree3 < 1.0


# ----- the selection rule ----------------------------------------------------------------------
def test_kl_re_ranks_the_top_candidates_within_one_standard_error(ws):
    _, ledger, result = solve(config("kl", select_top_k=5), ws)
    rows = result.extras["selection"]
    assert len(rows) == 5 and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    best_val = max(r["val_accuracy"] for r in rows)
    n = ledger.split_size("val")
    margin = max(standard_error(best_val, n), 1 / n)
    for r in rows:
        assert r["eligible"] == (best_val - r["val_accuracy"] <= margin + 1e-12)
    assert chosen["eligible"] and chosen["kl"] == min(r["kl"] for r in rows if r["eligible"])
    top_val = sorted({t.accuracy for t in ledger.trials if t.feasible}, reverse=True)
    assert min(r["val_accuracy"] for r in rows) >= top_val[min(4, len(top_val) - 1)] - 1e-12
    assert result.best_policy.search["select"] == "kl"
    assert result.best_policy.metrics["val_accuracy"] == chosen["val_accuracy"]


def test_agreement_picks_the_highest_top1_agreement_among_the_eligible(ws):
    _, _, result = solve(config("agreement", select_top_k=4), ws)
    rows = result.extras["selection"]
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["agreement"] == max(r["agreement"] for r in rows if r["eligible"])


def test_candidates_validation_separates_are_not_re_ranked():
    """359 validation images, best at 351 correct: one standard error is ~2.9 images, so a
    candidate 4 images behind is not eligible however close to fp32 it is, one 2 behind is."""
    n = 359
    val = [351 / n, 349 / n, 347 / n]
    chosen, eligible = rerank("kl", val, kl=[0.20, 0.19, 0.01], agreement=[0.98, 0.98, 0.99], n_val=n)
    assert eligible == [True, True, False] and chosen == 1
    chosen, _ = rerank("agreement", val, kl=[0.2, 0.1, 0.0], agreement=[0.981, 0.980, 0.999], n_val=n)
    assert chosen == 0  # ties and near-ties: the first (the higher validation accuracy)


def test_at_perfect_validation_accuracy_one_image_behind_is_still_eligible():
    """At 100 % p(1-p) is 0 and the Wilson-based error is 0.97 images: the margin is never
    below one image (the smallest difference a split shows), so the search's best-of-many
    100 % does not stand alone; two images behind is a difference."""
    assert standard_error(1.0, 359) * 359 == pytest.approx(0.97, abs=0.01)
    chosen, eligible = rerank("kl", [1.0, 358 / 359, 357 / 359], [0.1, 0.05, 0.0], [1.0, 1.0, 1.0], 359)
    assert eligible == [True, True, False] and chosen == 1


def test_val_keeps_hags_rule_and_measures_no_fidelity(ws):
    _, ledger, result = solve(config("val"), ws)
    assert "selection" not in result.extras
    assert result.best_policy.metrics["val_accuracy"] == max(t.accuracy for t in ledger.trials if t.feasible)


def test_the_same_trials_give_the_same_choice(ws):
    a = solve(config("kl"), ws)[2].best_policy
    b = solve(config("kl"), ws)[2].best_policy
    assert a == b


def test_a_bad_rule_is_one_line():
    with pytest.raises(ConfigError, match="--select 'best' is unknown: use val, kl, agreement"):
        SearchConfig(select="best")
    proc = run_cli("search", "--select", "best")
    assert proc.returncode == 2 and "--select 'best' is unknown" in proc.stderr


# ----- honest uncertainty ----------------------------------------------------------------------
def test_wilson_intervals_match_the_closed_form():
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(1.0, 359)[1] == 1.0 and wilson_interval(1.0, 359)[0] == pytest.approx(0.9894, abs=1e-4)
    assert within_noise(0.9916, 0.9944, 360) and not within_noise(0.90, 0.99, 360)
    assert resolvable_difference(0.99, 359) > 0.01 > resolvable_difference(0.99, 10_000)


def test_every_reported_accuracy_carries_its_split_size_and_interval(ws, tmp_path):
    run_cli("search", "--method", "random", "--max-evaluations", "6", "--out", str(tmp_path / "run"), "--quiet")
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    m = policy["metrics"]
    for name, n in (("accuracy", 360), ("val_accuracy", 359), ("fp32_accuracy", 360)):
        assert m[f"{name}_n"] == n
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "95 % Wilson intervals" in summary and "n=360" in summary and "fp32" in summary
    assert "within noise of fp32" in summary or "below fp32 beyond noise" in summary
    assert "## The candidates re-ranked" in summary
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["fidelity"] == {"images": 1437, "source": "train + val", "labelled_validation_images": 359}
    assert config["select"] == "kl"


def test_the_cli_warns_once_when_the_validation_split_cannot_tell_one_point(tmp_path):
    proc = run_cli("search", "--method", "uniform", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning:" in ln]
    assert len(warnings) == 1 and "359 images" in warnings[0] and "within noise" in warnings[0]
    assert "[" in proc.stdout and "n=360" in proc.stdout, "the printed table carries the interval"


def test_a_resumed_run_with_the_fidelity_record_resumes(tmp_path):
    args = ("search", "--method", "random", "--max-evaluations", "4", "--out", str(tmp_path / "run"), "--quiet")
    assert run_cli(*args).returncode == 0
    (tmp_path / "run" / "result.json").unlink()
    assert run_cli(*args, "--resume").returncode == 0
