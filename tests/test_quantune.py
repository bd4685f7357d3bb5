"""Quantune (design §7.4): the configuration space, the surrogate loop, the paper's table,
and the registered method.

The surrogate is real XGBoost with the paper's hyper-parameters unless a test says
otherwise. The paper's measured table is copied in ``tests/data`` so these run anywhere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from haq.errors import ConfigError, DataError
from haq.methods.quantune.arch import (
    REFERENCE_ARCHITECTURES,
    REFERENCE_TORCHVISION,
    ArchFeatures,
    architecture_features,
)
from haq.methods.quantune.published import (
    decode_genome,
    genetic_on_table,
    grid_on_table,
    grid_order,
    quantune_on_table,
    random_on_table,
    trials_to,
)
from haq.methods.quantune.space import ConfigEncoder, QuantuneConfig, global_configs
from haq.methods.quantune.surrogate import Observations, SurrogateOptions, search_finite, select
from haq.methods.quantune.table import PAPER_FP32_TOP1, load_reference_table
from haq.problem import EvaluationLimitReached
from haq.scheme import QuantScheme

from .conftest import DATA

TABLE = DATA / "quantune_measured_configs.csv"


@pytest.fixture(scope="module")
def table():
    return load_reference_table(TABLE)


def random_expectation(table, model: str) -> float:
    """Mean trials uniform random order needs to hit one of the b best of n: (n+1)/(b+1)."""
    acc = table.accuracy[table.rows(model)]
    return (len(acc) + 1) / (np.sum(acc == acc.max()) + 1)


# ----- the configuration space ------------------------------------------------------------------
def test_the_global_space_is_the_papers_48_per_precision():
    configs = global_configs(("int8", "mixed"))
    assert len(configs) == len(set(configs)) == 96
    first = configs[0]  # R's expand.grid: the first level of every factor
    assert (first.calibration, first.granularity, first.clipping, first.schema) == (1, "per-tensor", "max", "asymmetric")
    assert configs[1].schema == "symmetric" and configs[4].clipping == "KL"  # schema varies fastest


def test_one_hot_encoding_round_trips():
    enc = ConfigEncoder()
    configs = global_configs(("int8", "mixed"))
    x = enc.encode(configs, REFERENCE_ARCHITECTURES["resnet18"])
    assert x.shape == (96, 13 + 8)
    assert np.all(x[:, :13].sum(axis=1) == 5), "one hot level per field"
    assert [enc.decode(r) for r in x] == configs
    np.testing.assert_array_equal(x[:, 13:], np.tile(REFERENCE_ARCHITECTURES["resnet18"].vector(), (96, 1)))


def test_one_hot_encoding_with_per_layer_bits_round_trips():
    enc = ConfigEncoder(n_layers=3)
    c = QuantuneConfig.with_bits(global_configs()[7], (8, 4, 8), (8, 6, 2))
    row = enc.encode([c], ArchFeatures.unknown())[0]
    assert enc.decode(row) == c and c.precision == "mixed"
    assert row[13:17].tolist() == [20 / 3, 4, 16 / 3, 2]  # w mean, w min, a mean, a min
    int8_without_bits = enc.encode([global_configs()[0]], ArchFeatures.unknown())[0]
    assert int8_without_bits[13:17].tolist() == [8, 8, 8, 8] and np.isnan(int8_without_bits[17:23]).all()


def test_a_row_that_is_not_one_hot_is_refused():
    enc = ConfigEncoder()
    row = enc.encode(global_configs()[:1], ArchFeatures.unknown())[0]
    row[0] = 1.0  # two calibration levels hot
    row[1] = 1.0
    with pytest.raises(ConfigError, match="not one-hot in calibration"):
        enc.decode(row)


def test_configuration_maps_to_the_evaluators_scheme():
    c = QuantuneConfig(calibration=1000, clipping="KL", schema="symmetric-uint8", granularity="per-tensor")
    assert c.to_scheme(256) == QuantScheme("symmetric", "per-tensor", "unsigned", "entropy", 26)
    assert QuantuneConfig(calibration=1).calibration_images(256) == 1
    assert QuantuneConfig(calibration=10000).calibration_images(256) == 256
    p2 = QuantuneConfig(clipping="max", schema="power-of-two").to_scheme(10)
    assert (p2.weight_mode, p2.activation_mode, p2.calibration) == ("power-of-two", "power-of-two", "minmax")


def test_unknown_levels_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="schema 'int4' is unknown: use one of asymmetric"):
        QuantuneConfig(schema="int4")


# ----- architecture features -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REFERENCE_ARCHITECTURES))
def test_reference_architecture_features_are_counted_from_torchvision(name):
    ctor, kwargs = REFERENCE_TORCHVISION[name]
    with torch.device("meta"):  # counts need no weights
        model = getattr(torchvision.models, ctor)(**kwargs)
    assert architecture_features(model) == REFERENCE_ARCHITECTURES[name]


# ----- the paper's table ------------------------------------------------------------------------
def test_reference_table_holds_the_papers_space_and_published_bests(table):
    assert table.model_names == list(PAPER_FP32_TOP1)
    for model in table.model_names:
        int8 = [table.configs[r] for r in table.rows(model) if table.configs[r].precision == "int8"]
        assert sorted(int8, key=global_configs().index) == global_configs()
    assert len(table.rows("ShuffleNet")) == 64 and len(table.rows("googlenet_slim_v4")) == 63
    published = {"MobileNet": 71.23, "ShuffleNet": 63.41, "SqueezeNet": 53.15, "googlenet_slim_v4": 70.58,
                 "resnet18": 70.25, "resnet50": 76.01}  # design §7.4
    assert {m: table.best(m) for m in table.model_names} == published


def test_a_malformed_table_line_is_named(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("model,precision,profile,granularity,clipping,schema,accuracy\nm,8,1,tensor,max,int3,1.0\n")
    with pytest.raises(DataError, match="line 2: unreadable configuration"):
        load_reference_table(bad)


def test_warm_start_holds_only_the_other_models_rows(table):
    enc = ConfigEncoder()
    for target in table.model_names:
        warm = table.warm_start(target, enc)
        others = [m for m in table.model_names if m != target]
        assert len(warm) == sum(len(table.rows(m)) for m in others)
        assert sorted(set(warm.group.tolist())) == sorted(table.model_names.index(m) for m in others)
        target_arch = REFERENCE_ARCHITECTURES[target].vector()
        assert not np.any(np.all(warm.x[:, -8:] == target_arch, axis=1)), "no row carries the target's features"


def test_the_target_models_accuracies_never_reach_the_warm_start(table):
    """No leakage: scrambling the target's measured accuracies changes nothing until Quantune
    has measured one of them - the first pick comes from the other models alone."""
    target = "resnet18"
    rows = table.rows(target)
    scrambled_acc = table.accuracy.copy()
    scrambled_acc[rows] = np.random.default_rng(0).permutation(scrambled_acc[rows])[::-1]
    scrambled = dataclasses.replace(table, accuracy=scrambled_acc)
    enc = ConfigEncoder()
    np.testing.assert_array_equal(table.warm_start(target, enc).y, scrambled.warm_start(target, enc).y)
    first = quantune_on_table(table, target, np.random.default_rng(3), stop_at=-1.0)
    first_scrambled = quantune_on_table(scrambled, target, np.random.default_rng(3), stop_at=-1.0)
    assert first == first_scrambled and len(first) == 1


def test_quantune_reaches_the_best_in_fewer_trials_than_random(table):
    """The paper's claim on its own data (fast models; all six run in the benchmark)."""
    models, seeds = ("MobileNet", "SqueezeNet", "resnet18"), range(2)
    ours = {m: np.mean([len(quantune_on_table(table, m, np.random.default_rng(s))) for s in seeds]) for m in models}
    rand = {m: random_expectation(table, m) for m in models}
    for m in models:
        assert ours[m] < rand[m] / 2, f"{m}: quantune {ours[m]} trials vs random {rand[m]:.1f}"
    speedup = math.exp(np.mean([math.log(rand[m] / ours[m]) for m in models]))
    assert speedup >= 3.9, f"geometric-mean speedup {speedup:.2f}x < the paper's 3.9x"


