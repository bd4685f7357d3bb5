"""The kill-and-resume harness (issue 12): run a search (or a comparison) as a subprocess,
SIGKILL it at a random point, ``--resume`` it, and check the result against an
uninterrupted run: no duplicate or missing trial, no row written before the kill lost, the
same history and the identical final policy.

Used by tests/test_kill_resume.py (2 kill points per method; 10 with ``HAQ_FUZZ=full``)
and benchmarks/reliability.py (the table).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_COMMON = ["--hardware", "bismo-edge", "--seed", "5", "--quiet"]
#: small but real searches, a few seconds each; every method takes the same problem
COMMANDS: dict[str, list[str]] = {
    "rl": ["search", "--method", "rl", "--budget", "latency=0.5", "--episodes", "10",
           "--option", "warmup_episodes=3", "--option", "checkpoint_every=2", *_COMMON],
    "hawq": ["search", "--method", "hawq", "--budget", "latency=0.5", "--max-evaluations", "5",
             "--option", "hessian_max_iter=10", *_COMMON],
    "hago": ["search", "--method", "hago", "--budget", "latency=0.5", "--max-evaluations", "12", *_COMMON],
    "quantune": ["search", "--method", "quantune", "--budget", "latency=0.5", "--max-evaluations", "10",
                 "--option", "rounds=20", *_COMMON],
    "pareto": ["search", "--method", "pareto", "--budget", "latency=0.5", "--max-evaluations", "12",
               "--option", "population_size=4", *_COMMON],
    "random": ["search", "--method", "random", "--budget", "latency=0.5", "--max-evaluations", "12",
               "--option", "batch_size=3", *_COMMON],
    "uniform": ["search", "--method", "uniform", "--budget", "latency=0.5", *_COMMON],
    "compare": ["compare", "--methods", "random,uniform", "--seeds", "2", "--budget", "latency=0.5",
                "--max-evaluations", "6", *_COMMON],
}


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.setdefault("HAQ_CACHE_DIR", str(ROOT / ".cache" / "haq"))
    return env


def _cmd(name: str, out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "haq.cli", *COMMANDS[name], "--out", str(out), *(["--resume"] if resume else [])]


def _histories(out: Path) -> list[Path]:
    return sorted(out.rglob("history.csv")) if out.is_dir() else []


def _rows(out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """(w_bits, a_bits, accuracy) per trial of every history under ``out``, torn tails left out."""
    from haq.history import read_history_rows

    rows = {}
    for h in _histories(out):
        if h.parent == out and (out / "runs").is_dir():
            continue  # a comparison's merged history: written last, from the sub-runs
        rows[str(h.relative_to(out))] = [(r["w_bits"], r["a_bits"], r["accuracy"]) for r in read_history_rows(h)[1]]
    return rows


def _result(out: Path) -> object:
    """What must be identical: the policies (layers and test accuracy) and the histories."""
    pols = {}
    for p in sorted(out.rglob("policy.json")) + sorted((out / "policies").glob("*.json") if (out / "policies").is_dir() else []):
        d = json.loads(p.read_text())
        pols[str(p.relative_to(out))] = (d["layers"], (d.get("metrics") or {}).get("accuracy"))
    return pols, _rows(out)


@dataclass
class Reference:
    name: str
    seconds: float
    first_row_s: float
    result: object
    trials: int


@dataclass
class Outcome:
    killed: bool
    resumed: bool
    rows_at_kill: int
    rows_lost: int  #: rows in the history at the kill that the final history does not hold
    identical: bool
    detail: str = field(default="")


def reference(name: str, workdir: Path) -> Reference:
    """An uninterrupted run, timed: when its first history row appears and when it ends."""
    out = workdir / f"{name}-ref"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(_cmd(name, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and any(h.stat().st_size > 200 for h in _histories(out)):
            first = time.monotonic() - t0
        time.sleep(0.02)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: the reference run failed: {proc.stderr.read() if proc.stderr else ''}")
    return Reference(name, seconds, first or seconds / 2, _result(out), sum(len(r) for r in _rows(out).values()))


def kill_and_resume(ref: Reference, workdir: Path, rng: random.Random, k: int) -> Outcome:
    """SIGKILL a run at a random point - once its history holds a random number of rows
    (0 to all of them: the last kills land while the results are written), plus a random
    fraction of a trial's time - then resume it."""
    out = workdir / f"{ref.name}-kill{k}"
    shutil.rmtree(out, ignore_errors=True)
    rows = rng.randint(0, ref.trials)
    extra = rng.uniform(0.0, (ref.seconds - ref.first_row_s) / max(ref.trials, 1))
    proc = subprocess.Popen(_cmd(ref.name, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and sum(len(r) for r in _rows(out).values()) < rows:
        time.sleep(0.01)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < extra:
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(out)
    resume = subprocess.run(_cmd(ref.name, out, resume=out.joinpath("config.json").is_file()), env=_env(),
                            capture_output=True, text=True, timeout=900)
    after = _rows(out) if resume.returncode == 0 else {}
    lost = sum(len([r for i, r in enumerate(rows) if i >= len(after.get(h, [])) or after[h][i] != r])
               for h, rows in before.items())
    got = _result(out) if resume.returncode == 0 else None
    identical = got == ref.result
    detail = "" if identical else (resume.stderr.strip().splitlines() or ["different result"])[-1]
    return Outcome(killed, resume.returncode == 0, sum(len(r) for r in before.values()), lost, identical, detail)
