"""The `haq` command: thin - parse, call the library, print.

Every user mistake surfaces as one line on stderr and exit code 2 (see :func:`main`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from haq.config import DEFAULT_BUDGET, DEFAULT_CALIBRATION, DEFAULT_HARDWARE, DEFAULT_SELECT

app = typer.Typer(
    help="Hardware-aware mixed-precision quantization search (HAQ, HAWQ-V3, HAGO, Quantune, baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ----- shared options ------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="digits-mobilenet, digits-resnet, a torchvision name, or pkg.module:factory")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="state-dict file (loaded with weights_only=True)")]
DataOpt = Annotated[str | None, typer.Option("--data", help="digits or imagefolder:PATH (default: the model's own)")]
InputSizeOpt = Annotated[int | None, typer.Option("--input-size", help="image height = width in pixels")]
HardwareOpt = Annotated[str, typer.Option("--hardware", "-H", help="hardware model (haq list hardware)")]
DropOpt = Annotated[float | None, typer.Option("--max-accuracy-drop", help="percent points below fp32 (validation) allowed: return the cheapest policy within it, not the most accurate; best with --method pareto")]
BudgetOpt = Annotated[list[str] | None, typer.Option("--budget", "-b", help=f"default {DEFAULT_BUDGET}; latency=0.5 (x uniform 8-bit), latency=0.3ms, energy=0.2mJ, size=1.5MiB, bops=2G; several: repeat --budget or separate by commas (latency=0.7ms,energy=1 is two items, all must hold)")]
CalibOpt = Annotated[str, typer.Option("--calibration", help="minmax, avg-minmax, percentile:P, entropy or mse")]
WeightQuantOpt = Annotated[str, typer.Option("--weight-quant", help="symmetric|asymmetric|power-of-two - per-channel|per-tensor")]
ActQuantOpt = Annotated[str, typer.Option("--act-quant", help="asymmetric|symmetric|unsigned|power-of-two -per-tensor")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
SelectOpt = Annotated[str, typer.Option("--select", help="how the returned policy is chosen: kl (default: of the top candidates by validation accuracy, those within one standard error of the best, re-ranked by KL to fp32 on every non-test image), agreement, or val (HAQ's: highest validation accuracy)")]
TopKOpt = Annotated[int, typer.Option("--select-top-k", help="candidates the kl/agreement re-ranking looks at")]
UnlabeledOpt = Annotated[Path | None, typer.Option("--unlabeled", help="folder of extra unlabeled images for the fidelity set (ImageFolder data)")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="measure on N Ray workers (starts a local Ray; pip install 'haq[ray]'); results do not depend on it")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="join an existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto)")]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", help="most images read from an ImageFolder (calib+val+test 20/40/40 %; default 5000)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="a .json or .toml config (e.g. a run's config.json); flags given override it")]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _quant(calibration: str, weight_quant: str, act_quant: str) -> dict[str, Any]:
    from haq.scheme import QuantScheme

    return QuantScheme.from_dict({"weight": weight_quant, "activation": act_quant, "calibration": calibration}).to_dict()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag ``name`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


_QUANT_FLAGS = {"calibration": "calibration", "weight_quant": "weight", "act_quant": "activation"}


def _search_config(ctx: typer.Context, config_file: Path | None, flags: dict[str, Any], method_flag: str = "method"):
    """The :class:`SearchConfig` of a command: the config file (if any) with the flags given on
    the command line on top (without a file, every flag counts, defaults included)."""
    from haq.config import SearchConfig, default_budget, read_config_file

    flag_names = {"max_evaluations": ("max_evaluations", "episodes"), "method": (method_flag,)}
    base: dict[str, Any] = read_config_file(config_file) if config_file is not None else {}
    merged = dict(base)
    quant = dict(base.get("quant") or {})
    for name, value in flags.items():
        given = config_file is None or any(_given(ctx, n) for n in flag_names.get(name, (name,)))
        if name in _QUANT_FLAGS:
            if given:
                quant[_QUANT_FLAGS[name]] = value
        elif name == "options":
            merged["options"] = {**dict(base.get("options") or {}), **value}
        elif given or (name == "method" and "method" not in base):
            merged[name] = value
    defaults = SearchConfig()
    merged["quant"] = {**defaults.quant, **quant}
    if not merged.get("budget"):
        merged["budget"] = [default_budget(merged.get("max_accuracy_drop"))]
    return SearchConfig.from_dict(merged, source=str(config_file) if config_file else "the command line")


def _options(items: list[str] | None) -> dict[str, Any]:
    """--option KEY=VALUE pairs; values parsed as JSON when they are JSON (numbers, bools)."""
    from haq.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r} is malformed: write KEY=VALUE, e.g. --option warmup_episodes=10")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _auto_out(base: Path, resume: bool) -> Path:
    """The default run directory: ``base``, or ``base-2``, ``-3``... so that re-running a
    command never collides with an earlier run; with --resume, the newest existing one."""
    candidates = [base] + [base.with_name(f"{base.name}-{k}") for k in range(2, 1000)]
    existing = [p for p in candidates if p.exists()]
    if resume:
        return existing[-1] if existing else base
    return next(p for p in candidates if not p.exists())


# ----- search ---------------------------------------------------------------------------------
@app.command()
def search(
    ctx: typer.Context,
    config: ConfigOpt = None,
    model: ModelOpt = "digits-mobilenet",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    input_size: InputSizeOpt = None,
    hardware: HardwareOpt = DEFAULT_HARDWARE,
    budget: BudgetOpt = None,
    method: Annotated[str, typer.Option("--method", help="rl, hawq, hago, quantune, pareto, random, uniform (haq list methods)")] = "rl",
    episodes: Annotated[int | None, typer.Option("--episodes", help="RL episodes (= evaluations; default 300)")] = None,
    max_evaluations: Annotated[int | None, typer.Option("--max-evaluations", help="accuracy measurements allowed (default: the method's)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default runs/<model>-<hardware>-<method>-s<seed>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    min_bits: Annotated[int, typer.Option("--min-bits")] = 2,
    max_bits: Annotated[int, typer.Option("--max-bits")] = 8,
    pin: Annotated[str, typer.Option("--pin", help="layers fixed at 8 bits: first,last | none | layer names")] = "first,last",
    calibration: CalibOpt = DEFAULT_CALIBRATION,
    weight_quant: WeightQuantOpt = "symmetric-per-channel",
    act_quant: ActQuantOpt = "asymmetric-per-tensor",
    option: Annotated[list[str] | None, typer.Option("--option", help="method option KEY=VALUE (repeatable; haq list options)")] = None,
    tensorboard: Annotated[Path | None, typer.Option("--tensorboard", help="RL: TensorBoard log dir")] = None,
    max_accuracy_drop: DropOpt = None,
    select: SelectOpt = DEFAULT_SELECT,
    select_top_k: TopKOpt = 16,
    unlabeled: UnlabeledOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    device: DeviceOpt = "auto",
    max_images: MaxImagesOpt = None,
) -> None:
    """Search per-layer bitwidths under a budget; writes a run directory."""
    from haq.api import search as run_search
    from haq.errors import ConfigError

    if episodes is not None:
        if episodes < 1:
            raise ConfigError(f"--episodes {episodes}: must be at least 1")
        if max_evaluations is not None and max_evaluations != episodes:
            raise ConfigError("--episodes and --max-evaluations disagree; give one of them")
        max_evaluations = episodes
    opts = _options(option)
    if tensorboard is not None:
        opts["tensorboard_dir"] = str(tensorboard)
    flags: dict[str, Any] = dict(
        model=model, weights=str(weights) if weights else None, data=data, input_size=input_size,
        max_images=max_images,
        hardware=hardware, budget=tuple(budget) if budget else None, method=method, seed=seed,
        max_evaluations=max_evaluations, min_bits=min_bits, max_bits=max_bits, pin=pin, calibration=calibration,
        weight_quant=weight_quant, act_quant=act_quant, options=opts, max_accuracy_drop=max_accuracy_drop,
        select=select, select_top_k=select_top_k, unlabeled=str(unlabeled) if unlabeled else None,
    )
    cfg = _search_config(ctx, config, flags)
    if out is None:
        out = _auto_out(Path("runs") / f"{_slug(cfg.model)}-{cfg.hardware.split(':')[0]}-{cfg.method}-s{cfg.seed}", resume)
    con = _console()
    from haq.methods.rl import SearchInterrupted
    from haq.progress import SearchProgress

    try:
        with SearchProgress(enabled=not quiet, console=_console(stderr=True)) as progress:
            result = run_search(cfg, out=out, resume=resume, on_trial=progress.trial_callback(cfg),
                                workers=workers, ray_address=ray_address, device=device)
    except SearchInterrupted as exc:  # the method saved its checkpoint first
        print(f"haq: {exc}", file=sys.stderr)
        raise typer.Exit(128 + exc.signum) from None
    from haq.report import noise_warning, policy_table

    warning = noise_warning(result)
    if warning:
        print(f"haq: warning: {warning}", file=sys.stderr)
    con.print(policy_table(result, cfg))
    con.print(f"run directory: {out}  (policy.json, history.csv, plots/)")


# ----- compare --------------------------------------------------------------------------------
@app.command()
def compare(
    ctx: typer.Context,
    config: ConfigOpt = None,
    model: ModelOpt = "digits-mobilenet",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    input_size: InputSizeOpt = None,
    hardware: HardwareOpt = DEFAULT_HARDWARE,
    budget: BudgetOpt = None,
    methods: Annotated[str, typer.Option("--methods", help="comma-separated methods")] = "rl,hawq,hago,quantune,random,uniform",
    max_evaluations: Annotated[int, typer.Option("--max-evaluations", help="per method and seed")] = 100,
    seeds: Annotated[int, typer.Option("--seeds", help="seeds per method (seed, seed+1, ...)")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the comparison in --out")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite a finished comparison in --out")] = False,
    min_bits: Annotated[int, typer.Option("--min-bits")] = 2,
    max_bits: Annotated[int, typer.Option("--max-bits")] = 8,
    pin: Annotated[str, typer.Option("--pin")] = "first,last",
    calibration: CalibOpt = DEFAULT_CALIBRATION,
    weight_quant: WeightQuantOpt = "symmetric-per-channel",
    act_quant: ActQuantOpt = "asymmetric-per-tensor",
    max_accuracy_drop: DropOpt = None,
    select: SelectOpt = DEFAULT_SELECT,
    select_top_k: TopKOpt = 16,
    unlabeled: UnlabeledOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    device: DeviceOpt = "auto",
    max_images: MaxImagesOpt = None,
) -> None:
    """Run several methods on the same problem and evaluation limit; write a comparison."""
    from haq.compare import compare as run_compare
    from haq.compare import to_markdown

    names = [m.strip() for m in methods.split(",") if m.strip()]
    flags: dict[str, Any] = dict(
        model=model, weights=str(weights) if weights else None, data=data, input_size=input_size,
        max_images=max_images,
        hardware=hardware, budget=tuple(budget) if budget else None, method=names[0] if names else "uniform",
        seed=seed, max_evaluations=max_evaluations, min_bits=min_bits, max_bits=max_bits, pin=pin,
        calibration=calibration, weight_quant=weight_quant, act_quant=act_quant, options={},
        max_accuracy_drop=max_accuracy_drop, select=select, select_top_k=select_top_k,
        unlabeled=str(unlabeled) if unlabeled else None,
    )
    cfg = _search_config(ctx, config, flags, method_flag="methods")
    if out is None:
        out = _auto_out(Path("runs") / f"compare-{_slug(cfg.model)}-{cfg.hardware.split(':')[0]}", resume)
    err = _console(stderr=True)

    def progress(method: str, s: int, result) -> None:  # noqa: ANN001
        if not quiet:
            m = result.best_policy.metrics
            err.print(f"  {method} seed {s}: test acc {100 * m['accuracy']:.2f}%  ({result.evaluations} evals, {result.wall_s:.1f} s)")

    table = run_compare(cfg, names, seeds=seeds, out=out, on_progress=progress, resume=resume, force=force,
                        workers=workers, ray_address=ray_address, device=device)
    _console().print(to_markdown(table))
    _console().print(f"written: {out}/comparison.csv, comparison.md, plots/pareto.png")


# ----- evaluate / cost ------------------------------------------------------------------------
@app.command()
def evaluate(
    policy: Annotated[str, typer.Option("--policy", "-p", help="policy.json, uniform:8 or uniform:w4a8")],
    model: ModelOpt = "digits-mobilenet",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    input_size: InputSizeOpt = None,
    hardware: Annotated[str | None, typer.Option("--hardware", "-H", help="also cost it on this hardware")] = None,
    split: Annotated[str, typer.Option("--split", help="calib, val or test")] = "test",
    round_up: Annotated[bool, typer.Option("--round-up", help="map bits the hardware lacks to the next it runs")] = False,
    calibration: CalibOpt = DEFAULT_CALIBRATION,
    weight_quant: WeightQuantOpt = "symmetric-per-channel",
    act_quant: ActQuantOpt = "asymmetric-per-tensor",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Accuracy (and size, BOPs, hardware cost) of one policy."""
    from haq.report import evaluate_policy

    result = evaluate_policy(
        model=model, weights=weights, data=data, input_size=input_size, hardware=hardware, policy=policy,
        split=split, round_up=round_up, quant=_quant(calibration, weight_quant, act_quant),
    )
    _print_result(result, as_json)