@pytest.mark.slow
def test_quantune_beats_the_papers_speedup_on_all_six_models(table):
    ours = [len(quantune_on_table(table, m, np.random.default_rng(0))) for m in table.model_names]
    rand = [random_expectation(table, m) for m in table.model_names]
    assert math.exp(np.mean(np.log(np.divide(rand, ours)))) >= 3.9


def test_quantune_stops_at_the_best_and_measures_it_last(table):
    seq = quantune_on_table(table, "SqueezeNet", np.random.default_rng(0))
    assert len(seq) == len(set(seq)) and trials_to(seq, table, table.best("SqueezeNet")) == len(seq)
    assert all(table.models[r] == "SqueezeNet" for r in seq)


def test_same_seed_gives_the_same_trial_sequence(table):
    a = quantune_on_table(table, "resnet50", np.random.default_rng(11))
    b = quantune_on_table(table, "resnet50", np.random.default_rng(11))
    assert a == b and len(a) > 1


# ----- the baselines on the table ----------------------------------------------------------------
def test_random_order_visits_each_row_once_until_the_best(table):
    seq = random_on_table(table, "resnet50", np.random.default_rng(0))
    assert len(seq) == len(set(seq)) and table.accuracy[seq[-1]] == table.best("resnet50")


def test_grid_order_is_fixed_and_int8_first(table):
    order = grid_order(table, "ShuffleNet")
    assert sorted(order) == sorted(table.rows("ShuffleNet").tolist())
    assert [table.configs[r].precision for r in order] == ["int8"] * 48 + ["mixed"] * 16
    assert table.configs[order[0]].global_part == global_configs()[0]
    assert grid_on_table(table, "MobileNet") == grid_on_table(table, "MobileNet")


