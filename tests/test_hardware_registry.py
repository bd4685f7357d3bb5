"""Every registered hardware model honours the protocol (parametrised over the registry,
so a new model is tested automatically)."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

from haq.bits import ALL_BITS, INT_BITS, slot
from haq.costs import CostModel, CostTable
from haq.digits_models import DigitsMobileNet
from haq.errors import UnknownNameError
from haq.layers import describe
from haq.simulators import HARDWARE, HardwareModel, get_hardware, list_hardware

ANALYTIC = ("bitfusion", "bismo-edge", "bismo-cloud")
MEASURED_WITHOUT_PROFILING = ("gpu-h100",)  # `cpu` profiles on demand: tested in test_measured_hardware


@pytest.fixture(scope="module")
def models():
    return {
        "mobilenet_v2": describe(torchvision.models.mobilenet_v2(), (3, 224, 224)),
        "digits-mobilenet": describe(DigitsMobileNet(), (1, 8, 8)),
    }


def test_every_registered_name_builds_a_hardware_model():
    listed = list_hardware()
    assert set(ANALYTIC) | {"cpu", "gpu-h100"} <= set(HARDWARE.names())
    for name in HARDWARE.names():
        hw = get_hardware(name)
        assert isinstance(hw, HardwareModel)
        assert hw.name == name and hw.summary and hw.description
    assert ("table:PATH", "any latency/energy profile CSV in the haq profile format") in listed


def test_unknown_hardware_suggests_close_names():
    with pytest.raises(UnknownNameError, match="did you mean bismo-edge"):
        get_hardware("bismo-egde")


@pytest.mark.parametrize("name", ANALYTIC + MEASURED_WITHOUT_PROFILING)
def test_supported_bits_are_valid_and_sorted(name):
    hw = get_hardware(name)
    for kind in ("conv", "depthwise", "linear"):
        bits = hw.supported_bits(kind)
        assert bits and list(bits) == sorted(bits) and set(bits) <= set(ALL_BITS)
        assert (32 in bits) == hw.float_fallback or kind == "depthwise"


@pytest.mark.parametrize("name", ANALYTIC + MEASURED_WITHOUT_PROFILING)
def test_cost_table_is_finite_at_every_supported_pair(name, models):
    hw = get_hardware(name)
    layers = models["mobilenet_v2"]
    table = hw.cost_table(layers)
    assert isinstance(table, CostTable) and len(table) == len(layers) and table.batch >= 1
    for i, s in enumerate(layers):
        for w in hw.supported_bits(s.kind):
            for a in hw.supported_bits(s.kind):
                v = table.latency_ms[i, slot(w), slot(a)]
                if np.isfinite(v):
                    assert v > 0
    # the uniform policy at each model's preferred bits has a finite, positive cost
    top = np.array([max(b for b in hw.supported_bits(s.kind) if b <= 8 or not any(x <= 8 for x in hw.supported_bits(s.kind))) for s in layers])
    lat, _ = table.cost(top, top)
    assert np.isfinite(lat) and lat > 0


@pytest.mark.parametrize("name", ANALYTIC)
@pytest.mark.parametrize("model", ["mobilenet_v2", "digits-mobilenet"])
def test_analytic_cost_is_monotone_in_weight_and_activation_bits(name, model, models):
    table = get_hardware(name).cost_table(models[model])
    for arr in (table.latency_ms, table.energy_mj):
        if arr is None:
            continue
        ints = arr[:, : len(INT_BITS), : len(INT_BITS)]
        assert (np.diff(ints, axis=1) >= -1e-12).all(), "cost falls as weight bits grow"
        assert (np.diff(ints, axis=2) >= -1e-12).all(), "cost falls as activation bits grow"


@pytest.mark.parametrize("name", ANALYTIC)
def test_uniform_4_bit_is_cheaper_than_uniform_8_bit(name, models):
    layers = models["mobilenet_v2"]
    costs = CostModel(layers, get_hardware(name).cost_table(layers))
    c4, c8 = costs.uniform(4), costs.uniform(8)
    assert c4.latency_ms < c8.latency_ms
    if c8.energy_mj is not None:
        assert c4.energy_mj < c8.energy_mj


def test_size_and_bops_do_not_depend_on_the_hardware(models):
    layers = models["mobilenet_v2"]
    rng = np.random.default_rng(0)
    w = rng.choice([2, 4, 8], len(layers))
    a = rng.choice([2, 4, 8], len(layers))
    seen = {(round(c.size_mib, 12), round(c.bops_g, 12))
            for c in (CostModel(layers, get_hardware(n).cost_table(layers)).cost(w, a) for n in ANALYTIC)}
    assert seen == {(round(CostModel(layers, None).cost(w, a).size_mib, 12), round(CostModel(layers, None).cost(w, a).bops_g, 12))}


def test_a_policy_cost_is_the_sum_of_its_layers(models):
    layers = models["mobilenet_v2"]
    table = get_hardware("bitfusion").cost_table(layers)
    rng = np.random.default_rng(1)
    w, a = rng.choice([2, 4, 8], len(layers)), rng.choice([2, 4, 8], len(layers))
    lat, en = table.cost(w, a)
    per_lat, per_en = table.per_layer(w, a)
    assert lat == pytest.approx(per_lat.sum()) and en == pytest.approx(per_en.sum())
