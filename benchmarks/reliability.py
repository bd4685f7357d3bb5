"""Reliability figures (issue 12): kill-and-resume per method, fuzz cases, disk faults.

Prints one table: per method (all seven and `compare`), the SIGKILLs sent at random points,
how many runs then resumed, history rows lost and whether the result was identical to an
uninterrupted run; then the fuzz cases run (hypothesis, in-process) with the tracebacks
seen, and the disk-full points tried (ENOSPC injected at each write of a search) with the
run directories left invalid. Exits 1 unless every figure is as it must be (0 lost, 0
tracebacks, 0 invalid, every result identical).

    python benchmarks/reliability.py           # 10 kills per method, >10,000 fuzz cases
    python benchmarks/reliability.py --quick   # CI: 1 kill of `random`, a few hundred cases
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HAQ_CACHE_DIR", str(ROOT / ".cache" / "haq"))
os.environ.setdefault("MPLBACKEND", "Agg")


def kills(methods: list[str], n: int, workdir: Path) -> list[tuple[str, int, int, int, str]]:
    from tests.kill_resume import kill_and_resume, reference

    rows = []
    for name in methods:
        ref = reference(name, workdir)
        rng = random.Random(f"{name}-bench")
        outcomes = [kill_and_resume(ref, workdir, rng, k) for k in range(n)]
        rows.append((name, sum(o.killed for o in outcomes), sum(o.resumed for o in outcomes),
                     sum(o.rows_lost for o in outcomes), f"{sum(o.identical for o in outcomes)}/{n}"))
    return rows


def fuzz(full: bool) -> tuple[int, int]:
    """Run tests/test_fuzz.py in a subprocess; return (cases run, tracebacks seen)."""
    import json

    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "fuzz.json"
        env = {**os.environ, "HAQ_FUZZ": "full" if full else "", "HAQ_FUZZ_REPORT": str(report)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        counts = json.loads(report.read_text()) if report.is_file() else {"run": 0, "tracebacks": 0}
    run, tracebacks = int(counts["run"]), int(counts["tracebacks"])
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        tracebacks = max(tracebacks, 1)
    return run, tracebacks


def disk_faults(points: int | None, workdir: Path) -> tuple[int, int]:
    """ENOSPC at each write of a small search (``points`` of them, spread evenly, or all):
    (points tried, run directories left invalid or resumed to another result)."""
    import json

    import haq.atomic
    from tests.conftest import run_cli
    from tests.test_faults import SEARCH, DiskFull, check_valid_run_dir

    assert run_cli(*SEARCH, "--out", str(workdir / "warm")).returncode == 0
    counter = DiskFull()
    haq.atomic._write = counter  # type: ignore[assignment]
    try:
        run_cli(*SEARCH, "--out", str(workdir / "ref"))
    finally:
        haq.atomic._write = counter.real
    ref = json.loads((workdir / "ref" / "policy.json").read_text())["layers"]
    ks = list(range(counter.calls))
    if points is not None and points < len(ks):
        ks = [ks[round(i * (len(ks) - 1) / (points - 1))] for i in range(points)] if points > 1 else ks[:1]
    invalid = 0
    for k in ks:
        run = workdir / f"k{k}"
        haq.atomic._write = DiskFull(fail_at=k)  # type: ignore[assignment]
        try:
            failed = run_cli(*SEARCH, "--out", str(run))
        finally:
            haq.atomic._write = counter.real
        ok = failed.returncode == 2 and "disk full writing" in failed.stderr and failed.stderr.count("\n") == 1
        try:
            if run.exists():
                check_valid_run_dir(run)
            again = run_cli(*SEARCH, "--out", str(run), *(["--resume"] if run.exists() else []))
            ok = ok and again.returncode == 0
            check_valid_run_dir(run)
            ok = ok and json.loads((run / "policy.json").read_text())["layers"] == ref
        except AssertionError:
            ok = False
        invalid += not ok
    return len(ks), invalid


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: under a minute")
    parser.add_argument("--methods", help="comma-separated: only these kill-and-resume rows (default: all)")
    parser.add_argument("--kills-only", action="store_true", help="skip the fuzz and disk-fault figures")
    args = parser.parse_args(argv)
    from tests.kill_resume import COMMANDS

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        methods = args.methods.split(",") if args.methods else ["random"] if args.quick else sorted(COMMANDS)
        table = kills(methods, 1 if args.quick else 10, work / "kills")
        cases = tracebacks = points = invalid = 0
        if not args.kills_only:
            cases, tracebacks = fuzz(full=not args.quick)
            (work / "disk").mkdir()
            points, invalid = disk_faults(4 if args.quick else None, work / "disk")
    print(f"{'method':<10} {'kills':>5} {'resumed':>7} {'trials lost':>11} {'identical result':>16}")
    for name, killed, resumed, lost, same in table:
        print(f"{name:<10} {killed:>5} {resumed:>7} {lost:>11} {same:>16}")
    if not args.kills_only:
        print(f"fuzz cases run: {cases}   tracebacks seen: {tracebacks}")
        print(f"disk-fault points tried: {points}   run dirs left invalid: {invalid}")
    print(f"({time.perf_counter() - t0:.0f} s; kills counts SIGKILLs that landed before the run ended)")
    bad = tracebacks or invalid or any(lost or resumed != int(same.split("/")[1]) or same.split("/")[0] != same.split("/")[1]
                                       for _, _k, resumed, lost, same in table)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