def test_genetic_decodes_the_papers_genome():
    variants = [("int8", None, None), ("mixed", None, None)]
    c = decode_genome(np.array([1, 1, 1, 1, 1, 1, 1]), variants)
    assert (c.schema, c.clipping, c.granularity, c.calibration, c.precision) == (
        "symmetric-uint8", "max", "per-tensor", 10000, "mixed")  # calibration 3 reads as 10000
    c = decode_genome(np.array([1, 0, 0, 0, 0, 1]), variants[:1])
    assert (c.schema, c.clipping, c.granularity, c.calibration) == ("power-of-two", "KL", "per-channel", 1000)
    assert decode_genome(np.array([0, 0, 0, 0, 0, 0, 1, 1]), variants[:1] * 3) is None  # past the variants


@pytest.mark.parametrize("mutation", [0.1, 0.5])
def test_genetic_measures_each_configuration_once_and_stops_at_the_best(table, mutation):
    seq = genetic_on_table(table, "resnet18", np.random.default_rng(1), mutation=mutation)
    assert len(seq) == len(set(seq)) and table.accuracy[seq[-1]] == table.best("resnet18")
    assert seq == genetic_on_table(table, "resnet18", np.random.default_rng(1), mutation=mutation)


# ----- the surrogate loop ------------------------------------------------------------------------
def synthetic(n: int = 40, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, d)).astype(float)
    y = x @ rng.normal(size=d) + 0.01 * np.arange(n)  # distinct values
    return x, y


def test_select_is_greedy_with_random_ties_and_epsilon_explores():
    rng = np.random.default_rng(0)
    assert select(np.array([0.1, 0.9, 0.5]), 2, 0.0, rng).tolist() == [1, 2]
    tied = {int(select(np.array([1.0, 1.0, 0.0]), 1, 0.0, np.random.default_rng(s))[0]) for s in range(20)}
    assert tied == {0, 1}
    explored = [int(select(np.arange(10.0), 1, 1.0, np.random.default_rng(s))[0]) for s in range(200)]
    assert len(set(explored)) == 10, "epsilon=1 picks uniformly"
    assert sorted(select(np.arange(5.0), 9, 0.5, rng).tolist()) == [0, 1, 2, 3, 4], "k > n: each once"


def test_surrogate_loop_never_measures_a_candidate_twice():
    x, y = synthetic()
    calls: list[int] = []
    opts = SurrogateOptions(rounds=20, k=3, epsilon=0.2)
    measured = search_finite(x, lambda i: calls.append(i) or float(y[i]), opts, np.random.default_rng(0))
    assert sorted(calls) == list(range(len(x))) and [i for i, _ in measured] == calls


def test_surrogate_loop_respects_the_evaluation_limit():
    x, y = synthetic()
    calls: list[int] = []

    def evaluate(i: int) -> float:
        if len(calls) == 5:
            raise EvaluationLimitReached
        calls.append(i)
        return float(y[i])

    with pytest.raises(EvaluationLimitReached):
        search_finite(x, evaluate, SurrogateOptions(rounds=20), np.random.default_rng(0))
    assert len(calls) == 5
    assert len(search_finite(x, lambda i: float(y[i]), SurrogateOptions(rounds=20), np.random.default_rng(0), max_trials=7)) == 7


