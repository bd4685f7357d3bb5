"""The library entry points the CLI, the notebooks and the experiments call.

* :func:`prepare` - load model, data, layers, evaluator, hardware and cost table once
  (a :class:`Workspace`; ``haq compare`` runs every method on one).
* :func:`make_problem` - the frozen :class:`~haq.problem.SearchProblem` of a config.
* :func:`search` - ``haq.search(model=..., hardware=..., budget=..., method="rl")``: one
  search, optionally into a run directory that can be resumed.
* :func:`make_env` - the entry point of ``gymnasium.make("haq/MixedPrecision-v0", ...)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from haq.budget import Budget, ResolvedBudget, check_reachable
from haq.config import SearchConfig, default_budget
from haq.costs import CostModel, CostTable
from haq.data import DataSplits, load_data
from haq.devices import resolve_device
from haq.errors import ConfigError, DataError
from haq.layers import LayerSpec, describe
from haq.ledger import Ledger, Recorder
from haq.methods import MethodSpec, SearchResult, build_options, get_method, run_method
from haq.models import LoadedModel, load_model
from haq.pool import EvaluationPool
from haq.problem import SearchProblem, Trial
from haq.quant.evaluator import Evaluator
from haq.ray_pool import make_pool
from haq.runs import RunDir
from haq.simulators import HardwareModel, get_hardware


@dataclass
class Workspace:
    """Model, data, evaluator and hardware of one (model, data, hardware) triple.

    Built once; every method of ``haq compare`` searches the same workspace.
    """

    model: LoadedModel
    data: DataSplits
    layers: list[LayerSpec]
    evaluator: Evaluator
    hardware: HardwareModel
    table: CostTable
    costs: CostModel


def load_model_and_data(
    model: str, weights: str | Path | None, data: str | None, input_size: int | None, unlabeled: str | None = None,
    max_images: int | None = None,
) -> tuple[LoadedModel, DataSplits, list[LayerSpec]]:
    """The model, its data splits and its layer descriptions (what every accuracy needs)."""
    loaded = load_model(model, weights, input_size=input_size)
    spec = data or loaded.default_data
    if spec is None:
        raise ConfigError(
            f"model {model} needs data to measure accuracy: pass --data imagefolder:PATH "
            "(or use `haq cost`, which needs none)"
        )
    splits = load_data(spec, image_size=input_size, unlabeled=unlabeled, max_images=max_images)
    if splits.input_shape[0] != loaded.input_shape[0]:
        raise DataError(
            f"model {model} takes {loaded.input_shape[0]}-channel images, data {splits.name} gives "
            f"{splits.input_shape[0]}-channel ones; --input-size cannot change that: use the model's own data "
            f"({loaded.default_data or 'none'}) or a model for this data"
        )
    if tuple(splits.input_shape) != tuple(loaded.input_shape) and input_size is None:
        loaded.input_shape = tuple(splits.input_shape)  # type: ignore[assignment]
    return loaded, splits, describe(loaded.module, loaded.input_shape)


def prepare(config: SearchConfig, device: str = "auto") -> Workspace:
    """Load everything a search needs (the embedded models are shipped trained).

    ``device`` is where evaluation, calibration and Hessian traces run (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``); it is not part of the config: results on the CPU never depend on it."""
    dev = resolve_device(device)  # CUDA asked for and absent: one line before any loading
    hardware = get_hardware(config.hardware)
    loaded, data, layers = load_model_and_data(config.model, config.weights, config.data, config.input_size,
                                               config.unlabeled, config.max_images)
    evaluator = Evaluator(loaded.module, data, config.scheme, layers, device=dev)
    table = hardware.cost_table(layers, config.hardware_batch)
    return Workspace(loaded, data, layers, evaluator, hardware, table, CostModel(layers, table))


def bit_choices(
    hardware: HardwareModel, layers: Sequence[LayerSpec], min_bits: int = 2, max_bits: int = 8
) -> tuple[tuple[int, ...], ...]:
    """Per layer, the bitwidths a searcher may give it: what the hardware runs within
    [min_bits, max_bits]; when that leaves fewer than two, the hardware's float modes are
    added (so a CPU with int8 and fp32 still has a choice per layer)."""
    out = []
    for s in layers:
        supported = hardware.supported_bits(s.kind)
        c = [b for b in supported if min_bits <= b <= max_bits]
        if len(c) < 2:
            c = sorted(set(c) | {b for b in supported if b > max_bits})
        if not c:
            raise ConfigError(
                f"{hardware.name} runs {list(supported)} bits for {s.kind} layers, none within "
                f"--min-bits {min_bits} --max-bits {max_bits}; widen the range"
            )
        out.append(tuple(c))
    return tuple(out)


def pinned_layers(pin: str, layers: Sequence[LayerSpec]) -> tuple[int, ...]:
    """Indices of layers fixed at 8 bits: ``first,last``, ``first``, ``last``, ``none`` or names."""
    if pin in ("", "none"):
        return ()
    names = [s.name for s in layers]
    out: set[int] = set()
    for item in (p.strip() for p in pin.split(",") if p.strip()):
        if item == "first":
            out.add(0)
        elif item == "last":
            out.add(len(layers) - 1)
        elif item in names:
            out.add(names.index(item))
        else:
            close = difflib.get_close_matches(item, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "use first, last, none or layer names"
            raise ConfigError(f"--pin {item!r} is not a layer of the model: {hint}")
    return tuple(sorted(out))


def resolve_budget(config: SearchConfig, costs: CostModel) -> ResolvedBudget:
    """The config's budget in absolute units (relative items are x uniform 8-bit)."""
    return Budget.parse(list(config.budget)).resolve(costs.uniform(8))


