"""ONNX QDQ export: what ONNX Runtime runs is what the evaluator measured (haq.deploy, `haq export`)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from haq.deploy import (
    agreement,
    build_qdq_model,
    check_model,
    compare_tensors,
    export,
    float_noise_floor,
    generated_data,
    ort_logits,
    ort_session,
    random_network,
)
from haq.layers import describe
from haq.models import load_model
from haq.policy import Policy
from haq.quant.evaluator import Evaluator
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def workspaces(digits):
    out = {}
    for name in ("digits-mobilenet", "digits-resnet"):
        loaded = load_model(name)
        layers = describe(loaded.module, loaded.input_shape)
        out[name] = (Evaluator(loaded.module, digits, None, layers, compile=False), layers)
    return out


@pytest.fixture(scope="module")
def searched_policies(workspaces):
    """A mixed policy found by a real (small) search per embedded model."""
    import haq

    out = {}
    for name in workspaces:
        result = haq.search(model=name, hardware="bitfusion", method="random", max_evaluations=6, seed=0,
                            budget=("latency=0.7",))
        out[name] = result.best_policy
    return out


def _initializer_types(proto) -> dict[str, int]:
    return {t.name: t.data_type for t in proto.graph.initializer}


@pytest.mark.parametrize("name", ["digits-mobilenet", "digits-resnet"])
@pytest.mark.parametrize("which", ["uniform-8", "uniform-4", "searched"])
def test_onnx_runtime_agrees_with_fake_quant_on_the_test_split(workspaces, searched_policies, name, which):
    ev, layers = workspaces[name]
    policy = {"uniform-8": Policy.uniform(layers, 8), "uniform-4": Policy.uniform(layers, 4)}.get(which)
    policy = policy or searched_policies[name].matched_to(layers)
    if which == "searched":
        assert len(set(policy.w_bits.tolist()) | set(policy.a_bits.tolist())) > 1, "the search found a uniform policy"
    proto, _, _ = build_qdq_model(ev, policy)
    check_model(proto)
    a = agreement(ev, policy, proto, "test")
    assert a.agreement >= 0.995
    assert a.accuracy_gap_images <= 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_with_random_weights_compute_what_onnx_runtime_computes(arch):
    """Teacher-forced (each evaluator quantizer fed ONNX Runtime's integers of its tensor),
    the evaluator and the exported model agree on the top-1 of every image and on every
    quantized element but at most 1 in 230,000, which differ by one step (float summation
    order at a rounding boundary): no systematic mismatch. Free-running, untrained networks
    amplify those few one-step differences (ResNet-18 uniform 8: 5e-6 of conv1's outputs
    differ, 40 % of the classifier's inputs) into changed top-1s on images with near-tied
    logits. Measured at 64x64, 300 generated images (benchmarks/deploy_agreement.py):
    ResNet-18 97.0 % (uniform 8) / 95.0 % (mixed), MobileNetV2 91.3 % / 86.0 % top-1
    agreement - the issue's 99 % is not reached, and cannot be by a float evaluator: the
    evaluator agrees with itself in the other memory format (another summation order) on
    94.3 / 93.0 / 95.0 / 86.0 % and in float64 on 97.7 / 95.3 / 90.0 / 76.3 %. Trained models
    agree on every image (test above). Asserted: forced >= 99 % with one-step local
    differences only; free-running within twice the noise floor's disagreement (+1 point)."""
    ev, layers = random_network(arch, 100)
    rng = np.random.default_rng(0)
    mixed = Policy.from_bits(layers, rng.choice([4, 6, 8], len(layers)), rng.choice([6, 8], len(layers)))
    for policy in (Policy.uniform(layers, 8), mixed):
        proto, _, _ = build_qdq_model(ev, policy)
        check_model(proto)
        forced = compare_tensors(ev, policy, proto, "test", forced=True)
        assert forced.agreement >= 0.99
        assert forced.max_steps == 1 and forced.fraction <= 1e-4
        free = compare_tensors(ev, policy, proto, "test", forced=False)
        worse_floor = 1 - min(float_noise_floor(ev, policy))
        assert 1 - free.agreement <= 2 * worse_floor + 0.01
        assert free.agreement >= 0.75


def test_containers_follow_the_bits_and_float_layers_stay_float(workspaces):
    ev, layers = workspaces["digits-mobilenet"]
    w = [8, 4, 6, 32] + [8] * (len(layers) - 4)
    a = [8, 8, 6, 32] + [8] * (len(layers) - 4)
    proto, quantized, float_layers = build_qdq_model(ev, Policy.from_bits(layers, w, a))
    types = _initializer_types(proto)
    names = [s.name for s in layers]
    assert types[f"{names[0]}.weight_quantized"] == TensorProto.INT8
    assert types[f"{names[1]}.weight_quantized"] == TensorProto.INT4
    assert types[f"{names[2]}.weight_quantized"] == TensorProto.INT8  # 6 bits in an 8-bit container
    assert f"{names[3]}.weight" in types and f"{names[3]}.weight_quantized" not in types
    assert types[f"{names[3]}.weight"] == TensorProto.FLOAT and float_layers == [names[3]]
    reads = {q.layer: q for q in quantized if q.role == "activation"}
    assert reads[names[0]].container == "uint8" and not reads[names[0]].clipped
    assert reads[names[2]].container == "uint8" and reads[names[2]].clipped
    assert names[3] not in reads


def test_six_bit_activations_take_at_most_64_values_in_their_uint8_container(workspaces, digits):
    ev, layers = workspaces["digits-resnet"]
    policy = Policy.uniform(layers, 8, 6)
    proto, quantized, _ = build_qdq_model(ev, policy)
    q_outputs = [n.output[0] for n in proto.graph.node if n.name.endswith("/input/QuantizeLinear")]
    del proto.graph.output[:]
    for name in q_outputs:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.UINT8, None))
    outs = ort_session(proto).run(q_outputs, {"input": digits.test.x.numpy()})
    assert len(outs) == len([q for q in quantized if q.role == "activation"])
    for o in outs:
        assert len(np.unique(o)) <= 64


