"""The format of a table of measured Quantune configurations (``quantune_measured_configs.csv``).

One row per (model, configuration): calibration images ("profile"), clipping, schema,
weight granularity, precision, and the measured top-1 in %. The Quantune paper's own table
(from leejaymin/qaunt_xgboost; a copy is in ``tests/data/``) is in this format, and so are
the ``warm_start`` files the ``quantune`` method learns from before measuring anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from haq.errors import ConfigError, DataError
from haq.methods.quantune.arch import REFERENCE_ARCHITECTURES, ArchFeatures
from haq.methods.quantune.space import ConfigEncoder, QuantuneConfig
from haq.methods.quantune.surrogate import Observations

TABLE_COLUMNS = ("model", "precision", "profile", "granularity", "clipping", "schema", "accuracy")
_SCHEMA = {"asymmetric": "asymmetric", "symmetric": "symmetric", "symmetric_unint": "symmetric-uint8",
           "symmetric_power": "power-of-two"}
_GRANULARITY = {"tensor": "per-tensor", "channel": "per-channel"}
_PRECISION = {"8": "int8", "mixed": "mixed"}

#: fp32 ImageNet top-1 (%) of the six models as the paper reports them (design §7.4).
PAPER_FP32_TOP1 = {"MobileNet": 71.81, "ShuffleNet": 63.96, "SqueezeNet": 53.80, "googlenet_slim_v4": 70.39,
                   "resnet18": 70.67, "resnet50": 76.08}


@dataclass(frozen=True)
class ReferenceTable:
    """A measured table: row ``i`` is ``configs[i]`` on ``models[i]``, ``accuracy[i]`` in %.

    ``architectures`` gives each model's features (the six ImageNet models by default;
    a model missing from it gets unknown features)."""

    models: tuple[str, ...]
    configs: tuple[QuantuneConfig, ...]
    accuracy: np.ndarray
    architectures: dict[str, ArchFeatures] = field(default_factory=lambda: dict(REFERENCE_ARCHITECTURES))

    @property
    def model_names(self) -> list[str]:
        """Distinct models, in file order."""
        return list(dict.fromkeys(self.models))

    def rows(self, model: str) -> np.ndarray:
        """Indices of ``model``'s rows, file order."""
        if model not in self.model_names:
            raise ConfigError(f"model {model!r} is not in the table: use one of {', '.join(self.model_names)}")
        return np.flatnonzero(np.asarray(self.models) == model)

    def best(self, model: str) -> float:
        return float(self.accuracy[self.rows(model)].max())

    def n_layers(self, model: str) -> int:
        """Layers of ``model``'s per-layer bits (0 when its rows carry none)."""
        return max((len(self.configs[r].w_bits or ()) for r in self.rows(model)), default=0)

    def variants(self, model: str) -> list[tuple]:
        """Distinct (precision, w_bits, a_bits) of ``model``'s rows, first-appearance order."""
        return list(dict.fromkeys((c.precision, c.w_bits, c.a_bits) for c in (self.configs[r] for r in self.rows(model))))

    def arch(self, model: str, use_arch: bool = True) -> ArchFeatures:
        return self.architectures.get(model, ArchFeatures.unknown()) if use_arch else ArchFeatures.unknown()

    def warm_start(self, target: str, encoder: ConfigEncoder, use_arch: bool = True) -> Observations:
        """Rows of every model but ``target`` (one query group per model): the paper's
        transfer set. The target's rows are never included."""
        rows = np.flatnonzero(np.asarray(self.models) != target)
        names = self.model_names
        x = encoder.encode([self.configs[i] for i in rows], [self.arch(self.models[i], use_arch) for i in rows])
        group = [names.index(self.models[i]) for i in rows]
        return Observations(x, self.accuracy[rows], np.asarray(group, dtype=np.int64))

    def merged(self, other: ReferenceTable) -> ReferenceTable:
        """This table followed by ``other`` (for warm-starting one model from the other's)."""
        return ReferenceTable(
            self.models + other.models, self.configs + other.configs,
            np.concatenate([self.accuracy, other.accuracy]), {**self.architectures, **other.architectures},
        )


def load_reference_table(path: str | Path) -> ReferenceTable:
    """Read ``quantune_measured_configs.csv`` (columns ``model, precision, profile,
    granularity, clipping, schema, accuracy``; the file's spellings are mapped to ours)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Quantune table {path} does not exist: pass the path of quantune_measured_configs.csv")
    df = pd.read_csv(path, dtype={"precision": str})
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; expected {', '.join(TABLE_COLUMNS)}")
    configs = []
    for n, r in enumerate(df.itertuples(index=False), start=2):
        try:
            configs.append(QuantuneConfig(
                calibration=int(r.profile), clipping=str(r.clipping), schema=_SCHEMA[str(r.schema)],
                granularity=_GRANULARITY[str(r.granularity)], precision=_PRECISION[str(r.precision)],
            ))
        except (KeyError, ValueError, ConfigError) as exc:
            raise DataError(f"{path} line {n}: unreadable configuration ({exc})") from exc
    return ReferenceTable(tuple(df["model"].astype(str)), tuple(configs), df["accuracy"].to_numpy(np.float64))


# ----- the searches -------------------------------------------------------------------------
