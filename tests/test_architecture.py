"""The architecture holds by construction: one-way imports (checked by import-linter on the
installed layout), a frozen problem, methods that only measure through the ledger, and an
evaluator protocol methods use without probing attributes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _installed_layout(tmp_path: Path) -> Path:
    """The package as pip installs it: haq/, haq/envs (from envs/), haq/simulators."""
    root = tmp_path / "layout"
    shutil.copytree(ROOT / "haq", root / "haq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "envs", root / "haq" / "envs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "simulators", root / "haq" / "simulators", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    if not LINT.exists():
        pytest.fail("lint-imports is not installed: run scripts/setup.sh (it installs the dev extra)")
    return _installed_layout(tmp_path_factory.mktemp("arch"))


def test_every_import_contract_is_kept(layout):
    proc = _lint(layout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("haq/simulators/base.py", "import haq.quant.evaluator", "Hardware models know no quantizer"),
    ("haq/budget.py", "import haq.methods", "One-way layers"),
    ("haq/envs/quantization_env.py", "import haq.api", "The Gymnasium environment knows"),
    ("haq/methods/random.py", "import haq.methods.uniform", "Methods do not import each other"),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, contract):
    root = _installed_layout(tmp_path)
    path = root / module
    text = path.read_text()
    path.write_text(text.replace("from __future__ import annotations\n", f"from __future__ import annotations\n\n{line}\n", 1))
    proc = _lint(root)
    assert proc.returncode != 0
    assert re.search(rf"{re.escape(contract)}.*BROKEN", proc.stdout, flags=re.S), proc.stdout


def test_the_problem_is_frozen():
    from haq.problem import SearchProblem

    assert SearchProblem.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_methods_never_probe_the_evaluator_ledger_or_problem_with_hasattr_or_getattr():
    """They use the typed protocol (haq.problem.ModelAccess); getattr on the method's own
    options or on a user's torch module is fine."""
    probe = re.compile(r"\b(hasattr|getattr)\(\s*(ev|evaluator|ledger|problem|access|ledger\.model)\b")
    sources = list((ROOT / "haq" / "methods").rglob("*.py")) + list((ROOT / "envs").rglob("*.py"))
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
                 if probe.search(line)]
    assert offenders == []


def test_every_method_is_a_folder_or_module_named_as_the_cli_names_it():
    from haq.methods import BUILTIN, get_method

    for name, module in BUILTIN.items():
        assert module == f"haq.methods.{name}"
        assert get_method(name).name == name
        base = ROOT / "haq" / "methods"
        assert (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()


def test_every_method_option_has_help_from_its_field():
    from haq.methods import METHODS, list_methods

    list_methods()
    for entry in METHODS.entries():
        for f in dataclasses.fields(entry.obj.options_type):
            assert f.metadata.get("help"), f"{entry.name}.{f.name} has no help"
