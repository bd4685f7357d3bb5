"""What `haq evaluate`, `haq cost` and the end of `haq search` compute and show.

Library functions return plain dicts with the policy JSON's metric keys (``accuracy``,
``latency_ms``, ``energy_mj``, ``size_mib``, ``bops_g``) so ``--json`` is a dump of them;
the ``*_table`` helpers render them with rich for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq.api import load_model_and_data
from haq.costs import COST_FIELDS, CostModel
from haq.layers import LayerSpec, describe
from haq.models import load_model
from haq.policy import Policy, parse_policy
from haq.quant.evaluator import Evaluator
from haq.scheme import QuantScheme
from haq.simulators import HardwareModel, check_policy_bits, get_hardware, snap_bits
from haq.stats import accuracy_text, resolvable_difference


def _fit_to_hardware(policy: Policy, layers: list[LayerSpec], hw: HardwareModel, round_up: bool) -> Policy:
    """The policy with bits the hardware lacks rounded up (``round_up``) or refused."""
    if round_up:
        w = np.array([snap_bits(np.array([b]), hw.supported_bits(s.kind))[0] for b, s in zip(policy.w_bits, layers, strict=True)])
        a = np.array([snap_bits(np.array([b]), hw.supported_bits(s.kind))[0] for b, s in zip(policy.a_bits, layers, strict=True)])
        policy = Policy.from_bits(layers, w, a, model=policy.model, hardware=hw.name, quant=policy.quant,
                                  metrics=policy.metrics, search=policy.search)
    check_policy_bits(hw, layers, policy.w_bits, policy.a_bits)
    return policy


def cost_policy(
    model: str,
    policy: str,
    hardware: str | None = None,
    weights: str | Path | None = None,
    input_size: int | None = None,
    batch: int | None = None,
    round_up: bool = False,
) -> dict[str, Any]:
    """Cost of ``policy`` on ``model`` (and ``hardware``): totals plus per-layer rows.

    Needs no data and no trained weights: the layer shapes come from one forward pass.
    """
    loaded = load_model(model, weights, input_size=input_size, trained=False)
    layers = describe(loaded.module, loaded.input_shape)
    pol = parse_policy(policy, layers, model=model)
    hw = get_hardware(hardware) if hardware else None
    table = None
    if hw is not None:
        pol = _fit_to_hardware(pol, layers, hw, round_up)
        table = hw.cost_table(layers, batch)
    costs = CostModel(layers, table)
    total = costs.cost(pol.w_bits, pol.a_bits)
    frame = costs.per_layer(pol.w_bits, pol.a_bits).rename(columns={"layer": "name"})
    rows = [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    return {
        "model": model,
        "hardware": hw.name if hw else None,
        "batch": table.batch if table is not None else None,
        "policy": policy,
        **total.to_dict(),
        "layers": rows,
        "per_layer_frame": frame,
    }


def _plain(v: Any) -> Any:
    """A DataFrame cell as a JSON value (numpy scalars to Python, NaN to None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def evaluate_policy(
    model: str,
    policy: str,
    quant: dict[str, Any],
    data: str | None = None,
    weights: str | Path | None = None,
    input_size: int | None = None,
    hardware: str | None = None,
    split: str = "test",
    round_up: bool = False,
) -> dict[str, Any]:
    """Accuracy on ``split`` plus every cost of one policy (a policy file's own quant scheme
    wins over ``quant``, which applies to shorthands like ``uniform:4``)."""
    loaded, splits, layers = load_model_and_data(model, weights, data, input_size)
    pol = parse_policy(policy, layers, model=model, quant=QuantScheme.from_dict(quant))
    hw = get_hardware(hardware) if hardware else None
    table = None
    if hw is not None:
        pol = _fit_to_hardware(pol, layers, hw, round_up)
        table = hw.cost_table(layers)
    evaluator = Evaluator(loaded.module, splits, pol.quant, layers)
    acc = evaluator.evaluate(pol.w_bits, pol.a_bits, split)
    total = CostModel(layers, table).cost(pol.w_bits, pol.a_bits)
    return {
        "model": model,
        "data": splits.name,
        "split": split,
        "hardware": hw.name if hw else None,
        "policy": policy,
        "accuracy": acc,
        "fp32_accuracy": evaluator.fp32_accuracy(split),
        **total.to_dict(),
        "quant": pol.quant.to_dict(),
    }


def result_table(result: dict[str, Any]):  # noqa: ANN201 - rich renderable
    """Totals (and per-layer rows when present) as a rich table."""
    from rich.table import Table

    layers = result.get("layers")
    if layers:
        t = Table(title=f"{result['model']} / {result.get('hardware') or 'no hardware'} / {result['policy']}")
        for col in ("layer", "kind", "w", "a", "MACs", "latency ms", "energy mJ", "size KiB", "MBOPs"):
            t.add_column(col, justify="right" if col not in ("layer", "kind") else "left")
        for r in layers:
            t.add_row(r["name"], r["kind"], str(r["w_bits"]), str(r["a_bits"]), f"{r['macs']:,}",
                      _fmt(r["latency_ms"]), _fmt(r["energy_mj"]), f"{1024 * r['size_mib']:.2f}", f"{1e3 * r['bops_g']:.2f}")
        t.add_section()
        t.add_row("total", "", "", "", "", _fmt(result["latency_ms"]), _fmt(result["energy_mj"]),
                  f"{1024 * result['size_mib']:.2f}", f"{1e3 * result['bops_g']:.2f}")
        return t
    t = Table(show_header=False, title=f"{result['model']} / {result['policy']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    if "accuracy" in result:
        t.add_row(f"accuracy ({result['split']})", f"{100 * result['accuracy']:.2f}%")
        t.add_row("fp32 accuracy", f"{100 * result['fp32_accuracy']:.2f}%")
    t.add_row("hardware", str(result.get("hardware") or "-"))
    t.add_row("latency", _fmt(result["latency_ms"], " ms"))
    t.add_row("energy", _fmt(result["energy_mj"], " mJ"))
    t.add_row("size", f"{result['size_mib']:.4g} MiB")
    t.add_row("BOPs", f"{result['bops_g']:.4g} G")
    return t


def policy_table(result, config) -> Any:  # noqa: ANN001 - SearchResult, SearchConfig
    """The best policy of a search: per layer bits and its share of the budgeted cost."""
    from rich.table import Table

    m = result.best_policy.metrics
    key = config.budget[0].split("=")[0].strip().lower() if config.budget else "latency"
    col = COST_FIELDS.get(key, "latency_ms")
    frame = result.per_layer
    if frame[col].isna().all():
        col = "bops_g"
    share = frame[col] / max(float(frame[col].sum()), 1e-30)
    ratio = m.get(f"{key}_vs_uniform8")
    at = f" at {ratio:.3f}x uniform 8-bit {key}" if ratio is not None else ""
    title = (f"{config.method} on {config.model} / {config.hardware}, budget {', '.join(config.budget)}: "
             f"test acc {accuracy_text(m)} (fp32 {accuracy_text(m, 'fp32_accuracy')}){at}; "
             f"chosen by {result.best_policy.search.get('select', 'val')}")
    drop = getattr(config, "max_accuracy_drop", None)
    if drop is not None:
        met = result.best_policy.search.get("accuracy_drop_met")
        title += f"; cheapest within {drop} pt of fp32 (validation): {'met' if met else 'NOT met, most accurate shown'}"
    t = Table(title=title)
    for c in ("layer", "kind", "w_bits", "a_bits", f"{col} share"):
        t.add_column(c, justify="left" if c in ("layer", "kind") else "right")
    for r, sh in zip(frame.itertuples(), share, strict=True):
        t.add_row(r.layer, r.kind, str(r.w_bits), str(r.a_bits), f"{100 * sh:.1f}%")
    t.add_section()
    t.add_row("total", "", "", "", f"{_fmt(m.get('latency_ms'), ' ms')}, {_fmt(m.get('energy_mj'), ' mJ')}, "
              f"{m['size_mib']:.4g} MiB, {m['bops_g']:.4g} GBOPs")
    return t


def noise_warning(result) -> str | None:  # noqa: ANN001 - SearchResult
    """One line when the validation split cannot tell a 1-point accuracy difference apart (a
    95 % interval wider than +-0.5 pt), else None."""
    m = result.best_policy.metrics
    acc, n = m.get("val_accuracy"), m.get("val_accuracy_n")
    if acc is None or not n:
        return None
    half = resolvable_difference(float(acc), int(n))
    if half <= 0.005:
        return None
    return (f"the validation split ({int(n)} images) resolves accuracy only to +-{100 * half:.1f} pt at "
            f"{100 * float(acc):.1f}%: policies closer than that are within noise - the default --select kl "
            "re-ranks them on every non-test image; more images (--unlabeled, a larger --data) narrow it")


def profile_model(hardware: str, model: str, input_size: int | None, batch: int, out: Path | None, quiet: bool):  # noqa: ANN201
    """Measure a CPU or GPU latency profile of the model's layer shapes; returns (path, frame).

    The CSV is in the profile format (usable as ``--hardware table:PATH``).
    """
    from haq.simulators.measured import profile_machine

    loaded = load_model(model, input_size=input_size, trained=False)
    layers = describe(loaded.module, loaded.input_shape)
    path = Path(out) if out is not None else Path(f"{model.replace(':', '_')}-{hardware}-b{batch}.csv")
    progress = None
    bar = None
    if not quiet:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"profiling {model} on {hardware}", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"profiling {what}")

    try:
        written = profile_machine(hardware, layers, path, batch=batch, model_name=model, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    return written, pd.read_csv(written, comment="#")


def _fmt(v: Any, unit: str = "") -> str:
    return "n/a" if v is None else f"{float(v):.4g}{unit}"
