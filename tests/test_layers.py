"""describe() must be right on any torchvision classifier, not only the ones we test."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from haq.errors import ModelError
from haq.layers import describe


def test_resnet18_has_21_layers_11_7M_weights_and_1_814_gmacs():
    layers = describe(torchvision.models.resnet18(), (3, 224, 224))
    assert len(layers) == 21
    assert sum(s.params for s in layers) == 11_678_912  # conv + fc weights (11.69 M with BN and biases)
    assert sum(s.macs for s in layers) / 1e9 == pytest.approx(1.814, abs=1e-3)
    assert layers[0].name == "conv1" and layers[-1].kind == "linear"


def test_mobilenet_v2_has_53_layers_17_depthwise():
    layers = describe(torchvision.models.mobilenet_v2(), (3, 224, 224))
    assert len(layers) == 53
    assert sum(s.kind == "depthwise" for s in layers) == 17
    dw = next(s for s in layers if s.kind == "depthwise")
    assert dw.groups == dw.in_channels == dw.out_channels
    assert dw.macs == dw.out_hw[0] * dw.out_hw[1] * dw.out_channels * 9


def test_layers_are_in_execution_order_with_indices():
    layers = describe(torchvision.models.resnet18(), (3, 64, 64))
    assert [s.index for s in layers] == list(range(len(layers)))
    names = [s.name for s in layers]
    assert names.index("layer2.0.conv1") < names.index("layer2.0.downsample.0") < names.index("layer2.1.conv1")


def test_block_conv1_and_downsample_share_an_input_group():
    layers = {s.name: s for s in describe(torchvision.models.resnet18(), (3, 64, 64))}
    assert layers["layer2.0.conv1"].input_group == layers["layer2.0.downsample.0"].input_group
    assert layers["layer2.0.conv2"].input_group != layers["layer2.0.conv1"].input_group


def test_conv_macs_formula_and_grouped_conv_is_not_depthwise():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.Flatten(), nn.Linear(16 * 4 * 4, 5))
    conv, fc = describe(model, (8, 8, 8))
    assert conv.kind == "conv" and conv.groups == 2
    assert conv.macs == 4 * 4 * 16 * (8 // 2) * 3 * 3
    assert conv.out_hw == (4, 4) and conv.stride == (2, 2)
    assert fc.macs == 256 * 5 and fc.params == 256 * 5 and fc.bias_params == 5


def test_module_run_twice_is_described_once():
    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(describe(model, (3, 4, 4))) == 1


def test_a_wrong_input_shape_is_one_clear_error():
    with pytest.raises(ModelError, match="input shape .* failed.*--input-size"):
        describe(torchvision.models.resnet18(), (1, 8))


def test_a_model_without_conv_or_linear_is_refused():
    with pytest.raises(ModelError, match="no Conv2d or Linear"):
        describe(nn.Sequential(nn.ReLU()), (3, 4, 4))


def test_describe_leaves_training_mode_alone():
    model = torchvision.models.resnet18().train()
    describe(model, (3, 32, 32))
    assert model.training
    assert torch.is_grad_enabled()
