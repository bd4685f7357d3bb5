"""The shipped artefact: haq-policy/1 JSON, validated against schema, model and hardware."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torchvision

from haq.errors import PolicyError
from haq.layers import describe
from haq.policy import Policy, parse_policy
from haq.scheme import QuantScheme
from haq.simulators import check_policy_bits, get_hardware


@pytest.fixture(scope="module")
def layers():
    return describe(torchvision.models.resnet18(), (3, 32, 32))


def test_uniform_shorthands(layers):
    p = parse_policy("uniform:8", layers)
    assert (p.w_bits == 8).all() and (p.a_bits == 8).all()
    q = parse_policy("uniform:w4a8", layers)
    assert (q.w_bits == 4).all() and (q.a_bits == 8).all()
    assert q.names == [s.name for s in layers]


def test_json_round_trip_keeps_everything(tmp_path, layers):
    rng = np.random.default_rng(0)
    p = Policy.from_bits(
        layers, rng.integers(2, 9, len(layers)), rng.integers(2, 9, len(layers)),
        model="resnet18", hardware="bitfusion", quant=QuantScheme(calibration="entropy"),
        metrics={"accuracy": 0.9, "latency_ms": 1.5, "energy_mj": None}, search={"method": "rl", "seed": 3},
    )
    path = p.save(tmp_path / "policy.json")
    q = Policy.load(path)
    assert q == p.replace(metrics={"accuracy": 0.9, "latency_ms": 1.5, "energy_mj": None})
    assert json.loads(path.read_text())["format"] == "haq-policy/1"


def test_layers_are_matched_by_name_not_position(tmp_path, layers):
    p = Policy.uniform(layers, 8)
    d = p.to_dict()
    d["layers"] = list(reversed(d["layers"]))
    d["layers"][0]["w_bits"] = 4  # the fc layer
    (tmp_path / "p.json").write_text(json.dumps(d))
    q = parse_policy(str(tmp_path / "p.json"), layers)
    assert q.names == [s.name for s in layers] and q.w_bits[-1] == 4


def _write(tmp_path, obj):
    path = tmp_path / "p.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_malformed_json_is_one_line(tmp_path, layers):
    with pytest.raises(PolicyError, match="not valid JSON"):
        parse_policy(_write(tmp_path, "{not json"), layers)


def test_wrong_format_version_is_named(tmp_path, layers):
    d = Policy.uniform(layers, 8).to_dict() | {"format": "haq-policy/9"}
    with pytest.raises(PolicyError, match="format 'haq-policy/9' is not supported"):
        parse_policy(_write(tmp_path, d), layers)


def test_a_layer_the_model_lacks_is_named_with_close_matches(tmp_path, layers):
    d = Policy.uniform(layers, 8).to_dict()
    d["layers"][1]["name"] = "layer1.0.conv9"
    with pytest.raises(PolicyError, match=r"layer 'layer1.0.conv9'.*did you mean .*layer1.0.conv1"):
        parse_policy(_write(tmp_path, d), layers)


def test_a_missing_layer_is_named(tmp_path, layers):
    d = Policy.uniform(layers, 8).to_dict()
    del d["layers"][2]
    with pytest.raises(PolicyError, match=f"no bitwidths for layer {layers[2].name}"):
        parse_policy(_write(tmp_path, d), layers)


@pytest.mark.parametrize("bits", [0, 9, 12, 64, -1])
def test_bits_outside_1_8_16_32_are_refused(tmp_path, layers, bits):
    d = Policy.uniform(layers, 8).to_dict()
    d["layers"][0]["w_bits"] = bits
    with pytest.raises(PolicyError, match=f"w_bits of layer conv1={bits} is not a bitwidth: use 1-8"):
        parse_policy(_write(tmp_path, d), layers)


def test_schema_violations_say_where(tmp_path, layers):
    d = Policy.uniform(layers, 8).to_dict()
    d["layers"][0]["w_bits"] = "8"
    with pytest.raises(PolicyError, match="invalid policy at layers/0/w_bits"):
        parse_policy(_write(tmp_path, d), layers)


def test_bits_the_hardware_cannot_run_are_refused_with_the_fix(layers):
    p = Policy.uniform(layers, 3, 8)
    with pytest.raises(PolicyError, match="bitfusion runs 2, 4 or 8 bits .* got w_bits=3 for layer conv1 - use --round-up to map to 4"):
        check_policy_bits(get_hardware("bitfusion"), layers, p.w_bits, p.a_bits)


@pytest.mark.parametrize("text", ["uniform:", "uniform:w4", "uniform:abc", "uniform:w4a8x"])
def test_malformed_shorthands(layers, text):
    with pytest.raises(PolicyError, match="malformed"):
        parse_policy(text, layers)


def test_a_missing_file_says_how_to_fix(layers):
    with pytest.raises(PolicyError, match="does not exist; pass a policy.json or a shorthand"):
        parse_policy("nope.json", layers)


def test_writes_are_atomic_no_temp_files_left(tmp_path, layers):
    Policy.uniform(layers, 8).save(tmp_path / "policy.json")
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]
