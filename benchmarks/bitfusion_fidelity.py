"""How well ``bitfusion`` reproduces APQ's released BitFusion table, and what it costs to run.

Prints, from one run: the number of entries; latency error (median, mean, p90, max) and the
exact-match fraction for non-depthwise and depthwise entries apart; Spearman rank correlation
of latency and energy over all entries and per bit pair; APQ / ours energy ratios without
leakage, with SRAM leakage and with all leakage; the same latency check with the released
optimizer's rules; the time to build a ResNet-50 and a MobileNetV2 cost table; and uniform
8- and 4-bit latency (ms) and energy (mJ) of both networks.

Depthwise entries: the released simulator has no grouped convolution, so APQ mapped them its
own way (not released). ``simulators/bitfusion.py`` models them as passes of 32 channels at 8
channels per cycle (x perf factor), both fitted to the table; their error is printed apart
and is not part of the exit criteria (targets: non-depthwise median latency error <= 5%,
Spearman of latency and of energy >= 0.95, energy with SRAM leakage as APQ counts it; exit 1
if one fails).

    python benchmarks/bitfusion_fidelity.py           # all 6567 entries
    python benchmarks/bitfusion_fidelity.py --quick   # every 5th layer shape (CI)
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from scipy.stats import spearmanr

from haq.bits import INT_BITS, slot
from haq.layers import LayerSpec, describe
from haq.simulators.bitfusion import (
    DEFAULT_SPEC,
    BitFusion,
    BitFusionSpec,
    ConvShape,
    monotone_envelope,
    parse_apq_key,
    shape_costs,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "apq_bitfusion_latency_energy.json"
REFERENCE_COPY = REPO / "tests" / "data" / "apq_bitfusion_latency_energy.json.gz"  # same table, gzipped
MAX_MEDIAN_ERROR, MIN_SPEARMAN = 0.05, 0.95


def load_entries(path: Path | None, quick: bool) -> tuple[Path, list[tuple[tuple[int, ...], int, int, dict]]]:
    """APQ's entries as (layer, w, a, {latency, energy}); --quick keeps every 5th layer shape."""
    path = path or (REFERENCE if REFERENCE.exists() else REFERENCE_COPY)
    raw = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
    raw = raw.get("entries", raw)
    entries = [(*parse_apq_key(k), v) for k, v in raw.items() if k not in ("head", "tail")]
    if quick:
        shapes = sorted({e[0] for e in entries})[::5]
        entries = [e for e in entries if e[0] in set(shapes)]
    return path, entries


def evaluate(entries, spec: BitFusionSpec) -> dict[str, np.ndarray]:
    cycles, mj = [], []
    for layer, w, a, _ in entries:
        cyc, pj, _ = shape_costs(ConvShape.from_apq_key(*layer), spec)
        cycles.append(cyc[w - 1, a - 1])
        mj.append(pj[w - 1, a - 1] * 1e-9)
    return {"cycles": np.array(cycles, float), "mj": np.array(mj)}


def error_line(name: str, ours: np.ndarray, ref: np.ndarray) -> str:
    err = np.abs(ours - ref) / ref
    return (
        f"  {name:14s} n={len(err):5d}  exact {np.mean(ours == ref):6.1%}  median {np.median(err):.4%}  "
        f"mean {err.mean():.4%}  p90 {np.percentile(err, 90):.4%}  max {err.max():.2%}"
    )