@app.command()
def cost(
    policy: Annotated[str, typer.Option("--policy", "-p", help="policy.json, uniform:8 or uniform:w4a8")] = "uniform:8",
    model: ModelOpt = "digits-mobilenet",
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    hardware: Annotated[str | None, typer.Option("--hardware", "-H", help="hardware model; size and BOPs need none")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="hardware batch (default: the hardware's)")] = None,
    round_up: Annotated[bool, typer.Option("--round-up", help="map bits the hardware lacks to the next it runs")] = False,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="one row per layer")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="per-layer rows as CSV")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Hardware cost, size and BOPs of a policy - no data, no weights needed."""
    from haq.report import cost_policy

    result = cost_policy(model=model, weights=weights, input_size=input_size, hardware=hardware, policy=policy,
                         batch=batch, round_up=round_up)
    if as_csv:
        sys.stdout.write(result["per_layer_frame"].to_csv(index=False))
        return
    if not per_layer:
        result.pop("layers", None)
    _print_result(result, as_json)


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    result.pop("per_layer_frame", None)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    from haq.report import result_table

    _console().print(result_table(result))


# ----- export / verify --------------------------------------------------------------------------
@app.command()
def export(
    source: Annotated[str, typer.Argument(help="a run directory, a policy.json, or uniform:8 / uniform:w4a8")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the ONNX file to write")] = Path("model.onnx"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="default: the run's (or the policy's) model")] = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    input_size: InputSizeOpt = None,
    format: Annotated[str, typer.Option("--format", help="onnx (QDQ, opset 21)")] = "onnx",
    int8_containers: Annotated[bool, typer.Option("--int8-containers", help="4-bit weights in int8, not int4 (ONNX Runtime can then fuse them into QLinearConv)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Export a policy as an ONNX QDQ model that ONNX Runtime runs as haq measured it."""
    from haq.deploy import export as run_export

    result = run_export(source, out, model=model, weights=weights, data=data, input_size=input_size,
                        format=format, int4_weights=not int8_containers)
    summary = result.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    con = _console()
    con.print(f"wrote {summary['path']}  ({summary['bytes'] / 1024:.1f} KiB, ONNX opset {summary['opset']}, model {summary['model']})")
    con.print(f"quantized: {summary['quantized_weights']} weights, {summary['quantized_activations']} layer inputs, "
              f"{summary['quantized_outputs']} layer outputs ({', '.join(summary['containers']) or 'none'}); "
              f"float layers: {len(summary['float_layers'])}")


