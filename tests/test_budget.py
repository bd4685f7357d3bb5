"""Budgets parse the way the CLI documents them; size and BOPs match HAWQ-V3's tables."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

from haq.budget import Budget, check_reachable, enforce_budget
from haq.costs import Cost, CostModel
from haq.errors import BudgetError
from haq.layers import describe


@pytest.fixture(scope="module")
def resnet18_layers():
    return describe(torchvision.models.resnet18(), (3, 224, 224))


def test_resnet18_w8a8_is_11_1_mib_and_116_gbops(resnet18_layers):
    c = CostModel(resnet18_layers, None).uniform(8)
    assert round(c.size_mib, 1) == 11.1
    assert round(c.bops_g) == 116


def test_resnet18_w4a4_is_5_6_mib_and_29_gbops(resnet18_layers):
    c = CostModel(resnet18_layers, None).uniform(4)
    assert c.size_mib == pytest.approx(5.57, abs=0.01)
    assert c.bops_g == pytest.approx(29.0, abs=0.1)


def test_cost_model_equals_the_plain_formulas(resnet18_layers):
    rng = np.random.default_rng(0)
    w, a = rng.integers(2, 9, len(resnet18_layers)), rng.integers(2, 9, len(resnet18_layers))
    c = CostModel(resnet18_layers, None).cost(w, a)
    size = sum(s.params * int(b) / 8 + 4 * s.bias_params for s, b in zip(resnet18_layers, w, strict=True)) / 2**20
    bops = sum(s.macs * int(x) * int(y) for s, x, y in zip(resnet18_layers, w, a, strict=True)) / 1e9
    assert c.size_mib == pytest.approx(size)
    assert c.bops_g == pytest.approx(bops)
    assert c.latency_ms is None and c.energy_mj is None


def test_per_layer_costs_add_up_to_the_policy_cost(resnet18_layers):
    rng = np.random.default_rng(1)
    w, a = rng.integers(2, 9, len(resnet18_layers)), rng.integers(2, 9, len(resnet18_layers))
    costs = CostModel(resnet18_layers, None)
    frame = costs.per_layer(w, a)
    assert frame["size_mib"].sum() == pytest.approx(costs.cost(w, a).size_mib)
    assert frame["bops_g"].sum() == pytest.approx(costs.cost(w, a).bops_g)
    assert costs.layer_size_mib(w).sum() + costs.bias_mib == pytest.approx(costs.cost(w, a).size_mib)
    grid = np.stack([w, w], axis=1)  # (L, K) option tables for an ILP
    assert costs.layer_bops_g(grid, grid).shape == (len(resnet18_layers), 2)


@pytest.mark.parametrize(
    ("text", "key", "value", "relative"),
    [
        ("latency=0.5", "latency", 0.5, True),
        ("latency=0.3ms", "latency", 0.3, False),
        ("latency=2s", "latency", 2000.0, False),
        ("energy=0.2mJ", "energy", 0.2, False),
        ("size=1.5MiB", "size", 1.5, False),
        ("size=2MB", "size", 2e6 / 2**20, False),
        ("bops=2G", "bops", 2.0, False),
        ("bops=500M", "bops", 0.5, False),
    ],
)
def test_budget_items_parse_with_units(text, key, value, relative):
    (c,) = Budget.parse([text]).constraints
    assert (c.key, c.relative) == (key, relative)
    assert c.value == pytest.approx(value)


def test_several_items_all_must_hold():
    b = Budget.parse(["latency=0.5", "size=1MiB,bops=1G"])
    assert b.keys == ("latency", "size", "bops")
    r = b.resolve(Cost(2.0, None, 4.0, 10.0))
    assert r.limits == {"latency": 1.0, "size": 1.0, "bops": 1.0}
    assert r.satisfied(Cost(1.0, None, 1.0, 1.0))
    assert not r.satisfied(Cost(1.0, None, 1.01, 1.0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latncy=0.5", "unknown: did you mean latency"),
        ("speed=3", "unknown: use one of latency, energy, size, bops"),
        ("latency", "malformed"),
        ("latency=-1", "must be positive"),
        ("latency=0", "must be positive"),
        ("size=3ms", "unit 'ms' does not fit size"),
    ],
)
def test_bad_budgets_are_one_line_errors(text, message):
    with pytest.raises(BudgetError, match=message):
        Budget.parse([text])


def test_a_key_given_twice_is_refused():
    with pytest.raises(BudgetError, match="given twice"):
        Budget.parse(["latency=0.5", "latency=0.4"])


@pytest.mark.parametrize("text", ["energy=0.5", "energy=0.2mJ"])
def test_an_energy_budget_needs_a_hardware_with_energy(text):
    with pytest.raises(BudgetError, match="gives no energy"):
        Budget.parse(text).resolve(Cost(1.0, None, 1.0, 1.0))


def _size_problem(layers, limit_mib):
    costs = CostModel(layers, None)
    budget = Budget.parse([f"size={limit_mib}MiB"]).resolve(costs.uniform(8))
    choices = [(2, 3, 4, 5, 6, 7, 8)] * len(layers)
    return costs, budget, choices


def test_budget_is_met_after_enforcement_and_pinned_layers_stay(resnet18_layers):
    costs, budget, choices = _size_problem(resnet18_layers, 6.0)
    w = a = np.full(len(resnet18_layers), 8)
    pinned = (0, len(resnet18_layers) - 1)
    w2, a2 = enforce_budget(w, a, costs, budget, choices, pinned)
    assert budget.satisfied(costs.cost(w2, a2))
    assert w2[0] == a2[0] == w2[-1] == a2[-1] == 8
    assert (w2 <= 8).all() and (w2 >= 2).all()


def test_enforcement_lowers_the_last_layers_first(resnet18_layers):
    costs, budget, choices = _size_problem(resnet18_layers, 10.5)
    w = a = np.full(len(resnet18_layers), 8)
    w2, _ = enforce_budget(w, a, costs, budget, choices, ())
    lowered = np.flatnonzero(w2 < 8)
    assert lowered.size and lowered.min() > len(resnet18_layers) // 2


def test_a_feasible_policy_is_not_changed(resnet18_layers):
    costs, budget, choices = _size_problem(resnet18_layers, 20)
    w = a = np.full(len(resnet18_layers), 8)
    w2, a2 = enforce_budget(w, a, costs, budget, choices)
    assert (w2 == w).all() and (a2 == a).all()


def test_an_unreachable_budget_is_refused_naming_the_cheapest_reachable(resnet18_layers):
    costs, budget, choices = _size_problem(resnet18_layers, 0.5)
    with pytest.raises(BudgetError, match=r"size=0.5MiB is below the cheapest reachable .* MiB"):
        check_reachable(costs, budget, choices, (0, 20))