def test_surrogate_finds_a_learnable_optimum_quickly():
    x, y = synthetic(n=64, d=6, seed=3)
    opts = SurrogateOptions(objective="reg:squarederror")
    runs = [search_finite(x, lambda i: float(y[i]), opts, np.random.default_rng(s), stop=lambda m: m[-1][1] >= y.max())
            for s in range(3)]
    assert np.mean([len(r) for r in runs]) < (64 + 1) / 2 / 2  # < half of random's expectation


def test_surrogate_options_are_validated_with_the_range():
    with pytest.raises(ConfigError, match="epsilon=1.5 must be in"):
        SurrogateOptions(epsilon=1.5)
    with pytest.raises(ConfigError, match="objective 'rank:ndcg' is unknown"):
        SurrogateOptions(objective="rank:ndcg")
    with pytest.raises(ConfigError, match="features must be"):
        Observations(np.zeros(3), np.zeros(3))


# ----- the registered method ---------------------------------------------------------------------
class FakeEvaluator:
    """Stands in for :class:`haq.quant.Evaluator` where the loop, not accuracy, is tested.

    Accuracy is a known function of the scheme and the bits; every call is logged as
    ``(scheme, w_bits, a_bits, split)`` in a log shared by all schemes."""

    def __init__(self, scheme: QuantScheme = QuantScheme(), family: dict | None = None, log: list | None = None,
                 bit_weight: float = 1.0):
        self.scheme = scheme
        self.bit_weight = bit_weight  #: 0 = accuracy depends on the scheme only
        self.calibration_split = range(100)
        self._family = family if family is not None else {scheme: self}
        self.log = log if log is not None else []

    def with_scheme(self, scheme: QuantScheme) -> FakeEvaluator:
        return self._family.setdefault(scheme, FakeEvaluator(scheme, self._family, self.log, self.bit_weight))

    def evaluate(self, w_bits, a_bits, split: str = "val") -> float:
        w, a = np.asarray(w_bits), np.asarray(a_bits)
        self.log.append((self.scheme, tuple(w.tolist()), tuple(a.tolist()), split))
        s = self.scheme
        bonus = 0.02 * (s.weight_mode == "asymmetric") + 0.01 * (s.calibration == "entropy") + 0.01 * (s.calibration_images == 100)
        return float(0.90 + bonus - self.bit_weight * (0.002 * np.sum(8 - w) + 0.004 * np.sum(8 - a)))

    def accuracies(self, policies, split: str = "val") -> list[float]:
        return [self.with_scheme(scheme).evaluate(w, a, split) for w, a, scheme in policies]

    def fp32_accuracy(self, split: str = "val") -> float:
        return 0.99

    def fidelities(self, policies) -> list[tuple[float, float]]:
        return [(1.0 - self.with_scheme(s).evaluate(w, a, "fidelity"), 1.0) for w, a, s in policies]

    def split_size(self, split: str) -> int:
        return 100

    def folded_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))


@pytest.fixture(scope="module")
def ws():
    from haq.api import prepare
    from haq.config import SearchConfig

    return prepare(SearchConfig(model="digits-mobilenet", hardware="bitfusion"))


def fake_run(ws, seed: int = 0, evaluations: int = 12, budget: str = "latency=0.6", bit_weight: float = 1.0, **options):
    from haq.api import make_problem
    from haq.config import SearchConfig
    from haq.ledger import Ledger
    from haq.methods import get_method, run_method
    from haq.methods.quantune import QuantuneOptions

    cfg = SearchConfig(method="quantune", budget=(budget,), seed=seed, max_evaluations=evaluations)
    problem = make_problem(cfg, ws)
    ledger = Ledger(problem, FakeEvaluator(bit_weight=bit_weight), method="quantune")
    result = run_method(get_method("quantune"), problem, ledger, QuantuneOptions(**options))
    return ledger, result


def test_quantune_is_registered_with_its_options():
    from haq.methods import get_method
    from haq.methods.quantune import QuantuneOptions

    spec = get_method("quantune")
    assert spec.options_type is QuantuneOptions
    o = QuantuneOptions()
    assert (o.rounds, o.eta, o.gamma, o.k) == (200, 0.30, 1.0, 1), "the paper's surrogate"
    with pytest.raises(ConfigError, match="pool_size=0 must be at least 1"):
        QuantuneOptions(pool_size=0)