def method_options(config: SearchConfig) -> Any:
    """The method's options dataclass built from ``config.options`` (unknown keys and values
    of the wrong type refused with one line)."""
    return build_options(get_method(config.method).options_type, config.options, config.method)


def make_problem(config: SearchConfig, ws: Workspace, options: Any = None) -> SearchProblem:
    """The search problem of ``config`` on a prepared workspace (budget checked reachable).

    ``options`` are the method's (built from the config when None): a method may search
    under its own scheme (HAGO's thresholds)."""
    spec = get_method(config.method)
    options = method_options(config) if options is None else options
    choices = bit_choices(ws.hardware, ws.layers, config.min_bits, config.max_bits)
    pinned = pinned_layers(config.pin, ws.layers)
    resolved = resolve_budget(config, ws.costs)
    check_reachable(ws.costs, resolved, choices, pinned, ws.hardware.name)
    scheme = config.scheme if spec.scheme is None else spec.scheme(config.scheme, options)
    return SearchProblem(
        model_name=config.model,
        hardware=ws.hardware.name,
        layers=tuple(ws.layers),
        costs=ws.costs,
        budget=resolved,
        choices=choices,
        scheme=scheme,
        pinned=pinned,
        seed=config.seed,
        max_evaluations=config.max_evaluations or spec.default_evaluations,
        max_accuracy_drop=config.max_accuracy_drop,
        select=config.select,
        select_top_k=config.select_top_k,
    )


def config_from(config: SearchConfig | str | Path | None = None, **overrides: Any) -> SearchConfig:
    """A :class:`SearchConfig` from a config (or a config file) and keyword overrides.

    Overrides that are config fields set them (``budget`` may be one string); ``episodes`` is
    ``max_evaluations``; every other keyword is a method option (checked against the
    method's options).
    """
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, SearchConfig):
        base = config.to_dict()
    else:
        base = SearchConfig.from_file(config).to_dict()
    overrides = dict(overrides)
    if "episodes" in overrides:
        episodes = overrides.pop("episodes")
        if overrides.get("max_evaluations") not in (None, episodes):
            raise ConfigError("episodes and max_evaluations disagree; give one of them")
        overrides["max_evaluations"] = episodes
    names = {f.name for f in fields(SearchConfig)}
    cfg = {k: v for k, v in overrides.items() if k in names}
    options = {k: v for k, v in overrides.items() if k not in names}
    if isinstance(cfg.get("budget"), str):
        cfg["budget"] = (cfg["budget"],)
    merged = {**base, **cfg}
    if merged.get("budget") is None:
        merged["budget"] = (default_budget(merged.get("max_accuracy_drop")),)
    merged["options"] = {**dict(base.get("options") or {}), **dict(cfg.get("options") or {}), **options}
    resolved = SearchConfig.from_dict(merged, source="search()")
    method_options(resolved)  # unknown options and bad values fail before any work
    return resolved


def open_ledger(
    problem: SearchProblem,
    ws: Workspace,
    spec: MethodSpec,
    *,
    recorder: Recorder | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    replay: dict[int, dict[str, Any]] | None = None,
    checkpoint_dir: Path | None = None,
    pool: EvaluationPool | None = None,
    max_batch: int | None = None,
) -> Ledger:
    """The ledger one run of ``spec`` on ``problem`` measures through."""
    return Ledger(problem, ws.evaluator, method=spec.name, pool=pool, recorder=recorder, on_trial=on_trial,
                  replay=replay, checkpoint_dir=checkpoint_dir, max_batch=max_batch)


