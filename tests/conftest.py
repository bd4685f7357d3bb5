"""Shared fixtures. The trained default models are cached in $HAQ_CACHE_DIR (the repo's
.cache/haq unless set), so only the first test session trains them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HAQ_CACHE_DIR", str(ROOT / ".cache" / "haq"))
os.environ.setdefault("MPLBACKEND", "Agg")

# The test models are tiny: one torch thread is as fast and keeps results independent of
# what else the machine runs (with two threads, a busy core stalls every op).
import torch  # noqa: E402

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def digits():
    from haq.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def mobilenet():
    from haq.models import load_model

    return load_model("digits-mobilenet")


@pytest.fixture(scope="session")
def resnet():
    from haq.models import load_model

    return load_model("digits-resnet")


@pytest.fixture(scope="session")
def mobilenet_evaluator(mobilenet, digits):
    from haq.quant.evaluator import Evaluator

    return Evaluator(mobilenet.module, digits)


def solve(config, workspace, **ledger_kwargs):
    """Run ``config``'s method on a prepared workspace without a run directory; returns
    ``(problem, ledger, result)`` so a test can look at the ledger after the run."""
    from haq.api import make_problem, method_options, open_ledger
    from haq.methods import get_method, run_method

    spec = get_method(config.method)
    options = method_options(config)
    problem = make_problem(config, workspace, options)
    ledger = open_ledger(problem, workspace, spec, **ledger_kwargs)
    return problem, ledger, run_method(spec, problem, ledger, options)


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(*args: str, cwd: Path | None = None, subprocess: bool = False) -> CliResult:
    """Run `haq ARGS` as a user would: exit code, stdout, stderr.

    In-process through the real entry point (:func:`haq.cli.main`) by default, which is
    what the console script calls; ``subprocess=True`` runs ``python -m haq.cli``.
    """
    import contextlib
    import io
    import sys

    if subprocess:
        import subprocess as sp

        proc = sp.run([sys.executable, "-m", "haq.cli", *args], capture_output=True, text=True,
                      cwd=cwd or ROOT, env=os.environ.copy())
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    from haq.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    code = 0
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        os.chdir(old)
    return CliResult(code, out.getvalue(), err.getvalue())
