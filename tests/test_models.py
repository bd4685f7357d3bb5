"""Models by name: embedded defaults (trained and cached), torchvision, user factories, weights."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from haq.cache import cache_dir
from haq.digits_models import TrainRecipe, load_digits_model
from haq.errors import ModelError, UnknownNameError
from haq.layers import describe
from haq.models import load_model


def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model(split.x).argmax(1) == split.y).float().mean())


def test_digits_mobilenet_reaches_98_5_percent_test_accuracy(mobilenet, digits):
    assert _accuracy(mobilenet.module, digits.test) >= 0.985


def test_digits_resnet_reaches_98_5_percent_test_accuracy(resnet, digits):
    assert _accuracy(resnet.module, digits.test) >= 0.985


def test_embedded_models_have_the_documented_layers(mobilenet, resnet):
    mob = describe(mobilenet.module, mobilenet.input_shape)
    res = describe(resnet.module, resnet.input_shape)
    assert len(mob) == 17 and sum(s.kind == "depthwise" for s in mob) == 5
    assert len(res) == 10 and any("downsample" in s.name for s in res)


def test_the_shipped_weights_are_the_released_ones_on_every_machine(mobilenet):
    import hashlib
    from importlib import resources

    from haq.digits_models import SHIPPED_SHA256

    for arch, digest in SHIPPED_SHA256.items():
        assert hashlib.sha256(resources.files("haq").joinpath(f"weights/{arch}.pt").read_bytes()).hexdigest() == digest
    shipped = torch.load(resources.files("haq").joinpath("weights/digits-mobilenet.pt").open("rb"), weights_only=True)
    assert all(torch.equal(v, mobilenet.module.state_dict()[k]) for k, v in shipped.items())


def test_tampered_shipped_weights_are_refused_with_one_line(monkeypatch):
    import haq.digits_models as dm

    monkeypatch.setitem(dm.SHIPPED_SHA256, "digits-resnet", "0" * 64)
    with pytest.raises(ModelError, match="do not match their SHA-256; reinstall haq"):
        dm.load_digits_model("digits-resnet")


@pytest.mark.slow
def test_retraining_with_our_code_reproduces_at_least_98_5_percent(digits):
    from haq.digits_models import train_digits_model

    model, acc = train_digits_model(TrainRecipe("digits-mobilenet"))
    assert acc >= 0.985 and _accuracy(model, digits.test) == pytest.approx(acc)


def test_a_corrupted_cache_file_is_retrained_not_trusted(mobilenet, digits):
    from dataclasses import asdict

    from haq.cache import content_key

    load_digits_model("digits-resnet", retrain=True)  # trained and cached (a fresh clone has no cache)
    key = content_key(asdict(TrainRecipe("digits-resnet")))
    weights = cache_dir("models") / f"digits-resnet-{key}.pt"
    meta = json.loads((cache_dir("models") / f"digits-resnet-{key}.json").read_text())
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[:100])  # truncated: hash no longer matches
        model = load_digits_model("digits-resnet", retrain=True)  # retrains (deterministic recipe)
        assert _accuracy(model, digits.test) >= 0.985
        assert json.loads((cache_dir("models") / f"digits-resnet-{key}.json").read_text())["sha256"] == meta["sha256"]
    finally:
        if weights.read_bytes() != good:
            weights.write_bytes(good)


def test_torchvision_models_by_name():
    m = load_model("mobilenet_v2", trained=False)
    assert isinstance(m.module, torchvision.models.MobileNetV2) and m.input_shape == (3, 224, 224)
    assert load_model("resnet18", input_size=64).input_shape == (3, 64, 64)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError, match="did you mean.*resnet18"):
        load_model("resnet81")


def test_user_factory_by_module_path():
    m = load_model("tests.fixtures.user_model:tiny_cnn")
    assert len(describe(m.module, (3, 8, 8))) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.fixtures.nope:f", "cannot import tests.fixtures.nope"),
        ("tests.fixtures.user_model:missing", "has no attribute 'missing'"),
        ("tests.fixtures.user_model:not_a_module", "returned int, not a torch.nn.Module"),
    ],
)
def test_bad_user_factories_are_one_line(spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec)


def test_weights_load_as_a_state_dict_with_weights_only(tmp_path):
    src = torchvision.models.resnet18()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    m = load_model("resnet18", weights=path)
    assert torch.equal(m.module.conv1.weight, src.conv1.weight)


def test_weights_of_another_model_say_which_keys_differ(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ModelError, match=r"does not fit model mobilenet_v2: missing features.0.0.weight.*unexpected conv1.weight"):
        load_model("mobilenet_v2", weights=path)


def test_weights_with_another_shape_name_the_tensor(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError, match=r"shape of fc.weight is \(10, 512\), the model has \(1000, 512\)"):
        load_model("resnet18", weights=path)


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torchvision.models.resnet18()}, path)  # a whole module: needs unpickling
    with pytest.raises(ModelError, match="loads weights only, never pickled objects"):
        load_model("resnet18", weights=path)


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "w.pt"
    path.write_text("hello")
    with pytest.raises(ModelError, match="is not a state dict saved with torch.save"):
        load_model("resnet18", weights=path)