@app.command()
def verify(
    source: Annotated[str, typer.Argument(help="a run directory (or a policy.json)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="default: the run's (or the policy's) model")] = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    input_size: InputSizeOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads (default: torch's, as the cpu hardware model)")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="timed runs per model (the median is kept)")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Export a run's policy, run it in ONNX Runtime on this CPU: measured vs predicted latency, accuracy."""
    from rich.table import Table

    from haq.deploy import verify as run_verify

    result = run_verify(source, model=model, weights=weights, data=data, input_size=input_size, threads=threads,
                        repeats=repeats)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    t = Table(title=f"{result.model}: ONNX Runtime on this CPU ({result.threads} thread(s)), batch 1")
    for col in ("model", "measured ms", "predicted ms (cpu)", "searched ms", "ORT acc (test)", "fake-quant acc"):
        t.add_column(col, justify="left" if col == "model" else "right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in result.rows:
        t.add_row(r.label, ms(r.measured_ms), ms(r.predicted_ms), ms(r.searched_ms), f"{100 * r.ort_accuracy:.2f}%",
                  f"{100 * r.fake_quant_accuracy:.2f}%")
    con = _console()
    con.print(t)
    fp32 = result.rows[-1].measured_ms
    con.print(f"measured speed-up over fp32: policy {fp32 / result.rows[0].measured_ms:.2f}x, "
              f"uniform int8 {fp32 / result.rows[1].measured_ms:.2f}x; {result.note}")


# ----- profile / plot / list ------------------------------------------------------------------
@app.command()
def profile(
    hardware: Annotated[str, typer.Option("--hardware", "-H", help="cpu or gpu")] = "cpu",
    model: ModelOpt = "digits-mobilenet",
    input_size: InputSizeOpt = None,
    batch: Annotated[int, typer.Option("--batch")] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="profile CSV to write")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure a latency profile of the model's layer shapes on this machine's CPU or GPU."""
    from haq.report import profile_model

    path, frame = profile_model(hardware=hardware, model=model, input_size=input_size, batch=batch, out=out, quiet=quiet)
    _console().print(f"profiled {len(frame)} rows -> {path}")


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(help="a run directory written by haq search")]) -> None:
    """Redraw the plots of a run directory."""
    from haq.errors import RunDirError
    from haq.plots import plot_run

    written = plot_run(run_dir)
    if not written:
        raise RunDirError(f"{run_dir} has no trials yet (history.csv holds only its header) and no policy.json: "
                          "nothing to plot; let the search run (or --resume it) first")
    for p in written:
        _console().print(str(p))


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help="models, data, hardware, methods or options")]) -> None:
    """What the registries hold; `options` lists every method's --option KEY=VALUE with its default."""
    from rich.table import Table

    from haq.errors import UnknownNameError

    if what == "models":
        from haq.models import list_models as rows_fn
    elif what == "data":
        from haq.data import list_data as rows_fn
    elif what == "hardware":
        from haq.simulators import list_hardware as rows_fn
    elif what == "methods":
        from haq.methods import list_methods as rows_fn
    elif what == "options":
        from haq.methods import list_method_options as rows_fn
    else:
        raise UnknownNameError(f"haq list {what!r}: choose models, data, hardware, methods or options")
    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("what it is")
    for name, summary in rows_fn():
        table.add_row(name, summary)
    _console().print(table)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """Warnings on stderr as one line each (no source line): ``haq: warning: ...``."""
    text = str(message)
    return f"{text if text.startswith('haq:') else 'haq: warning: ' + text}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit code 2 for every user error, never a traceback."""
    import warnings

    from haq.errors import HaqError

    warnings.formatwarning = _one_line_warning

    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="haq", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        # Typer vendors click since 0.2x: usage errors are TyperExceptions with click's show().
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"haq: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("haq: interrupted; a search can be continued with --resume", file=sys.stderr)
        sys.exit(130)
    except HaqError as exc:
        print(f"haq: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        from haq.atomic import storage_error

        err = storage_error(exc.filename or "a file", exc)  # a full disk anywhere: one line, not a traceback
        if not isinstance(err, HaqError):
            raise
        print(f"haq: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except MemoryError:
        print("haq: error: out of memory; use a smaller --input-size, fewer images or a smaller model", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            print("haq: error: out of memory; use a smaller --input-size, fewer images or a smaller model", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
