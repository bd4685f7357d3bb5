"""Every weight is counted or named: the layer descriptions of torchvision's classifiers cover
every weight-bearing operation - attention projections used through the functional API
included - so their MACs and parameters add up to independent counts, and what stays float
is named."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from haq.data import DataSplits, Split
from haq.layers import NORM_TYPES, describe, unquantized_parameters
from haq.quant.evaluator import Evaluator

MODELS = [  # (name, constructor kwargs, input size): small inputs keep the test fast
    ("resnet18", {}, 64),
    ("vit_b_16", {"image_size": 64}, 64),  # ViT needs image_size divisible by its patch (16)
    ("convnext_tiny", {}, 64),
    ("swin_t", {}, 224),  # window attention at 224 (56, 28, 14, 7 tokens a side; windows of 7)
]


def build(name: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def weight_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of every convolution and matrix product with a weight, counted by
    torch's own FLOP counter (grad enabled: attention takes its plain-aten path); the
    activation x activation products of attention (bmm, SDPA) are not weights."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if str(k) in ("aten.convolution", "aten.addmm", "aten.mm")) // 2


@pytest.mark.parametrize(("name", "kwargs", "size"), MODELS, ids=[m[0] for m in MODELS])
def test_layer_macs_and_parameters_add_up_to_independent_counts(name, kwargs, size):
    model = build(name, kwargs)
    specs = describe(model, (3, size, size))
    assert sum(s.macs for s in specs) == weight_macs(model, size)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False))
    loose = unquantized_parameters(model, specs)
    total = sum(p.numel() for p in model.parameters())
    assert sum(s.params + s.bias_params for s in specs) + norms + sum(loose.values()) == total
    assert all(not n.endswith((".weight", "in_proj_weight")) or "norm" in n for n in loose), loose


def test_vit_attention_projections_are_linear_layers_with_their_own_macs():
    model = build("vit_b_16", {"image_size": 64})
    specs = {s.name: s for s in describe(model, (3, 64, 64))}
    tokens = (64 // 16) ** 2 + 1  # patches + class token
    in_proj = specs["encoder.layers.encoder_layer_0.self_attention.in_proj"]
    out_proj = specs["encoder.layers.encoder_layer_0.self_attention.out_proj"]
    assert (in_proj.kind, in_proj.in_channels, in_proj.out_channels) == ("linear", 768, 3 * 768)
    assert in_proj.macs == tokens * 768 * 3 * 768 and in_proj.params == 3 * 768 * 768
    assert out_proj.macs == tokens * 768 * 768 and out_proj.bias_params == 768
    names = list(specs)
    assert names.index(in_proj.name) + 1 == names.index(out_proj.name)  # execution order
    assert set(unquantized_parameters(model, list(specs.values()))) == {"class_token", "encoder.pos_embedding"}


def test_vit_cost_counts_the_whole_model_at_224():
    model = build("vit_b_16", {})
    specs = describe(model, (3, 224, 224))
    # 16.85 G weight MACs; torchvision's 17.56 "GFLOPS" adds attention's q k^T and a v (activation x activation)
    assert 16.8e9 < sum(s.macs for s in specs) < 16.9e9
    assert 86.0e6 < sum(s.params for s in specs) < 86.5e6


def _random_data(n: int, size: int, classes: int = 10) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    part = Split(x, y)
    return DataSplits("random", (3, size, size), classes, part, part, part)


def test_vit_attention_is_quantized_and_float_policies_match_the_original_model():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)  # a two-block ViT: the structure of vit_b_16, small
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    data = _random_data(8, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = Evaluator(model, data, compile=False)
    names = [s.name for s in ev.layers]
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj" in names
    L = len(names)
    float_logits = ev.logits([32] * L, [32] * L)
    with torch.no_grad():
        reference = model(data.val.x)
    torch.testing.assert_close(float_logits, reference, rtol=1e-4, atol=1e-4)
    for layer in ("in_proj", "out_proj"):  # 2 bits on one projection (weight and input) changes the outputs
        w = [32] * L
        w[names.index(f"encoder.layers.encoder_layer_0.self_attention.{layer}")] = 2
        assert not torch.allclose(ev.logits(w, w), float_logits, atol=1e-3)
    messages = [str(w.message) for w in caught]
    assert any("class_token" in m and "% of parameters" in m for m in messages), messages


def test_swin_window_attention_weights_are_quantized_and_their_float_inputs_named():
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)  # swin_t's structure, one block per stage and narrow
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                            window_size=[7, 7], num_classes=10).eval()
    data = _random_data(2, 224)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = Evaluator(model, data, compile=False)
    line = next(str(w.message) for w in caught if "functional API" in str(w.message))
    assert "features.1.0.attn.qkv" in line and "% of MACs" in line and "\n" not in line
    L = len(ev.layers)
    qkv = [s.name for s in ev.layers].index("features.1.0.attn.qkv")
    w = [8] * L
    w[qkv] = 2
    assert not torch.equal(ev.logits(w, [32] * L), ev.logits([8] * L, [32] * L))  # its weight is quantized
