"""Property-based fuzzing of every input a user types (issue 12): policy JSON, budget
strings, model/data/hardware specs, ``--option KEY=VALUE`` for every option of every method,
and CLI argument combinations. The only outcomes allowed: success, or our one-line error
(a :class:`~haq.errors.HaqError`; exit code 2 on the CLI) - never a traceback.

Case counts come from a hypothesis profile chosen by ``HAQ_FUZZ``: unset, a few hundred
cases in all (CI runs every test); ``HAQ_FUZZ=full``, more than 10,000
(``HAQ_FUZZ=full pytest -m slow tests/test_fuzz.py``). Everything runs in-process.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haq.errors import HaqError
from tests.conftest import run_cli

#: examples per test: full = the slow suite (sum over this file's tests > 10,000).
FULL = os.environ.get("HAQ_FUZZ", "") == "full"
_common = dict(deadline=None, database=None, derandomize=not FULL,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("haq-quick", max_examples=40, **_common)
settings.register_profile("haq-full", max_examples=1500, **_common)
PROFILE = "haq-full" if FULL else "haq-quick"
pytestmark = pytest.mark.slow if FULL else []


def scaled(n: int):
    """Examples for one test: ``n`` in the full profile (the quick one takes n / 40)."""
    return settings(settings.get_profile(PROFILE), max_examples=n if FULL else max(10, n // 40))


#: cases run in this session (benchmarks/reliability.py reads the line printed at the end)
CASES = {"run": 0, "tracebacks": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_cases():
    yield
    report = os.environ.get("HAQ_FUZZ_REPORT")
    if report:  # accumulated over this file's modules' tests
        Path(report).write_text(json.dumps(CASES))


def ok_or_one_line(call, *args, **kwargs):
    """Run ``call``; a HaqError must be one non-empty line. Anything else propagates (a bug)."""
    CASES["run"] += 1
    try:
        return call(*args, **kwargs)
    except HaqError as exc:
        if "\n" in str(exc) or not str(exc):
            CASES["tracebacks"] += 1
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return None
    except Exception:
        CASES["tracebacks"] += 1
        raise


def cli_ok_or_one_line(*args: str):
    CASES["run"] += 1
    try:
        r = run_cli(*args)  # an exception here is a traceback a user would see: the test fails
    except BaseException:
        CASES["tracebacks"] += 1
        raise
    assert r.returncode in (0, 2), (args, r.returncode, r.stderr)
    if r.returncode == 2 and r.stderr.startswith("haq: error: "):
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    elif r.returncode == 2:  # a usage error from the argument parser (click's own format)
        assert "Usage:" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    return r


# ----- policy JSON --------------------------------------------------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)
scalars = st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | \
    st.floats(allow_nan=True, allow_infinity=True) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=20)
LAYER_NAMES = ["conv_first", "blocks.0.conv.0", "blocks.1.pw", "fc", "classifier", ""]
bits = st.sampled_from([1, 2, 4, 8, 16, 32]) | st.integers(-3, 70) | st.just(True) | st.just(4.0) | st.just("8") | \
    st.just(2**70)
layer = st.fixed_dictionaries(
    {"name": st.sampled_from(LAYER_NAMES) | text, "w_bits": bits, "a_bits": bits},
    optional={"kind": st.sampled_from(["conv", "depthwise", "linear", "lstm"]), "extra": json_values},
)
policies = st.fixed_dictionaries(
    {"format": st.sampled_from(["haq-policy/1", "haq-policy/2", ""]) | text,
     "layers": st.lists(layer, max_size=20) | json_values},
    optional={"model": st.sampled_from(["digits-mobilenet", "digits-resnet", "resnet18"]) | json_values,
              "hardware": st.none() | st.sampled_from(["bitfusion", "bismo-edge"]) | text,
              "quant": st.dictionaries(st.sampled_from(["weight", "activation", "calibration", "calibration_images", "x"]),
                                       st.sampled_from(["symmetric-per-channel", "minmax", "percentile:99.9"]) | scalars,
                                       max_size=4),
              "metrics": st.dictionaries(text, scalars, max_size=3),
              "search": json_values},
)


@st.composite
def policy_files(draw) -> bytes:
    """The bytes of a policy file: structured, any JSON, deep nesting, or raw (invalid UTF-8)."""
    kind = draw(st.sampled_from(["policy", "policy", "json", "deep", "bytes", "real"]))
    if kind == "policy":
        return json.dumps(draw(policies), allow_nan=True).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener = draw(st.sampled_from(['[', '{"a":', '{"layers":[']))
        return (opener * depth).encode()
    if kind == "real":  # a valid policy with one field damaged or truncated
        base = REAL_POLICY
        cut = draw(st.integers(0, len(base)))
        return base[:cut]
    return draw(st.binary(max_size=200))


REAL_POLICY = b""


@pytest.fixture(scope="module", autouse=True)
def _real_policy():
    global REAL_POLICY
    r = run_cli("cost", "--policy", "uniform:8", "--json", "--per-layer")
    layers = [{"name": x["name"], "kind": "conv", "w_bits": 8, "a_bits": 8} for x in json.loads(r.stdout)["layers"]]
    REAL_POLICY = json.dumps({"format": "haq-policy/1", "model": "digits-mobilenet", "layers": layers}).encode()


@scaled(2000)
@given(data=policy_files(), hardware=st.sampled_from([None, "bitfusion", "bismo-edge"]), round_up=st.booleans())
def test_any_policy_file_is_accepted_or_refused_in_one_line(data, hardware, round_up):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "policy.json"
        path.write_bytes(data)
        args = ["cost", "--policy", str(path), "--json"]
        if hardware:
            args += ["--hardware", hardware]
        if round_up:
            args.append("--round-up")
        cli_ok_or_one_line(*args)


# ----- budgets ------------------------------------------------------------------------------------
keys = st.sampled_from(["latency", "energy", "size", "bops", "LATENCY", "lat", "", "power"]) | text
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-(10**400), 10**400).map(str),
                    st.sampled_from(["1e309", "-0", "0", ".5", "5.", "1e-400", "nan", "inf", "0x10", "1_0", "١"]))
units = st.sampled_from(["", "ms", "s", "us", "mJ", "J", "MiB", "GB", "b", "G", "T", "x", "µs"]) | text
items = st.builds(lambda k, s, n, u: f"{k}{s}{n}{u}", keys, st.sampled_from(["=", " = ", ":", "==", ""]), numbers, units)
budgets = st.lists(items | text, min_size=0, max_size=4).map(lambda xs: ",".join(xs)) | text


@scaled(3000)
@given(budget=budgets)
def test_any_budget_string_parses_resolves_or_is_refused_in_one_line(budget):
    from haq.budget import Budget
    from haq.costs import Cost

    parsed = ok_or_one_line(Budget.parse, [budget])
    if parsed is not None:
        ref = Cost(latency_ms=1.0, energy_mj=None, size_mib=1.0, bops_g=1.0)
        ok_or_one_line(parsed.resolve, ref)


# ----- model, data and hardware specs -------------------------------------------------------------
SAFE_MODULES = ["os.path", "json", "math", "haq.models", "haq.digits_models", "nosuch.module", "haq", ""]
model_specs = st.one_of(
    st.sampled_from(["digits-mobilenet", "digits-resnet", "resnet18x", "mobilenet", "DIGITS-MOBILENET"]),
    st.builds(lambda m, a: f"{m}:{a}", st.sampled_from(SAFE_MODULES),
              st.sampled_from(["join", "loads", "pi", "EMBEDDED", "load_model", "ARCHITECTURES", "MobileNet", "", "x"]) | text),
    text.filter(lambda s: ":" not in s),
)
data_specs = st.one_of(st.sampled_from(["digits", "imagefolder:", "imagefolder:/nonexistent", "imagefolder:/etc/hostname",
                                        "imagefolder:.", "cifar10", ""]),
                       st.builds(lambda t: f"imagefolder:{t}", text), text)
hardware_specs = st.one_of(st.sampled_from(["bitfusion", "bismo-edge", "bismo-cloud", "gpu-h100", "table:", "table:/nonexistent",
                                            "table:/etc/hostname", "Bitfusion", "tpu"]), st.builds(lambda t: f"table:{t}", text), text)


@scaled(1500)
@given(model=model_specs, input_size=st.none() | st.integers(-5, 40))
def test_any_model_spec_loads_or_is_refused_in_one_line(model, input_size):
    from haq.layers import describe
    from haq.models import load_model

    loaded = ok_or_one_line(load_model, model, input_size=input_size, trained=False)
    if loaded is not None:
        ok_or_one_line(describe, loaded.module, loaded.input_shape)


@scaled(600)
@given(spec=data_specs)
def test_any_data_spec_loads_or_is_refused_in_one_line(spec):
    from haq.data import load_data

    if spec != "digits":  # digits loads (tested elsewhere); the rest must fail fast and cleanly
        ok_or_one_line(load_data, spec)


@scaled(600)
@given(spec=hardware_specs)
def test_any_hardware_spec_is_found_or_refused_in_one_line(spec):
    from haq.simulators import get_hardware

    ok_or_one_line(get_hardware, spec)


# ----- --option KEY=VALUE for every option of every method ----------------------------------------
def _all_options() -> list[tuple[str, str]]:
    from haq.methods import list_method_options

    return [tuple(name.split(".", 1)) for name, _ in list_method_options()]  # type: ignore[misc]


OPTIONS = _all_options()
option_values = st.one_of(
    st.sampled_from(["1", "0", "-1", "1e309", "nan", "true", "null", "[]", "[1, 2]", "\"x\"", "{}", "0.5", "abc", "",
                     "1,2", "cpu", "cuda:99", "kl", "quantile:1.5", "rank:pairwise", "fewer-bits", "avg_range", "tied"]),
    st.integers(-(10**20), 10**20).map(str), st.floats().map(repr), text,
    json_values.map(lambda v: json.dumps(v)),
)


@scaled(1500)
@given(option=st.sampled_from(OPTIONS) | st.tuples(st.sampled_from(["rl", "hawq", "random"]), text), value=option_values)
def test_any_option_value_of_every_method_is_taken_or_refused_in_one_line(option, value):
    from haq.cli import _options
    from haq.methods import build_options, get_method

    method, key = option
    values = ok_or_one_line(_options, [f"{key}={value}"])
    if values is not None:
        ok_or_one_line(build_options, get_method(method).options_type, values, method)


def test_every_option_of_every_method_is_fuzzed():
    from haq.methods import list_method_options

    assert len(OPTIONS) == len(list_method_options()) >= 40


# ----- CLI argument combinations ------------------------------------------------------------------
FLAG_VALUES = {
    "--budget": budgets, "--method": st.sampled_from(["rl", "hawq", "hago", "quantune", "pareto", "random", "uniform", "x"]),
    "--episodes": st.integers(-2, 5).map(str) | text, "--max-evaluations": st.integers(-2, 5).map(str) | text,
    "--seed": st.integers(-(2**70), 2**70).map(str) | text, "--min-bits": st.integers(-1, 40).map(str),
    "--max-bits": st.integers(-1, 40).map(str), "--pin": st.sampled_from(["first,last", "none", "", "first", "fc", ","]) | text,
    "--calibration": st.sampled_from(["minmax", "avg-minmax", "percentile:99.9", "percentile:101", "entropy", "mse", "x"]) | text,
    "--weight-quant": st.sampled_from(["symmetric-per-channel", "asymmetric-per-tensor", "power-of-two-per-channel", "x"]) | text,
    "--act-quant": st.sampled_from(["asymmetric-per-tensor", "unsigned-per-tensor", "symmetric-per-channel"]) | text,
    "--option": st.builds(lambda o, v: f"{o[1]}={v}", st.sampled_from(OPTIONS), option_values) | text,
    "--max-accuracy-drop": st.sampled_from(["1.0", "0", "-1", "nan", "inf", "1e309", "x"]),
    "--input-size": st.integers(-3, 64).map(str), "--model": model_specs, "--hardware": hardware_specs,
    "--config": st.sampled_from(["/nonexistent.json", "/etc/hostname", "x.toml"]), "--data": data_specs,
}
search_args = st.lists(st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda f: FLAG_VALUES[f].map(lambda v: (f, v))),
                       max_size=6)


@scaled(1200)
@given(args=search_args, command=st.sampled_from(["search", "compare"]))
def test_any_search_or_compare_command_line_validates_in_one_line(args, command):
    # --resume into a folder that holds no run: every value is checked, then the run directory
    # is refused - so no search runs, and a traceback anywhere in validation fails the test.
    flat = [x for f, v in args if not (command == "compare" and f in ("--method", "--episodes", "--option", "--max-accuracy-drop"))
            for x in (f, v)]
    with tempfile.TemporaryDirectory() as d:
        r = cli_ok_or_one_line(command, *flat, "--resume", "--out", str(Path(d) / "none"), "--quiet")
        assert r.returncode == 2
        assert not (Path(d) / "none").exists()


cost_args = st.lists(st.sampled_from(["--policy", "--model", "--hardware", "--batch", "--input-size", "--round-up",
                                      "--per-layer", "--csv", "--json"]).flatmap(
    lambda f: {"--policy": st.sampled_from(["uniform:8", "uniform:w4a8", "uniform:0", "uniform:w9a2", "uniform:", "x.json"]) | text,
               "--model": model_specs, "--hardware": hardware_specs, "--batch": st.integers(-2, 5000).map(str) | text,
               "--input-size": st.integers(-3, 80).map(str)}.get(f, st.just(None)).map(lambda v: (f, v))), max_size=5)


@scaled(800)
@given(args=cost_args)
def test_any_cost_command_line_succeeds_or_is_refused_in_one_line(args):
    flat = [x for f, v in args for x in ((f,) if v is None else (f, v))]
    cli_ok_or_one_line("cost", *flat)


@scaled(300)
@given(what=st.sampled_from(["models", "data", "hardware", "methods", "options"]) | text)
def test_list_of_anything_is_a_table_or_one_line(what):
    cli_ok_or_one_line("list", what)