def search(
    config: SearchConfig | str | Path | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    workspace: Workspace | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    pool: EvaluationPool | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    device: str = "auto",
    **overrides: Any,
) -> SearchResult:
    """Run one search and return its :class:`~haq.methods.SearchResult`.

    ``config`` is a :class:`SearchConfig`, a config file (``.json``/``.toml``) or None (the
    defaults: digits-mobilenet on bismo-edge at ``latency=0.6``, method ``rl``). Keyword
    arguments override it: :class:`SearchConfig` fields (``model``, ``hardware``, ``budget``,
    ``method``, ``seed``, ``max_evaluations``, ``data``, ``pin``, ``max_accuracy_drop``...),
    ``episodes`` (= ``max_evaluations``), and the method's options (``warmup_episodes=10``,
    ``alternatives=8``... see ``haq list options``). With ``max_accuracy_drop`` and no budget
    the budget is ``latency=1.0`` and the cheapest policy within the drop is returned.

    With ``out``, a run directory is written (config.json, history.csv as it goes,
    policy.json, plots, ...); ``resume=True`` continues an interrupted one.

    Where accuracies are measured - never what they are: ``workers=N`` measures on N Ray
    actors (a local Ray is started for the call), ``ray_address`` on an existing Ray cluster,
    ``pool`` on a pool the caller owns (e.g. one for several searches); ``device`` is
    ``auto``/``cpu``/``cuda``/``cuda:N`` (see :mod:`haq.devices`).
    """
    cfg = config_from(config, **overrides)
    spec = get_method(cfg.method)
    options = method_options(cfg)
    if workspace is not None and (workspace.hardware.name, workspace.model.name) != (cfg.hardware, cfg.model):
        raise ConfigError(
            f"the workspace holds {workspace.model.name} on {workspace.hardware.name}, the search asks for "
            f"{cfg.model} on {cfg.hardware}; pass model= and hardware= matching the workspace"
        )
    run = RunDir(out) if out is not None else None
    if run is not None:  # a busy or mismatched run dir fails now, before any work
        run.check_available(cfg.to_dict(), resume, ignore=("fidelity",))
    ws = workspace or prepare(cfg, device)
    problem = make_problem(cfg, ws, options)  # every input is known good before --out is touched
    own_pool = make_pool(ws.evaluator, workers=workers, ray_address=ray_address,
                         device=str(ws.evaluator.device)) if pool is None else None
    pool = pool or own_pool
    try:
        if run is None:
            return run_method(spec, problem, open_ledger(problem, ws, spec, on_trial=on_trial, pool=pool), options)
        record = {**cfg.to_dict(), "fidelity": ws.data.fidelity_description()}
        run.open(record, resume)
        try:
            writer = run.history_writer()
            ledger = open_ledger(problem, ws, spec, recorder=writer, on_trial=on_trial, pool=pool,
                                 replay=writer.replay() if resume else None, checkpoint_dir=run.checkpoint)
            result = run_method(spec, problem, ledger, options)
            run.write_result(result, record)
            return result
        finally:
            run.release()
    finally:
        if own_pool is not None:
            own_pool.close()


def make_env(
    problem: SearchProblem | None = None,
    ledger: Ledger | None = None,
    max_evaluations: int | None = None,
    reward_scale: float = 0.1,
    **config: Any,
) -> Any:
    """``gymnasium.make("haq/MixedPrecision-v0", **kwargs)``: a
    :class:`~haq.envs.quantization_env.MixedPrecisionEnv` over the problem of
    :class:`SearchConfig` fields ``config`` (defaults: the embedded digits-mobilenet on
    bismo-edge at latency=0.6), measuring through its own ledger; unlimited evaluations
    unless ``max_evaluations`` is given. ``problem`` (and its ``ledger``) use an existing
    problem instead of building one."""
    import sys

    from haq.envs.quantization_env import MixedPrecisionEnv

    if problem is not None:
        if config or max_evaluations is not None:
            given = sorted([*config, *(["max_evaluations"] if max_evaluations is not None else [])])
            raise ConfigError(f"MixedPrecisionEnv: got problem= and {', '.join(given)}; pass either a SearchProblem "
                              "or the arguments to build one")
        return MixedPrecisionEnv(problem, ledger, reward_scale=reward_scale)

    cfg = config_from(None, method="rl", max_evaluations=max_evaluations, **config)
    if set(cfg.options):
        raise ConfigError(f"MixedPrecisionEnv: unknown argument {sorted(cfg.options)[0]!r}; "
                          "pass SearchConfig fields (model, hardware, budget, ...), max_evaluations or reward_scale")
    ws = prepare(cfg)
    problem = make_problem(cfg, ws).replace(max_evaluations=max_evaluations or sys.maxsize)
    return MixedPrecisionEnv(problem, open_ledger(problem, ws, get_method("rl")), reward_scale=reward_scale)


__all__ = [
    "SearchConfig",
    "Workspace",
    "bit_choices",
    "config_from",
    "make_env",
    "make_problem",
    "method_options",
    "pinned_layers",
    "prepare",
    "search",
]
