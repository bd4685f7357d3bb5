"""Configuration: a search from a file with flags on top, typed method options with one-line
errors, ``haq.search(config=None, **overrides)`` with every documented keyword, one default
episode count, and a plotting module that leaves a notebook's matplotlib alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import haq
from haq.api import config_from
from haq.config import SearchConfig
from haq.errors import ConfigError
from haq.methods import get_method
from haq.methods.rl import DEFAULT_EPISODES
from tests.conftest import ROOT, run_cli


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ----- files and flags -----------------------------------------------------------------------
def test_a_toml_config_runs_and_flags_given_on_the_command_line_override_it(tmp_path):
    cfg = tmp_path / "search.toml"
    cfg.write_text('method = "random"\nhardware = "bismo-edge"\nbudget = ["latency=0.6"]\nmax_evaluations = 3\n'
                   'seed = 4\n[options]\nbatch_size = 2\n')
    proc = run_cli("search", "--config", str(cfg), "--seed", "7", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["method"], saved["hardware"], saved["max_evaluations"]) == ("random", "bismo-edge", 3)
    assert saved["seed"] == 7, "a flag given on the command line wins over the file"
    assert saved["options"] == {"batch_size": 2}


def test_a_runs_saved_config_json_reruns_it(tmp_path):
    assert run_cli("search", "--method", "uniform", "--hardware", "bismo-edge", "--budget", "latency=0.6",
                   "--out", str(tmp_path / "a"), "--quiet").returncode == 0
    proc = run_cli("search", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    assert (tmp_path / "a" / "policy.json").read_text() == (tmp_path / "b" / "policy.json").read_text()


BAD_FILES = {  # file text, suffix -> what the one line says
    ("method = ", ".toml"): "is not valid TOML",
    ("{", ".json"): "is not valid JSON",
    ('{"metod": "rl"}', ".json"): "unknown key 'metod': did you mean method?",
    ("[1, 2]", ".json"): "must hold one table of settings",
}


@pytest.mark.parametrize(("text", "suffix", "fragment"), [(*k, v) for k, v in BAD_FILES.items()])
def test_a_bad_config_file_is_one_line(tmp_path, text, suffix, fragment):
    cfg = tmp_path / f"bad{suffix}"
    cfg.write_text(text)
    _one_line_error(run_cli("search", "--config", str(cfg), "--out", str(tmp_path / "run")), fragment)
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_line(tmp_path):
    _one_line_error(run_cli("search", "--config", str(tmp_path / "nope.json")), "does not exist")


# ----- method options ------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "fragment"), [
    ("warmup_episodes=abc", "rl option warmup_episodes='abc' must be an integer"),
    ("warmup_episodes=2.5", "must be an integer"),
    ("actor_lr=fast", "rl option actor_lr='fast' must be a number"),
    ("actor_lr=inf", "must be a finite number"),
    ("hidden=[300,x]", "must be an integer"),
    ("tensorboard_dir=3", "must be text"),
    ("warmpu_episodes=3", "has no option 'warmpu_episodes': did you mean warmup_episodes?"),
])
def test_a_bad_method_option_is_one_line_naming_the_expected_type(option, fragment):
    _one_line_error(run_cli("search", "--option", option, "--episodes", "2"), fragment)


def test_option_values_are_converted_to_their_field_types():
    cfg = config_from(method="rl", hidden="64,32", warmup_episodes=2.0, agent_threads="none")
    options = get_method("rl").options_type
    built = __import__("haq.api", fromlist=["x"]).method_options(cfg)
    assert isinstance(built, options)
    assert built.hidden == (64, 32) and built.warmup_episodes == 2 and built.agent_threads is None


# ----- the library call ----------------------------------------------------------------------
def test_haq_search_takes_the_documented_keywords(tmp_path):
    result = haq.search(method="rl", hardware="bismo-edge", budget="latency=0.6", episodes=4, warmup_episodes=2,
                        seed=1, out=tmp_path / "run")
    assert result.evaluations == 4
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_evaluations"] == 4 and saved["options"] == {"warmup_episodes": 2}


def test_haq_search_takes_a_config_and_overrides_it():
    base = SearchConfig(method="uniform", hardware="bismo-edge", budget=("latency=0.6",))
    result = haq.search(base, max_evaluations=2)
    assert result.evaluations <= 2 and result.method == "uniform"


def test_haq_search_refuses_an_unknown_keyword_with_the_close_match():
    with pytest.raises(ConfigError, match="has no option 'warmup_episode': did you mean warmup_episodes"):
        haq.search(method="rl", warmup_episode=3)
    with pytest.raises(ConfigError, match="episodes and max_evaluations disagree"):
        haq.search(episodes=3, max_evaluations=4)


def test_one_default_episode_count_is_shared_by_code_cli_and_readme():
    assert get_method("rl").default_evaluations == DEFAULT_EPISODES == 300
    readme = (ROOT / "README.md").read_text()
    assert f"default {DEFAULT_EPISODES}" in readme
    assert "--episodes" not in (ROOT / "scripts" / "run.sh").read_text().split("haq search", 1)[1]


# ----- plots ---------------------------------------------------------------------------------
def test_importing_haq_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import haq, haq.plots, haq.runs, haq.compare; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"
