"""HAGO (design §7.3): the hardware's bit set drives a greedy walk, then a budget descent.

Every accuracy here is a real evaluation of the embedded digits-mobilenet (no stand-ins);
evaluation limits are kept small so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import haq.methods.hago as hago
from haq.api import prepare, search
from haq.config import SearchConfig
from haq.costs import CostModel
from haq.errors import ConfigError, SearchError
from haq.history import parse_bits_str


@pytest.fixture(scope="module")
def ws():
    return prepare(SearchConfig(model="digits-mobilenet", hardware="bitfusion"))


@pytest.fixture(scope="module")
def tight(ws):
    """A budget the walk alone misses on BitFusion (0.7 x uniform 8-bit latency)."""
    return search(hardware="bitfusion", budget="latency=0.7", method="hago", workspace=ws, max_evaluations=60, select="val")


def _rows(history):
    return [
        (parse_bits_str(r.w_bits), parse_bits_str(r.a_bits), float(r.accuracy))
        for r in history.itertuples()
    ]


def _replay_walk(rows, ties: str):
    """Check HAGO's rule trial by trial; return (final best, number of ties met)."""
    best_w, best_a, best_acc = rows[0]
    ties_met = 0
    for w, a, acc in rows[1:]:
        dw, da = np.flatnonzero(w != best_w), np.flatnonzero(a != best_a)
        assert len(dw) + len(da) == 1, "a walk trial changes exactly one edge of the best so far"
        assert (w[dw] < best_w[dw]).all() and (a[da] < best_a[da]).all(), "and only lowers it"
        ties_met += acc == best_acc
        if acc > best_acc or (acc == best_acc and ties == "fewer-bits"):
            best_w, best_a, best_acc = w, a, acc
    return (best_w, best_a, best_acc), ties_met


def test_walk_only_builds_on_steps_that_kept_accuracy_and_ties_go_to_fewer_bits(tight):
    walk = tight.extras["walk"]
    rows = _rows(tight.history)[: walk["evaluations"]]
    (w, a, acc), ties_met = _replay_walk(rows, "fewer-bits")
    assert ties_met > 0, "the digits validation split has ties; the rule must have been exercised"
    assert walk["complete"]
    assert acc == max(r[2] for r in rows) == walk["val_accuracy"]
    assert walk["w_bits"] == " ".join(map(str, w)) and walk["a_bits"] == " ".join(map(str, a))
    # among the trials at the best accuracy, the walk kept the one with the fewest bits
    assert int(w.sum() + a.sum()) == min(int(r[0].sum() + r[1].sum()) for r in rows if r[2] == acc)


def test_keep_bits_ties_keep_the_higher_bits(ws):
    res = search(hardware="bitfusion", budget="latency=1.0", method="hago", workspace=ws, max_evaluations=12, ties="keep-bits")
    rows = _rows(res.history)
    (w, a, acc), ties_met = _replay_walk(rows, "keep-bits")
    assert ties_met > 0
    assert res.extras["walk"]["w_bits"] == " ".join(map(str, w))
    first_at_best = next(r for r in rows if r[2] == acc)
    assert np.array_equal(first_at_best[0], w) and np.array_equal(first_at_best[1], a)


def test_result_meets_the_budget_after_the_budget_phase(tight):
    ex = tight.extras  # the walk alone missed it, the descent met it
    assert not ex["walk"]["feasible"]
    assert ex["budget_phase"]["steps"], "the descent took at least one step"
    p = tight.best_policy
    assert p.metrics["latency_ms"] <= tight.history.latency_ms.iloc[0] * 0.7 * (1 + 1e-9)
    # the returned policy is the one the descent ended on, measured
    assert " ".join(map(str, p.w_bits)) == ex["budget_phase"]["w_bits"]
    assert p.metrics["val_accuracy"] == ex["budget_phase"]["val_accuracy"]


def test_every_trial_uses_only_bitfusion_bits_and_pinned_layers_stay_at_8(tight):
    for w, a, _ in _rows(tight.history):
        assert set(w) | set(a) <= {2, 4, 8}
        assert w[0] == a[0] == w[-1] == a[-1] == 8


def test_policy_records_hagos_threshold_scheme(tight, ws):
    assert tight.best_policy.quant.calibration == "avg-minmax"
    assert tight.best_policy.quant.calibration_images == 128
    kl = search(hardware="bitfusion", budget="latency=1.0", method="hago", workspace=ws, max_evaluations=1, threshold="kl")
    assert kl.best_policy.quant.calibration == "entropy"
    own = search(hardware="bitfusion", budget="latency=1.0", method="hago", workspace=ws, max_evaluations=1, threshold="scheme")
    assert own.best_policy.quant == ws.evaluator.scheme
    assert ws.evaluator.scheme.calibration == "percentile:99.99", "the workspace's evaluator is left alone"


