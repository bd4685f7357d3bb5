"""Specification of the ``bitfusion`` hardware model.

Ground truth: APQ's released BitFusion table (mit-han-lab/apq ``lut/BitFusion_new.b1.dict``,
latency in ms at 500 MHz, energy in mJ). A gzipped copy of the whole table lives in
``tests/data`` so every check runs on a clean clone; when ``shared/reference`` is next to the
repo, a test pins the copy to it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from scipy.stats import spearmanr

from haq.bits import INT_BITS, slot
from haq.errors import ConfigError, HardwareError
from haq.layers import describe
from haq.simulators import get_hardware, list_hardware
from haq.simulators.base import HardwareModel
from haq.simulators.bitfusion import (
    DEFAULT_SPEC,
    BitFusion,
    BitFusionSpec,
    ConvShape,
    layer_cost,
    monotone_envelope,
    parse_apq_key,
    shape_costs,
)

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "apq_bitfusion_latency_energy.json"
REFERENCE_COPY = Path(__file__).parent / "data" / "apq_bitfusion_latency_energy.json.gz"
SAMPLE = Path(__file__).parent / "data" / "apq_bitfusion_sample.json"
CYCLES_PER_MS = 500e6 / 1e3
APQ_SPEC = BitFusionSpec(leakage="sram")  # the configuration whose energies match APQ's


def apq_rows(entries: dict, spec: BitFusionSpec = APQ_SPEC) -> dict[str, np.ndarray]:
    """Ours next to APQ's for every ``(layer)-WwAa`` entry: cycles, mJ, and a depthwise flag."""
    rows = []
    for key, v in entries.items():
        if key in ("head", "tail"):  # APQ's totals for the fixed stem and classifier
            continue
        layer, w, a = parse_apq_key(key)
        cyc, pj, _ = shape_costs(ConvShape.from_apq_key(*layer), spec)
        rows.append(
            (
                cyc[w - 1, a - 1],
                round(v["latency"] * CYCLES_PER_MS),
                pj[w - 1, a - 1] * 1e-9,
                v["energy"],
                layer[6] > 1,
            )
        )
    ours, apq, ours_mj, apq_mj, dw = (np.array(c) for c in zip(*rows, strict=True))
    return {"cycles": ours, "apq_cycles": apq, "mj": ours_mj, "apq_mj": apq_mj, "dw": dw.astype(bool)}


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return apq_rows(json.loads(SAMPLE.read_text())["entries"])


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return apq_rows(json.loads(gzip.decompress(REFERENCE_COPY.read_bytes())))


def test_local_copy_of_the_apq_table_equals_the_shared_reference() -> None:
    if not SHARED_REFERENCE.exists():
        pytest.skip("shared reference folder not present; the tests/data copy is the reference")
    assert json.loads(gzip.decompress(REFERENCE_COPY.read_bytes())) == json.loads(SHARED_REFERENCE.read_text())


@pytest.fixture(scope="module")
def networks() -> dict[str, list]:
    """Layer shapes of torchvision ResNet-18 and MobileNetV2 (meta device: no weights)."""
    with torch.device("meta"):
        models = {n: getattr(torchvision.models, n)() for n in ("resnet18", "mobilenet_v2")}
    return {n: describe(m, (3, 224, 224)) for n, m in models.items()}