def test_method_measures_feasible_distinct_configurations_up_to_the_limit(ws):
    ledger, result = fake_run(ws, evaluations=12)
    problem = ledger.problem
    assert result.evaluations == len(result.history) == 12 == len(result.extras["schemes"])
    assert all(t.feasible for t in ledger.trials), "candidates are filtered by the budget before measuring"
    measured = [entry for entry in ledger.model.log if entry[3] == "val"]
    assert len(measured) == len(set(measured)) == 12, "no configuration measured twice"
    for t in ledger.trials:
        assert all(t.w_bits[i] == 8 and t.a_bits[i] == 8 for i in problem.pinned)
        assert all(int(b) in problem.choices[i] for i, b in enumerate(t.w_bits))


def test_method_returns_the_best_trial_under_its_own_scheme(ws):
    ledger, result = fake_run(ws, evaluations=12)
    best = ledger.best
    scheme = QuantScheme.from_dict(result.extras["schemes"][best.index])
    assert result.extras["best_scheme"] == scheme.to_dict()
    assert result.best_policy.quant == scheme, "policy.json carries the best configuration's scheme"
    test_calls = [e for e in ledger.model.log if e[3] == "test"]
    assert test_calls[-1][:3] == (scheme, tuple(best.w_bits.tolist()), tuple(best.a_bits.tolist()))


def test_method_same_seed_same_trials(ws):
    (_, a), (_, b) = fake_run(ws, seed=4, evaluations=8), fake_run(ws, seed=4, evaluations=8)
    assert a.extras["schemes"] == b.extras["schemes"]
    assert a.history[["w_bits", "a_bits", "accuracy"]].equals(b.history[["w_bits", "a_bits", "accuracy"]])


def test_method_without_mixed_bits_searches_uniform_policies_only(ws):
    ledger, result = fake_run(ws, evaluations=10, budget="latency=1.0", mixed=False, epsilon=0.5)
    for t in ledger.trials:
        free = ledger.problem.free_layers
        assert len(set(t.w_bits[free].tolist())) == 1 and len(set(t.a_bits[free].tolist())) == 1


def test_method_learns_the_scheme_that_matters(ws):
    """Bits aside, the fake rewards asymmetric weights, KL clipping and all calibration
    images: once warm, the surrogate's picks should favour them over a random pool member."""
    _, result = fake_run(ws, evaluations=30, budget="latency=1.0", bit_weight=0.0, mixed=False)
    late = [QuantScheme.from_dict(s) for s in result.extras["schemes"][15:]]
    share = np.mean([s.weight_mode == "asymmetric" and s.calibration == "entropy" for s in late])
    assert share > 0.5, f"only {share:.0%} of late picks use the rewarded scheme (a random pick: 12.5%)"


def test_method_warm_starts_from_a_table_of_other_models(ws):
    _, result = fake_run(ws, evaluations=3, warm_start=(str(TABLE),))
    assert result.extras["warm_start_rows"] == 319


@pytest.mark.slow
def test_quantune_end_to_end_on_the_embedded_model(ws):
    """Real evaluator: schemes change between trials and the result is re-measured on test."""
    from haq.api import search

    res = search(hardware="bitfusion", budget="latency=0.6", method="quantune", workspace=ws, max_evaluations=6, seed=0)
    assert res.evaluations == 6 and len(res.extras["schemes"]) == 6
    assert res.best_policy.quant == QuantScheme.from_dict(res.extras["best_scheme"])
    assert 0.0 <= res.best_policy.metrics["accuracy"] <= 1.0
    assert res.best_policy.metrics["latency_ms"] <= res.history["latency_ms"].max() + 1e-12
    assert res.history["feasible"].all()


def test_a_trial_under_another_scheme_is_recorded_and_the_best_policy_keeps_its_scheme(tmp_path):
    from haq.api import search
    from haq.config import SearchConfig

    cfg = SearchConfig(method="quantune", hardware="bismo-edge", budget=("latency=0.7",), max_evaluations=6)
    result = search(cfg, out=tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv", keep_default_na=False)
    assert "quant" in history.columns and (history["quant"] != "").any()
    best_row = history.loc[history["accuracy"] == result.best_policy.metrics["val_accuracy"]].iloc[0]
    scheme = result.best_policy.quant
    if best_row["quant"]:
        assert f"weight={scheme.weight}" in best_row["quant"]
    else:
        assert scheme == QuantScheme.from_dict(cfg.quant)
