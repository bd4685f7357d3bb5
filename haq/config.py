"""What defines a search: :class:`SearchConfig`, written to every run's ``config.json``.

A config comes from keyword arguments (``haq.search(method="hawq", seed=1)``), from the CLI's
flags, or from a file (``haq search --config experiments/configs/rl_bitfusion.json``, JSON or
TOML, the same keys as ``config.json``; flags given on the command line override it). The
saved ``config.json`` of a run is itself such a file, so ``--config runs/x/config.json``
reruns it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from haq.budget import Budget
from haq.errors import ConfigError
from haq.scheme import QuantScheme

#: The default problem: HAQ's headline - lower latency than uniform 8-bit at negligible loss on
#: the BISMO edge accelerator, HAQ's own target (its MobileNetV2 run: 0.6x latency). On
#: BitFusion at batch 1 the embedded 8x8 models are dominated by DRAM set-up cycles (even
#: all-2-bit reaches only 0.56 of uniform 8-bit latency), BISMO's bit-serial array scales with
#: w x a bits down to 0.29x.
DEFAULT_HARDWARE = "bismo-edge"
DEFAULT_BUDGET = "latency=0.6"
#: The budget when only --max-accuracy-drop is given: never above uniform 8-bit latency, and
#: latency is the cost the cheapest policy within the drop minimises.
DROP_BUDGET = "latency=1.0"
#: The activation range estimator of the default scheme (one place; the CLI's default too).
DEFAULT_CALIBRATION = QuantScheme().calibration
#: Selection rules (SearchConfig.select) and the default, chosen by benchmarks/selection_quality.py.
SELECT_RULES = ("val", "kl", "agreement")
DEFAULT_SELECT = "kl"


def default_budget(max_accuracy_drop: float | None) -> str:
    """The budget a search gets when none is given."""
    return DEFAULT_BUDGET if max_accuracy_drop is None else DROP_BUDGET


@dataclass
class SearchConfig:
    """A fully resolved search: enough to rerun it exactly (saved as ``config.json``)."""

    model: str = "digits-mobilenet"  #: model name (see `haq list models`)
    weights: str | None = None  #: state-dict file for the model, loaded with weights_only=True
    data: str | None = None  #: data spec; None = the model's own (digits for the embedded models)
    input_size: int | None = None  #: image height = width, pixels; None = the model's default
    #: most images an ImageFolder contributes in all (calib + val + test: 20/40/40 %), which
    #: bounds the memory the splits take (3 x 224 x 224 float32 = 0.6 MB an image); None = 5000
    max_images: int | None = None
    hardware: str = DEFAULT_HARDWARE  #: hardware model name (see `haq list hardware`)
    hardware_batch: int | None = None  #: images per inference on the hardware; None = its own
    budget: tuple[str, ...] = (DEFAULT_BUDGET,)  #: every item must hold; bare numbers are x uniform 8-bit
    method: str = "rl"  #: search method (see `haq list methods`)
    seed: int = 0  #: the one seed of the search
    max_evaluations: int | None = None  #: accuracy measurements allowed; None = the method's default
    min_bits: int = 2  #: lowest bitwidth a searcher may pick
    max_bits: int = 8  #: highest integer bitwidth a searcher may pick
    pin: str = "first,last"  #: layers fixed at 8 bits: first,last | none | comma-separated layer names
    quant: dict[str, Any] = field(default_factory=lambda: QuantScheme().to_dict())  #: global scheme
    options: dict[str, Any] = field(default_factory=dict)  #: method-specific options
    #: percent points of validation accuracy below fp32 allowed; set = return the cheapest
    #: policy within it (on the budget's first cost) instead of the most accurate one
    max_accuracy_drop: float | None = None
    #: how the returned policy is chosen: val (HAQ's: highest validation accuracy), kl or
    #: agreement (the top candidates re-ranked by fidelity to fp32 on every non-test image)
    select: str = DEFAULT_SELECT
    select_top_k: int = 16  #: candidates the kl/agreement re-ranking looks at (benchmarks/selection_quality.py)
    unlabeled: str | None = None  #: folder of extra unlabeled images for the fidelity set (ImageFolder data)

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            self.budget = (self.budget,)
        self.budget = tuple(self.budget)
        if not (1 <= self.min_bits <= self.max_bits):
            raise ConfigError(f"--min-bits {self.min_bits} / --max-bits {self.max_bits}: need 1 <= min <= max")
        if self.max_bits not in (*range(1, 9), 16, 32):
            raise ConfigError(f"--max-bits {self.max_bits}: use 1-8, 16 or 32")
        if self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop < 100):
            raise ConfigError(f"--max-accuracy-drop {self.max_accuracy_drop}: give percent points, 0 <= drop < 100 (e.g. 1.0)")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ConfigError(f"--max-evaluations {self.max_evaluations}: must be at least 1")
        if self.max_images is not None and self.max_images < 3:
            raise ConfigError(f"--max-images {self.max_images}: must be at least 3 (one image per split)")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError(f"--input-size {self.input_size}: must be at least 1 pixel")
        if self.hardware_batch is not None and self.hardware_batch < 1:
            raise ConfigError(f"hardware_batch={self.hardware_batch}: must be at least 1")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"--select {self.select!r} is unknown: use {', '.join(SELECT_RULES)}")
        if self.select_top_k < 1:
            raise ConfigError(f"--select-top-k {self.select_top_k}: must be at least 1")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a table of method options, got {self.options!r}")
        Budget.parse(list(self.budget))  # malformed budgets fail here, before any work
        QuantScheme.from_dict(self.quant)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = list(self.budget)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> SearchConfig:
        """A config from a mapping with :class:`SearchConfig`'s keys (``episodes`` is accepted
        for ``max_evaluations``); unknown keys are refused with the close matches."""
        d = dict(d)
        d.pop("fidelity", None)  # written into config.json by haq, for information
        if "episodes" in d:
            episodes = d.pop("episodes")
            if d.get("max_evaluations") not in (None, episodes):
                raise ConfigError(f"{source}: episodes and max_evaluations disagree; give one of them")
            d["max_evaluations"] = episodes
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{source} has an unknown key {unknown[0]!r}: {hint}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> SearchConfig:
        """Read a ``.json`` or ``.toml`` config (e.g. a run's ``config.json``)."""
        return cls.from_dict(read_config_file(path), source=str(path))

    @property
    def scheme(self) -> QuantScheme:
        return QuantScheme.from_dict(self.quant)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table in a ``.json`` or ``.toml`` file (one-line errors for a missing or malformed file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass a .json or .toml file (e.g. a run's config.json)")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"config file {p} is not valid {kind} ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold one table of settings, not {type(data).__name__}")
    return data
