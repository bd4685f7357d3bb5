"""Layer descriptions: what every hardware model and searcher knows about a network.

:func:`describe` runs one forward pass of batch 1 with hooks on every ``nn.Conv2d`` and
``nn.Linear`` and returns one :class:`LayerSpec` per quantizable layer, in execution order
(the order HAQ's agent walks them and the order of every per-layer array in haq).

Every weight-bearing operation is described, including weights a module uses through the
functional API, where hooks on ``nn.Linear`` never fire:

* ``nn.MultiheadAttention`` (ViT): two linear layers, ``<name>.in_proj`` (``E -> 3E``, the
  packed ``in_proj_weight``) and ``<name>.out_proj`` (``E -> E``), on the query's tokens;
* a ``nn.Linear`` whose own forward never runs but whose parent module does (Swin's window
  attention reads ``qkv.weight`` and ``proj.weight``): a linear layer on the parent input's
  tokens (:func:`functional_layers` names them).

:func:`unquantized_parameters` names the parameters no layer covers (norms aside: position
embeddings, class tokens, relative-position tables, layer scales), which stay float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from haq.errors import ModelError

LayerKind = Literal["conv", "depthwise", "linear"]
LAYER_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear")


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer, as seen on one image (batch 1).

    Example (torchvision ResNet-18, 224x224)::

        LayerSpec(name="layer1.0.conv1", kind="conv", in_channels=64, out_channels=64,
                  kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=1,
                  in_hw=(56, 56), out_hw=(56, 56), params=36864, bias_params=0,
                  macs=115605504, index=1, input_group=1)

    A ``linear`` layer has ``kernel=(1, 1)``, ``stride=(1, 1)``, ``in_hw=out_hw=(1, 1)``
    (or ``(tokens, 1)`` for a linear applied to a sequence).
    """

    name: str  #: module path in ``model.named_modules()``
    kind: LayerKind  #: conv | depthwise | linear
    in_channels: int  #: input channels (in_features for linear)
    out_channels: int  #: output channels (out_features for linear)
    kernel: tuple[int, int]  #: (kh, kw)
    stride: tuple[int, int]  #: (sh, sw)
    padding: tuple[int, int]  #: (ph, pw), zero for linear
    groups: int  #: conv groups; == in_channels for depthwise
    in_hw: tuple[int, int]  #: input spatial size (h, w) in pixels
    out_hw: tuple[int, int]  #: output spatial size (h, w) in pixels
    params: int  #: weight elements (the quantized ones)
    bias_params: int  #: bias elements (kept in float)
    macs: int  #: multiply-accumulates per image: out_h*out_w*out_c*(in_c/groups)*kh*kw
    index: int  #: position in execution order, 0-based
    input_group: int  #: layers with equal input_group read the same input tensor

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "depthwise"

    def to_dict(self) -> dict:
        return asdict(self)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def quantizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear of ``model`` in registration order (not execution order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


class _InProj:
    """The packed input projection of an ``nn.MultiheadAttention``, seen as a linear layer."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        self.in_features = mha.embed_dim
        self.out_features = 3 * mha.embed_dim
        self.weight = mha.in_proj_weight
        self.bias = mha.in_proj_bias


def _query(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["query"]


def functional_layers(model: nn.Module, specs: Sequence[LayerSpec]) -> list[str]:
    """Names of the described layers whose weights ``model`` uses through the functional API
    (attention projections): their module's own forward never runs."""
    names = {n for n, _ in quantizable_modules(model)}
    out = []
    for s in specs:
        parent = s.name.rpartition(".")[0]
        if s.name not in names or isinstance(model.get_submodule(parent) if parent else model, nn.MultiheadAttention):
            out.append(s.name)
    return out


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def unquantized_parameters(model: nn.Module, specs: Sequence[LayerSpec]) -> dict[str, int]:
    """Parameters (name -> elements) of ``model`` that no layer in ``specs`` covers, norm
    layers' affine parameters aside: what stays float whatever the policy (position
    embeddings, class tokens, relative-position tables, layer scales, unused heads)."""
    covered: set[str] = set()
    for s in specs:
        if s.name.endswith(".in_proj"):
            base = s.name[: -len("in_proj")]
            covered |= {base + "in_proj_weight", base + "in_proj_bias"}
        covered |= {s.name + ".weight", s.name + ".bias"}
    for mod_name, m in model.named_modules():
        if isinstance(m, NORM_TYPES):
            covered |= {f"{mod_name}.{p}" if mod_name else p for p, _ in m.named_parameters(recurse=False)}
    return {n: int(p.numel()) for n, p in model.named_parameters() if n not in covered}


def describe(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Describe every Conv2d and Linear that runs in a forward pass of ``model``.

    ``input_shape`` is one image, ``(C, H, W)`` (no batch dimension). Modules that exist
    but never run (e.g. an unused head) are not described; a module that runs twice is
    described once (its first call), because a policy gives it one bitwidth.
    """
    modules = dict(quantizable_modules(model))
    if not modules:
        raise ModelError("the model has no Conv2d or Linear layer to quantize")
    records: list[tuple[str, Any, torch.Tensor, torch.Tensor | None]] = []
    seen: set[str] = set()
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name not in seen:
                seen.add(name)
                records.append((name, module, inputs[0], output))

        return fn

    def attention_hook(name: str):
        def fn(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
            if name + ".in_proj" in seen:
                return
            q = _query(args, kwargs)
            seen.update({name + ".in_proj", name + ".out_proj"})
            records.append((name + ".in_proj", _InProj(module), q, None))
            # a tensor of the attention output's shape that no other layer reads (own input group)
            records.append((name + ".out_proj", module.out_proj, torch.empty(q.shape[:-1] + (module.embed_dim,)), None))

        return fn

    def parent_hook(children: list[tuple[str, nn.Linear]]):
        def fn(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            for name, child in children:
                if name in seen or x is None or x.shape[-1] != child.in_features:
                    continue
                seen.add(name)
                records.append((name, child, x, None))

        return fn

    attention = {n: m for n, m in model.named_modules()  # packed projections (separate q/k/v ones stay float)
                 if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None}
    for name, module in attention.items():
        handles.append(module.register_forward_hook(attention_hook(name), with_kwargs=True))
        seen.add(name + ".out_proj")  # described with its attention's in_proj
    by_parent: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, layer in modules.items():
        handles.append(layer.register_forward_hook(hook(name)))
        parent = name.rpartition(".")[0]
        if isinstance(layer, nn.Linear) and parent not in attention:
            by_parent.setdefault(parent, []).append((name, layer))
    for parent, children in by_parent.items():
        handles.append(model.get_submodule(parent).register_forward_hook(parent_hook(children), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    except Exception as exc:  # a user model that cannot take this shape
        raise ModelError(
            f"a forward pass with input shape {tuple(input_shape)} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass the input size the model expects "
            "with --input-size"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    # Tensors are kept alive in `records`, so id() identifies them uniquely here.
    group_of_tensor: dict[int, int] = {}
    specs: list[LayerSpec] = []
    for index, (name, module, x, y) in enumerate(records):
        group = group_of_tensor.setdefault(id(x), index)
        specs.append(_spec(name, module, x, y, index, group))
    return specs


def _spec(name: str, m: Any, x: torch.Tensor, y: torch.Tensor | None, index: int, group: int) -> LayerSpec:
    bias = getattr(m, "bias", None)
    bias_params = int(bias.numel()) if isinstance(bias, torch.Tensor) else 0
    if isinstance(m, nn.Conv2d):
        assert y is not None
        kh, kw = _pair(m.kernel_size)
        in_hw = (int(x.shape[-2]), int(x.shape[-1]))
        out_hw = (int(y.shape[-2]), int(y.shape[-1]))
        depthwise = m.groups > 1 and m.groups == m.in_channels
        pad = m.padding if not isinstance(m.padding, str) else ((kh - 1) // 2, (kw - 1) // 2)
        macs = out_hw[0] * out_hw[1] * m.out_channels * (m.in_channels // m.groups) * kh * kw
        return LayerSpec(
            name=name,
            kind="depthwise" if depthwise else "conv",
            in_channels=m.in_channels,
            out_channels=m.out_channels,
            kernel=(kh, kw),
            stride=_pair(m.stride),
            padding=_pair(pad),
            groups=m.groups,
            in_hw=in_hw,
            out_hw=out_hw,
            params=int(m.weight.numel()),
            bias_params=bias_params,
            macs=int(macs),
            index=index,
            input_group=group,
        )
    assert isinstance(m, (nn.Linear, _InProj))
    rows = int(x.numel() // x.shape[-1])  # tokens per image for a sequence input, else 1
    return LayerSpec(
        name=name,
        kind="linear",
        in_channels=m.in_features,
        out_channels=m.out_features,
        kernel=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        groups=1,
        in_hw=(rows, 1),
        out_hw=(rows, 1),
        params=int(m.weight.numel()),
        bias_params=bias_params,
        macs=int(rows * m.in_features * m.out_features),
        index=index,
        input_group=group,
    )
