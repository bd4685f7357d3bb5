"""Per-layer Hessian traces by Hutchinson's estimator (HAWQ-V2/V3's sensitivity), cached.

For the loss ``L`` (cross-entropy, model in eval mode) and the weights ``W_i`` of the
quantizable layers, the trace of each diagonal block of the Hessian is estimated as

    Tr(H_i) ~= mean_k  v_i^T (H v)_i,      v ~ Rademacher (+-1) over all layers at once

with one full-model Hessian-vector product per probe: the gradient is taken with
``create_graph=True`` and differentiated again along ``v`` (``torch.autograd.grad(grads,
params, grad_outputs=v)``). The running means start at zero and the loop stops when the
relative change of *every* layer's running mean is below ``tol``, or after ``max_iter``
probes - PyHessian's rule (amirgholami/PyHessian ``hessian.trace``: tol 1e-3, 100
iterations), applied per layer instead of to the whole-model trace.

Several calibration batches are averaged the way PyHessian's data-loader path does it: each
probe's ``Hv`` is the image-weighted mean over the batches. With one batch the gradient
graph is built once and reused by every probe (one double-backward per probe).

Costs (CPU): one probe costs about 2-3x a forward+backward pass on the batch; traces are
cached on disk (JSON) per model weights, images, layers and settings, so a second search
on the same model starts at the ILP.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from haq.atomic import atomic_write_json
from haq.cache import cache_dir, content_key
from haq.devices import resolve_device
from haq.errors import ConfigError, DataError, SearchError

CACHE_FORMAT = "haq-hessian-traces/1"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TraceSettings:
    """How the traces are estimated (all of it is part of the cache key)."""

    batches: int = 1  #: calibration batches averaged per Hessian-vector product
    batch_size: int = 256  #: images per batch (the whole digits calibration split by default)
    max_iter: int = 100  #: most Rademacher probes (PyHessian: 100)
    tol: float = 1e-3  #: stop when every layer's running mean changes by less than this, relative (PyHessian: 1e-3)
    seed: int = 0  #: seed of the Rademacher probes

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError(f"hessian batches={self.batches}, batch_size={self.batch_size}: both must be >= 1")
        if self.max_iter < 1:
            raise ConfigError(f"hessian max_iter={self.max_iter}: must be >= 1")
        if not (self.tol >= 0):
            raise ConfigError(f"hessian tol={self.tol}: must be >= 0 (0 = always run max_iter probes)")


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson traces of the Hessian blocks of some parameter tensors.

    ``traces[i]`` is Tr(H_i) (a sum over the block's diagonal, not divided by its size);
    ``history`` has shape ``(iterations, n_params)``: every probe's v_i^T (Hv)_i.
    """

    traces: np.ndarray  #: (n,) Tr(H_i)
    iterations: int  #: probes used
    converged: bool  #: stopped by the tolerance (not by max_iter)
    history: np.ndarray  #: (iterations, n) per-probe estimates

    @property
    def standard_error(self) -> np.ndarray:
        """Standard error of each trace estimate, from the spread of the probes, ``(n,)``."""
        k = self.history.shape[0]
        if k < 2:
            return np.full(self.history.shape[1], np.inf)
        return self.history.std(axis=0, ddof=1) / np.sqrt(k)


def rademacher_like(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A tensor of +-1 with ``p``'s shape and dtype, drawn from ``generator`` (on CPU)."""
    v = torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8)
    return (v.to(p.dtype) * 2 - 1).to(p.device)


def hutchinson_traces(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> TraceEstimate:
    """Tr of each diagonal Hessian block of ``loss_fn(model(x), y)`` w.r.t. ``params``.

    ``params`` must be floating-point tensors of ``model`` with ``requires_grad=True``;
    the model is put in eval mode and not otherwise changed. ``batches`` are ``(x, y)``
    pairs; the loss is the image-weighted mean over them. Stopping: see module docstring.
    """
    params = list(params)
    if not params:
        raise SearchError(
            "the model has no trainable weights to take a Hessian of: hawq needs float nn.Parameter weights in its "
            "Conv2d/Linear layers (the model's are buffers or integer tensors); pass a float model"
        )
    for p in params:
        if not (torch.is_floating_point(p) and p.requires_grad):
            raise SearchError(
                f"a Hessian parameter of shape {tuple(p.shape)} is not a floating tensor with requires_grad=True; "
                "pass the float weights of the quantizable layers"
            )
    if not batches or sum(int(y.shape[0]) for _, y in batches) == 0:
        raise DataError("no calibration images to take the Hessian on: the calibration split is empty")
    model.eval()
    total = float(sum(int(y.shape[0]) for _, y in batches))
    gen = torch.Generator().manual_seed(int(seed))

    def grads_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise SearchError(f"the loss on the calibration data is {loss.item()}: cannot take its Hessian; check the model")
        return torch.autograd.grad(loss, params, create_graph=True)

    reuse = grads_of(*batches[0]) if len(batches) == 1 else None
    history: list[np.ndarray] = []
    running = np.zeros(len(params))
    converged = False
    for _ in range(max_iter):
        v = [rademacher_like(p, gen) for p in params]
        vhv = np.zeros(len(params))
        for x, y in batches:
            g = reuse if reuse is not None else grads_of(x, y)
            hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=reuse is not None)
            w = (int(y.shape[0]) / total) if reuse is None else 1.0
            vhv += w * np.array([float((h * vi).sum()) for h, vi in zip(hv, v, strict=True)])
        history.append(vhv)
        mean = np.mean(history, axis=0)
        change = np.abs(mean - running) / (np.abs(running) + 1e-6)
        running = mean
        if len(history) > 1 and bool((change < tol).all()):
            converged = True
            break
    if not np.isfinite(running).all():
        raise SearchError("the Hessian trace is not finite (NaN/Inf): check the model and data for overflow")
    return TraceEstimate(traces=running, iterations=len(history), converged=converged, history=np.array(history))