def rel_error(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(ours - ref) / ref


# --- agreement with APQ's table --------------------------------------------------------------


def test_apq_worked_example_is_reproduced_to_the_cycle():
    cost = layer_cost(16, 64, 112, 1, 1, 0, 1, w_bits=8, a_bits=8)
    assert cost.cycles == 276_011
    assert cost.cycles / CYCLES_PER_MS == pytest.approx(0.552022, abs=1e-12)
    assert cost.compute_cycles == 2 * 112 * 112  # ceil(64/32) column passes: memory-bound layer


def test_every_pointwise_sample_entry_matches_apq_to_the_cycle(sample):
    pw = ~sample["dw"]
    assert pw.sum() >= 10
    np.testing.assert_array_equal(sample["cycles"][pw], sample["apq_cycles"][pw])


def test_depthwise_sample_entries_are_within_25_percent_of_apq(sample):
    dw = sample["dw"]
    assert dw.sum() >= 5
    assert rel_error(sample["cycles"][dw], sample["apq_cycles"][dw]).max() <= 0.25


def test_sram_leakage_explains_the_energy_gap_to_apq(sample):
    pw = ~sample["dw"]
    with_leakage = sample["apq_mj"][pw] / sample["mj"][pw]
    assert np.abs(with_leakage - 1).max() <= 0.05
    dynamic = apq_rows(json.loads(SAMPLE.read_text())["entries"], BitFusionSpec())
    gap = dynamic["apq_mj"][pw] / dynamic["mj"][pw]
    assert 1.05 <= np.median(gap) <= 1.25  # APQ's energies include ~212 mW of SRAM leakage
    np.testing.assert_array_equal(dynamic["cycles"], sample["cycles"])  # leakage never changes latency


def test_released_optimizer_rules_do_not_reproduce_apq():
    released = BitFusionSpec(rules="released")
    assert layer_cost(96, 456, 14, 1, 1, 0, 1, 4, 4).cycles == 31_096  # APQ's value
    assert layer_cost(96, 456, 14, 1, 1, 0, 1, 4, 4, spec=released).cycles == 32_968
    # padded weights: 24 input channels fill 32 array rows in the released code's DRAM traffic
    assert layer_cost(24, 96, 56, 1, 1, 0, 1, 8, 8).cycles == 103_584
    assert layer_cost(24, 96, 56, 1, 1, 0, 1, 8, 8, spec=released).cycles == 103_616


def test_reference_pointwise_latency_is_exact(reference):
    pw = ~reference["dw"]
    err = rel_error(reference["cycles"][pw], reference["apq_cycles"][pw])
    assert pw.sum() == 3015
    assert np.median(err) <= 0.05
    assert (err == 0).mean() >= 0.99


def test_reference_depthwise_latency_is_close(reference):
    dw = reference["dw"]
    err = rel_error(reference["cycles"][dw], reference["apq_cycles"][dw])
    assert np.median(err) <= 0.05
    assert np.percentile(err, 90) <= 0.15


def test_reference_ranks_latency_and_energy_like_apq(reference):
    assert spearmanr(reference["cycles"], reference["apq_cycles"]).statistic >= 0.95
    assert spearmanr(reference["mj"], reference["apq_mj"]).statistic >= 0.95


def test_reference_pointwise_energy_with_sram_leakage(reference):
    pw = ~reference["dw"]
    ratio = reference["apq_mj"][pw] / reference["mj"][pw]
    assert abs(np.median(ratio) - 1) <= 0.01
    assert np.median(np.abs(ratio - 1)) <= 0.02
    assert np.abs(ratio - 1).max() <= 0.06


# --- behaviour the searchers rely on ---------------------------------------------------------


def test_cost_table_is_monotone_in_weight_and_activation_bits(networks):
    ints = [slot(b) for b in INT_BITS]
    for layers in networks.values():
        table = get_hardware("bitfusion").cost_table(layers)
        for arr in (table.latency_ms, table.energy_mj):
            sub = arr[:, ints][:, :, ints]
            assert (np.diff(sub, axis=1) >= 0).all() and (np.diff(sub, axis=2) >= 0).all()


def test_monotone_envelope_is_the_least_cost_of_any_wider_mode():
    raw = np.random.default_rng(0).random((8, 8))
    env = monotone_envelope(raw)
    for w in range(8):
        for a in range(8):
            assert env[w, a] == raw[w:, a:].min()


@pytest.mark.parametrize("net", ["resnet18", "mobilenet_v2"])
def test_uniform_4_bit_is_cheaper_than_8_bit(networks, net):
    layers = networks[net]
    table = get_hardware("bitfusion").cost_table(layers)
    n = len(layers)
    lat8, en8 = table.cost(np.full(n, 8), np.full(n, 8))
    lat4, en4 = table.cost(np.full(n, 4), np.full(n, 4))
    assert lat4 < lat8 and en4 < en8


def test_8_to_4_bits_on_both_operands_gives_about_4x_fewer_compute_cycles(networks):
    comp = np.array(
        [
            shape_costs(ConvShape.from_layer(layer, 1, layer.input_group == 0), DEFAULT_SPEC)[2]
            for layer in networks["resnet18"]
        ]
    )
    assert 3.5 <= comp[:, 7, 7].sum() / comp[:, 3, 3].sum() <= 4.0


def test_five_to_seven_bits_compute_like_eight_and_three_like_four():
    # a compute-bound 3x3 conv: the perf factor sets the cycles
    comp = shape_costs(ConvShape(512, 512, (7, 7), (3, 3), (1, 1)), DEFAULT_SPEC)[2]
    assert comp[4, 4] == comp[5, 5] == comp[6, 6] == comp[7, 7] == 4 * comp[3, 3]


def test_identical_layers_are_costed_once(networks):
    layer = networks["resnet18"][5]
    shape_costs.cache_clear()
    BitFusion().cost_table([layer] * 4)
    assert shape_costs.cache_info().misses == 1


def test_linear_layer_costs_as_a_1x1_conv(networks):
    fc = networks["resnet18"][-1]
    assert fc.kind == "linear"
    table = BitFusion().cost_table([fc])
    assert table.latency_ms[0, slot(8), slot(8)] * CYCLES_PER_MS == pytest.approx(
        layer_cost(512, 1000, 1, 1, 1, 0, 1, 8, 8).cycles
    )


def test_larger_batch_amortises_weights(networks):
    layers = networks["resnet18"][-3:]
    hw = BitFusion()
    one, four = hw.cost_table(layers), hw.cost_table(layers, batch=4)
    bits = np.full(len(layers), 8)
    assert one.cost(bits, bits)[0] < four.cost(bits, bits)[0] < 4 * one.cost(bits, bits)[0]


# --- contract --------------------------------------------------------------------------------


def test_registry_round_trip():
    hw = get_hardware("bitfusion")
    assert isinstance(hw, BitFusion) and isinstance(hw, HardwareModel)
    assert hw.name == "bitfusion" and not hw.float_fallback
    assert ("bitfusion", hw.summary) in list_hardware()


@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear"])
def test_supported_bits_are_2_4_8(kind):
    assert get_hardware("bitfusion").supported_bits(kind) == (2, 4, 8)


def test_unknown_layer_kind_is_rejected():
    with pytest.raises(HardwareError, match="unknown layer kind 'pool'"):
        BitFusion().supported_bits("pool")


def test_cost_table_fills_integer_bits_and_leaves_float_nan(networks):
    layers = networks["mobilenet_v2"][:4]
    table = BitFusion().cost_table(layers)
    assert table.batch == 1 and table.latency_ms.shape == (4, 10, 10)
    ints = [slot(b) for b in INT_BITS]
    assert np.isfinite(table.latency_ms[:, ints][:, :, ints]).all()
    assert (table.energy_mj[:, ints][:, :, ints] > 0).all()
    for fl in (slot(16), slot(32)):
        assert np.isnan(table.latency_ms[:, fl, :]).all() and np.isnan(table.energy_mj[:, :, fl]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows must be a positive integer, got 0"),
        ({"low_precision_bits": 16}, "low_precision_bits \\(16\\) exceeds high_precision_bits \\(8\\)"),
        ({"leakage": "core"}, "leakage is 'none', 'sram' or 'all', got 'core'"),
        ({"rules": "paper"}, "rules is 'apq' or 'released'"),
        ({"frequency_hz": 0}, "frequency_hz must be > 0"),
    ],
)
def test_malformed_spec_is_rejected_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BitFusionSpec(**kwargs)


def test_bad_bitwidth_and_batch_are_rejected(networks):
    with pytest.raises(HardwareError, match="integer bitwidths 1-8; got 32"):
        layer_cost(16, 64, 112, 1, 1, 0, 1, 32, 8)
    with pytest.raises(HardwareError, match="batch must be a positive integer, got 0"):
        BitFusion().cost_table(networks["resnet18"][:1], batch=0)
    with pytest.raises(HardwareError, match="not an APQ BitFusion key"):
        parse_apq_key("head")