def torchvision_layers(arch: str) -> list[LayerSpec]:
    with torch.device("meta"):  # shapes only, no weights
        model = getattr(torchvision.models, arch)()
    return describe(model, (3, 224, 224))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 5th layer shape of the table (CI)")
    parser.add_argument("--reference", type=Path, default=None, help="APQ table as JSON")
    args = parser.parse_args(argv)

    path, entries = load_entries(args.reference, args.quick)
    apq_cycles = np.array([round(v["latency"] * 5e5) for *_, v in entries], float)  # ms at 500 MHz
    apq_mj = np.array([v["energy"] for *_, v in entries])
    dw = np.array([layer[6] > 1 for layer, *_ in entries])
    pairs = np.array([(w, a) for _, w, a, _ in entries])
    print(f"APQ table: {path}")
    print(
        f"entries: {len(entries)} ({(~dw).sum()} non-depthwise, {dw.sum()} depthwise; {len({e[0] for e in entries})} layer shapes)"
    )

    t0 = time.perf_counter()
    ours = {leak: evaluate(entries, BitFusionSpec(leakage=leak)) for leak in ("sram", "none", "all")}
    print(f"evaluated in {time.perf_counter() - t0:.1f} s (three leakage settings)")
    cyc = ours["none"]["cycles"]

    print("\nlatency vs APQ (cycles = ms x 500 MHz):")
    print(error_line("non-depthwise", cyc[~dw], apq_cycles[~dw]))
    print(error_line("depthwise", cyc[dw], apq_cycles[dw]))
    released = evaluate(
        [e for e, d in zip(entries, dw, strict=True) if not d], BitFusionSpec(rules="released")
    )["cycles"]
    print(error_line("released rules", released, apq_cycles[~dw]) + "   (non-depthwise, for comparison)")

    rho_lat = spearmanr(cyc, apq_cycles).statistic
    rho_en = {leak: spearmanr(o["mj"], apq_mj).statistic for leak, o in ours.items()}
    print(
        f"\nSpearman, all entries: latency {rho_lat:.4f}; energy {rho_en['sram']:.4f} with SRAM leakage (as APQ), "
        f"{rho_en['none']:.4f} dynamic only"
    )
    print(
        "  per bit pair          latency  energy   (non-depthwise only: latency, energy; energy with SRAM leakage)"
    )
    for w, a in sorted({tuple(p) for p in pairs}):
        sel = (pairs[:, 0] == w) & (pairs[:, 1] == a)
        pw = sel & ~dw
        print(
            f"  W{w}A{a} ({sel.sum():4d} entries)   {spearmanr(cyc[sel], apq_cycles[sel]).statistic:.4f}   "
            f"{spearmanr(ours['sram']['mj'][sel], apq_mj[sel]).statistic:.4f}   "
            f"({spearmanr(cyc[pw], apq_cycles[pw]).statistic:.4f}, {spearmanr(ours['sram']['mj'][pw], apq_mj[pw]).statistic:.4f})"
        )

    print("\nenergy, APQ / ours:")
    for leak, o in ours.items():
        for name, sel in (("non-depthwise", ~dw), ("depthwise", dw)):
            r = apq_mj[sel] / o["mj"][sel]
            print(
                f"  leakage={leak:5s} {name:14s} median {np.median(r):.4f}  min {r.min():.4f}  max {r.max():.4f}  "
                f"|ratio-1| median {np.median(np.abs(r - 1)):.2%}"
            )

    print("\nResNet-50 and MobileNetV2 at 224x224, batch 1 (default spec: dynamic energy; + SRAM leakage):")
    ints = [slot(b) for b in INT_BITS]
    for arch in ("resnet50", "mobilenet_v2"):
        layers = torchvision_layers(arch)
        shape_costs.cache_clear()
        t0 = time.perf_counter()
        table = BitFusion().cost_table(layers)
        build, distinct = time.perf_counter() - t0, shape_costs.cache_info().misses
        leaky = BitFusion(BitFusionSpec(leakage="sram")).cost_table(layers)
        raw = [shape_costs(ConvShape.from_layer(x, 1, x.input_group == 0), DEFAULT_SPEC)[0] for x in layers]
        moved = np.mean([(monotone_envelope(r) != r).mean() for r in raw])
        n = len(layers)
        print(
            f"  {arch}: {n} layers, {distinct} distinct shapes, table built in {build:.2f} s; "
            f"monotone envelope changes {moved:.1%} of latency entries"
        )
        for bits in (8, 4):
            lat, en = table.cost(np.full(n, bits), np.full(n, bits))
            _, en_leak = leaky.cost(np.full(n, bits), np.full(n, bits))
            print(
                f"    uniform W{bits}A{bits}: {lat:8.3f} ms  {en:8.3f} mJ  ({en_leak:.3f} mJ with SRAM leakage)"
            )
        l8 = table.latency_ms[:, ints][:, :, ints]
        print(f"    W8A8 / W4A4 latency: {l8[:, 7, 7].sum() / l8[:, 3, 3].sum():.3f}")

    median_pw = float(np.median(np.abs(cyc[~dw] - apq_cycles[~dw]) / apq_cycles[~dw]))
    failed = []
    if median_pw > MAX_MEDIAN_ERROR:
        failed.append(f"non-depthwise median latency error {median_pw:.2%} > {MAX_MEDIAN_ERROR:.0%}")
    if rho_lat < MIN_SPEARMAN:
        failed.append(f"latency Spearman {rho_lat:.3f} < {MIN_SPEARMAN}")
    if rho_en["sram"] < MIN_SPEARMAN:  # APQ's energies include SRAM leakage
        failed.append(f"energy Spearman (SRAM leakage, as APQ) {rho_en['sram']:.3f} < {MIN_SPEARMAN}")
    print("\n" + ("FAIL: " + "; ".join(failed) if failed else "targets met"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