# ----- per-layer traces of a model in haq, cached --------------------------------------------
@dataclass(frozen=True)
class LayerTraces:
    """Hessian traces of every quantizable layer of one model on one calibration set.

    ``normalized`` is HAWQ's ``T_i = Tr(H_i) / n_i`` (``n_i`` = weight elements).
    """

    layer_names: tuple[str, ...]
    traces: np.ndarray  #: (L,) Tr(H_i)
    params: np.ndarray  #: (L,) weight elements n_i
    iterations: int  #: Rademacher probes used
    converged: bool  #: stopped by the tolerance rather than max_iter
    standard_error: np.ndarray  #: (L,) standard error of Tr(H_i)
    images: int  #: calibration images the Hessian was taken on
    seconds: float  #: wall time of the estimate (when it was computed, not loaded)
    settings: TraceSettings
    cached: bool = False  #: loaded from the cache

    @property
    def normalized(self) -> np.ndarray:
        return self.traces / self.params

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "layer_names": list(self.layer_names),
            "traces": self.traces.tolist(),
            "params": self.params.tolist(),
            "iterations": self.iterations,
            "converged": self.converged,
            "standard_error": [float(s) if np.isfinite(s) else None for s in self.standard_error],
            "images": self.images,
            "seconds": self.seconds,
            "settings": asdict(self.settings),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerTraces:
        if d.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a {CACHE_FORMAT} file")
        return cls(
            layer_names=tuple(d["layer_names"]),
            traces=np.array(d["traces"], dtype=np.float64),
            params=np.array(d["params"], dtype=np.float64),
            iterations=int(d["iterations"]),
            converged=bool(d["converged"]),
            standard_error=np.array([np.inf if s is None else s for s in d["standard_error"]], dtype=np.float64),
            images=int(d["images"]),
            seconds=float(d["seconds"]),
            settings=TraceSettings(**d["settings"]),
            cached=True,
        )


def layer_weights(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """The ``weight`` parameter of each named layer, made trainable on this (private) model.

    Everything else is frozen so the Hessian-vector products touch only these weights.
    A frozen model (``requires_grad=False``) is fine: the Hessian with respect to a weight
    exists whether or not the user trains it. A layer whose weight is not a float
    ``nn.Parameter`` (a buffer, an integer tensor) has no Hessian: one-line error.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    out: list[nn.Parameter] = []
    for name in names:
        w = getattr(model.get_submodule(name), "weight", None)
        if not isinstance(w, nn.Parameter) or not torch.is_floating_point(w):
            what = "no weight" if w is None else f"a {'buffer' if isinstance(w, torch.Tensor) else type(w).__name__}"
            if isinstance(w, torch.Tensor) and not torch.is_floating_point(w):
                what = f"an integer tensor ({w.dtype})"
            raise SearchError(
                f"layer {name} has {what} instead of a trainable float weight: the model has no trainable weights "
                "for the Hessian there; hawq needs a float model (or pick another method)"
            )
        w.requires_grad_(True)
        out.append(w)
    return out


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def calibration_batches(x: torch.Tensor, y: torch.Tensor, settings: TraceSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches * batch_size`` calibration images, in batches (fewer if the split is smaller)."""
    n = min(len(y), settings.batches * settings.batch_size)
    if n == 0:
        raise DataError("no calibration images to take the Hessian on: the calibration split is empty")
    return [(x[s : s + settings.batch_size], y[s : s + settings.batch_size]) for s in range(0, n, settings.batch_size)]


def layer_traces(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TraceSettings | None = None,
    use_cache: bool = True,
    device: torch.device | str = "cpu",
) -> LayerTraces:
    """Hutchinson traces of the named layers' weights, from the cache when the same model
    weights, images, layers and settings were seen before.

    ``model`` is not modified (a copy is differentiated); ``x`` ``(N, C, H, W)`` and ``y``
    ``(N,)`` are the calibration images and labels (the first ``batches * batch_size``
    are used). The traces are taken on ``device`` (the probes are drawn on the CPU, so a
    seed gives the same probes on every device).
    """
    import copy

    settings = settings or TraceSettings()
    batches = calibration_batches(x, y, settings)
    images = sum(len(b[1]) for b in batches)
    device = resolve_device(device)
    work = copy.deepcopy(model).to(device)
    params = layer_weights(work, layer_names)  # errors before any hashing
    key = content_key({
        "format": CACHE_FORMAT,
        "model": model_fingerprint(model),
        "data": tensor_fingerprint(x[:images], y[:images]),
        "layers": list(layer_names),
        "settings": asdict(settings),
        "loss": "cross_entropy",
    })
    path = cache_dir("hessian") / f"{key}.json"
    if use_cache and path.exists():
        try:
            return LayerTraces.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # corrupt or older format: recompute
    t0 = time.perf_counter()
    batches = [(bx.to(device), by.to(device)) for bx, by in batches]
    est = hutchinson_traces(work, params, batches, max_iter=settings.max_iter, tol=settings.tol, seed=settings.seed)
    result = LayerTraces(
        layer_names=tuple(layer_names),
        traces=est.traces,
        params=np.array([p.numel() for p in params], dtype=np.float64),
        iterations=est.iterations,
        converged=est.converged,
        standard_error=est.standard_error,
        images=images,
        seconds=time.perf_counter() - t0,
        settings=settings,
    )
    if use_cache:
        atomic_write_json(path, result.to_json())
    return result