def test_evaluator_adds_the_bias_an_integer_runtime_adds(workspaces):
    ev, layers = workspaces["digits-resnet"]
    i = 1
    (scale, _, _, _), _ = ev._act_params(i, 8)
    grid = float(np.float32(scale)) * ev.weight_scale(i, 8)
    b = ev.bias(i, 8, 8)
    q = b / grid
    assert torch.allclose(q, torch.round(q), atol=1e-3)
    assert not torch.equal(b, ev.bias(i, 8, 32))  # float input: the float bias
    assert torch.equal(ev.bias(i, 8, 32), ev.bias(i, 32, 8))


def test_export_writes_a_checked_model_that_runs(tmp_path, digits):
    result = export("uniform:8", tmp_path / "m.onnx", model="digits-mobilenet")
    proto = onnx.load(result.path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 21
    assert json.loads({p.key: p.value for p in proto.metadata_props}["policy"])["layers"]
    logits = ort_logits(ort_session(result.path), digits.test.x[:5])
    assert logits.shape == (5, 10)


def test_cli_export_of_a_run_directory_takes_its_model(tmp_path, workspaces):
    ev, layers = workspaces["digits-resnet"]
    run = tmp_path / "run"
    run.mkdir()
    Policy.uniform(layers, 8, model="digits-resnet").save(run / "policy.json")
    (run / "config.json").write_text(json.dumps({"model": "digits-resnet"}))
    r = run_cli("export", str(run), "--out", str(tmp_path / "r.onnx"))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (tmp_path / "r.onnx").is_file()


def test_a_policy_of_another_model_is_one_line_and_writes_nothing(tmp_path, workspaces):
    _, layers = workspaces["digits-resnet"]
    pol = Policy.uniform(layers, 8, model="digits-resnet").save(tmp_path / "policy.json")
    r = run_cli("export", str(pol), "--model", "digits-mobilenet", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "digits-resnet" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json"]


def test_a_run_directory_without_policy_is_one_line(tmp_path):
    r = run_cli("export", str(tmp_path), "--model", "digits-mobilenet", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "no policy.json" in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_is_one_line_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("export", "uniform:8", "--model", "digits-mobilenet", "--out", str(blocker / "m.onnx"))
    assert r.returncode == 2 and "--out" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("export", "uniform:8", "--model", "digits-mobilenet", "--out", str(tmp_path))
    assert r.returncode == 2 and "directory" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_verify_puts_measured_latency_beside_the_cpu_prediction(tmp_path, workspaces):
    _, layers = workspaces["digits-mobilenet"]
    run = tmp_path / "run"
    run.mkdir()
    w = [8] * len(layers)
    w[3] = w[4] = 32
    Policy.from_bits(layers, w, w, model="digits-mobilenet", hardware="cpu",
                     metrics={"latency_ms": 0.03}).save(run / "policy.json")
    (run / "config.json").write_text(json.dumps({"model": "digits-mobilenet", "hardware": "cpu"}))
    r = run_cli("verify", str(run), "--threads", "1", "--repeats", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [row["label"] for row in out["rows"]] == ["policy", "uniform int8", "fp32"]
    for row in out["rows"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        assert row["ort_accuracy"] == row["fake_quant_accuracy"]
    assert out["rows"][0]["searched_ms"] == 0.03 and out["threads"] == 1
    other = run_cli("verify", str(tmp_path), "--threads", "1")
    assert other.returncode == 2 and "no policy.json" in other.stderr


def test_activation_quantizer_rounds_half_steps_as_onnx_runtime_quantize_linear():
    """ONNX Runtime divides by the scale; a float32 reciprocal (torch's fake quant) puts some
    values near half steps on the other side."""
    from onnx import helper, numpy_helper

    from haq.quant.qlayer import ActivationQuantizer
    from haq.quant.quantizers import activation_params

    s, z, qmin, qmax = activation_params(-0.37, 2.9, 8, "asymmetric")
    s32 = np.float32(s)
    steps = torch.arange(qmin - z - 2, qmax - z + 2, dtype=torch.float64) + 0.5
    x = (steps[None, :] * float(s32) * (1 + torch.linspace(-3e-7, 3e-7, 13, dtype=torch.float64)[:, None])).float()
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, list(x.shape))],
        [numpy_helper.from_array(np.array(s32), "s"), numpy_helper.from_array(np.array(z, np.uint8), "z")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    ort_q = ort_session(proto).run(None, {"x": x.numpy()})[0].astype(np.float32) - z
    quantizer = ActivationQuantizer()
    quantizer.set_activation((s, z, qmin, qmax))
    ours = torch.round(quantizer.quantize(x) / float(s32)).numpy()
    assert np.array_equal(ours, ort_q)
    reciprocal = torch.fake_quantize_per_tensor_affine(x, float(s32), int(z), int(qmin), int(qmax))
    assert not torch.equal(torch.round(reciprocal / float(s32)), torch.from_numpy(ort_q))  # the old rule differs


def test_tensor_comparison_points_at_the_tensor_of_a_systematic_mismatch(workspaces):
    ev, layers = workspaces["digits-resnet"]
    policy = Policy.uniform(layers, 8)
    proto, _, _ = build_qdq_model(ev, policy)
    clean = compare_tensors(ev, policy, proto, "test", forced=True)
    assert clean.agreement == 1.0 and clean.max_steps <= 1 and clean.fraction <= 1e-4
    target = f"{layers[3].name}/input"
    q = next(n for n in proto.graph.node if n.name == f"{target}/QuantizeLinear")
    scale = next(t for t in proto.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(1.03), scale.name))
    bad = compare_tensors(ev, policy, proto, "test", forced=True)
    first = next(t for t in bad.tensors if t.fraction > 1e-3)  # the first systematic difference
    assert first.tensor == target and first.fraction > 0.05


def test_layers_with_equal_weights_export_each_with_its_own_quantizers():
    """The ONNX exporter shares equal initializers (zero-initialised residual branches, tied
    layers) through Identity nodes; each layer is still found and quantized."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10),
    ).eval()
    with torch.no_grad():
        model[4].weight.copy_(model[2].weight)
        model[4].bias.copy_(model[2].bias)
    data = generated_data((3, 8, 8), classes=10, images=32, seed=1, test=64)
    layers = describe(model, data.input_shape)
    ev = Evaluator(model, data, None, layers, compile=False)
    policy = Policy.from_bits(layers, [8, 8, 4, 8], [8, 8, 6, 8])
    proto, quantized, _ = build_qdq_model(ev, policy)
    check_model(proto)
    assert {q.layer for q in quantized if q.role == "weight"} == {s.name for s in layers}
    assert agreement(ev, policy, proto, "test").agreement == 1.0
