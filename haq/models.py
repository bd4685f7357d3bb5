"""Models by name: the embedded defaults, any torchvision classifier, or a user factory.

``load_model(name, weights=None)`` is the one entry point:

* ``digits-mobilenet``, ``digits-resnet`` - trained on first use, cached (:mod:`haq.digits_models`).
* any torchvision classification model (``resnet18``, ``mobilenet_v2``, ...) - random
  initialisation unless ``weights`` names a state dict.
* ``package.module:factory`` - the user's own ``nn.Module`` factory (called with no
  arguments).

Weights are always read with ``torch.load(..., weights_only=True)``: haq never unpickles
what a user hands it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from haq.errors import ModelError, UnknownNameError

EMBEDDED = {
    "digits-mobilenet": "inverted residuals + depthwise convs, 17 layers, trained on digits (embedded default)",
    "digits-resnet": "ResNet basic blocks + downsample convs, 10 layers, trained on digits (embedded)",
}


@dataclass
class LoadedModel:
    """A model ready for quantization, with what the rest of haq needs to know about it."""

    name: str
    module: nn.Module  #: eval mode, on CPU
    input_shape: tuple[int, int, int]  #: (C, H, W) of one image
    default_data: str | None  #: data spec it was trained on, if haq knows


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[tuple[str, str]]:
    rows = list(EMBEDDED.items())
    rows.append(("<torchvision name>", f"any of {len(_torchvision_names())} torchvision classifiers, e.g. resnet18, mobilenet_v2 (--weights PATH)"))
    rows.append(("package.module:factory", "your own nn.Module factory, called with no arguments"))
    return rows


def load_model(
    name: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    trained: bool = True,
) -> LoadedModel:
    """Build model ``name`` (see module docstring); ``input_size`` overrides H = W.

    ``trained=False`` skips training/loading the embedded models' weights: enough for
    anything that needs only layer shapes (``haq cost``).
    """
    if input_size is not None and int(input_size) < 1:
        raise ModelError(f"--input-size {input_size}: must be a positive number of pixels (e.g. 224)")
    if name in EMBEDDED:
        from haq.digits_models import ARCHITECTURES, load_digits_model

        module = load_digits_model(name) if trained else ARCHITECTURES[name]()
        shape, data = (1, 8, 8), "digits"
    elif ":" in name:
        module = _user_factory(name)
        shape, data = (3, 224, 224), None
    else:
        names = _torchvision_names()
        if name not in names:
            close = difflib.get_close_matches(name, [*EMBEDDED, *names], n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "`haq list models` shows the choices"
            raise UnknownNameError(f"unknown model {name!r}: {hint}")
        import torchvision

        kwargs = {"num_classes": num_classes} if num_classes else {}
        try:
            module = torchvision.models.get_model(name, weights=None, **kwargs)
        except TypeError as exc:
            raise ModelError(f"model {name}: {exc}") from None
        shape, data = (3, 299, 299) if name == "inception_v3" else (3, 224, 224), None
    if weights is not None:
        load_weights(module, weights, name)
    if input_size is not None:
        shape = (shape[0], int(input_size), int(input_size))
    return LoadedModel(name, module.eval(), shape, data)


def _user_factory(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    if not mod_name.strip() or mod_name.startswith("."):
        raise ModelError(f"model {spec}: write package.module:factory (an absolute module name before the colon)")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, or whatever the user's module raises on import
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {spec}: cannot import {mod_name} ({first}); check PYTHONPATH and the module name") from None
    factory = getattr(mod, attr, None) if attr else None
    if factory is None:
        raise ModelError(f"model {spec}: module {mod_name} has no attribute {attr!r}; write package.module:factory")
    if not callable(factory):
        raise ModelError(f"model {spec}: {attr} is a {type(factory).__name__}, not a factory function or class")
    try:
        module = factory()
    except Exception as exc:  # the user's code: any error is theirs to fix, reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"model {spec}: calling {attr}() failed ({type(exc).__name__}: {first[:160]}); "
            "the factory must build the nn.Module with no arguments"
        ) from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"model {spec}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module: nn.Module, path: str | Path, model_name: str = "model") -> None:
    """Load a state dict from ``path`` into ``module`` (strict), never unpickling objects.

    Accepts a bare state dict or one nested under ``state_dict``/``model`` (common training
    checkpoints); a ``module.`` prefix from DataParallel is stripped.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"weights file {path} is a directory; pass the state-dict file inside it")
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # torch's message for a file that is no torch archive at all is a bare byte value ("101")
        why = f" ({first[:160]})" if len(first) > 12 else " (not a torch archive)"
        raise ModelError(
            f"weights file {path} is not a state dict saved with torch.save(model.state_dict()){why}; "
            "haq loads weights only, never pickled objects"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shape_bad:
            k = shape_bad[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, the model has {tuple(own[k].shape)}")
        raise ModelError(f"weights file {path} does not fit model {model_name}: " + "; ".join(parts))
    module.load_state_dict(state)


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more