def test_respects_max_evaluations_keeps_the_last_for_a_feasible_policy_and_is_deterministic(tight, ws):
    short = search(hardware="bitfusion", budget="latency=0.7", method="hago", workspace=ws, max_evaluations=6)
    assert short.evaluations == len(short.history) == 6
    assert not short.history.feasible.iloc[:5].any() and short.history.feasible.iloc[5]
    assert short.best_policy.metrics["latency_ms"] <= short.history.latency_ms.iloc[0] * 0.7 * (1 + 1e-9)
    assert short.extras["budget_phase"]["planned"], "the end was planned on the walk's drops"
    # same problem, same seed: the same trials as the longer run, up to where the limit bites
    cols = ["w_bits", "a_bits", "accuracy", "latency_ms"]
    assert short.history[cols].iloc[:5].equals(tight.history[cols].iloc[:5])


def test_too_few_evaluations_names_the_minimum(ws):
    with pytest.raises(SearchError, match="too few for hago: it needs at least 2"):
        search(hardware="bitfusion", budget="latency=0.7", method="hago", workspace=ws, max_evaluations=1)
    two = search(hardware="bitfusion", budget="latency=0.7", method="hago", workspace=ws, max_evaluations=2)
    assert two.evaluations == 2 and two.history.feasible.iloc[1]
    # a budget the all-8-bit policy meets needs one evaluation
    assert search(hardware="bitfusion", budget="latency=1.0", method="hago", workspace=ws, max_evaluations=1).evaluations == 1


def _float_fallback_table(ws, path):
    """A CPU-like profile: conv and depthwise run int8 or float, linear only float."""
    lines = ["layer,kind,w_bits,a_bits,batch,latency_ms"]
    for s in ws.layers:
        pairs = [(32, 32)] if s.kind == "linear" else [(8, 8), (8, 32), (32, 8), (32, 32)]
        for w, a in pairs:
            lines.append(f"{s.name},{s.kind},{w},{a},1,{s.macs * max(w, a) * 1e-9:.9f}")
    path.write_text("\n".join(lines) + "\n")


def test_float_fallback_hardware_walks_from_float_and_keeps_float_only_kinds_float(ws, tmp_path):
    from haq.simulators import get_hardware

    csv = tmp_path / "cpu_like.csv"
    _float_fallback_table(ws, csv)
    hw = get_hardware(f"table:{csv}")
    assert hw.float_fallback and hw.supported_bits("linear") == (32,)
    table = hw.cost_table(ws.layers)
    cpu_ws = dataclasses.replace(ws, hardware=hw, table=table, costs=CostModel(ws.layers, table))
    all_float = float(np.nansum(table.latency_ms[:, 9, 9]))
    res = search(hardware=f"table:{csv}", budget=f"latency={0.8 * all_float:.9f}ms", method="hago",
                 workspace=cpu_ws, max_evaluations=10)
    linear = [i for i, s in enumerate(ws.layers) if s.kind == "linear"]
    rows = _rows(res.history)
    assert set(rows[0][0][1:-1]) == {32}, "the walk starts at the hardware's maximum: float"
    for w, a, _ in rows:
        assert set(w) | set(a) <= {8, 32}
        assert all(w[i] == a[i] == 32 for i in linear)
    assert res.best_policy.metrics["latency_ms"] <= 0.8 * all_float * (1 + 1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": "kl-8001"}, "threshold 'kl-8001' is unknown"),
        ({"threshold": "quantile:2"}, r"quantile:Q with Q in \(0, 1\]"),
        ({"calibration_images": 0}, "calibration_images=0 must be at least 1"),
        ({"ties": "more-bits"}, "ties='more-bits' is unknown"),
        ({"budget_phase": "yes"}, "budget_phase='yes' must be true or false"),
    ],
)
def test_bad_options_say_what_to_use(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        hago.HagoOptions(**kwargs)


def test_quantile_threshold_maps_to_a_percentile_calibrator():
    from haq.scheme import QuantScheme

    s = hago.hago_scheme(QuantScheme(), hago.HagoOptions(threshold="quantile:0.9999", calibration_images=None))
    assert s.calibration == "percentile:99.99" and s.calibration_images is None
    p2 = hago.hago_scheme(QuantScheme(), hago.HagoOptions(threshold="power_of_two"))
    assert p2.activation_mode == "power-of-two" and p2.calibration == "avg-minmax"
