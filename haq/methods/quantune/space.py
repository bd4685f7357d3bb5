"""Quantune's configuration space: what a configuration is, how the surrogate sees it.

A configuration (Quantune, Lee et al. 2022, §3; design §7.4) is one global quantization
scheme, optionally with per-layer bits:

==============  ===============================================================  =====
field           levels                                                           paper
==============  ===============================================================  =====
calibration     1 | 1000 | 10000 images (ImageNet; scaled to the data at hand)   3
clipping        max | KL                                                         2
schema          asymmetric | symmetric | symmetric-uint8 | power-of-two          4
granularity     per-tensor | per-channel                                         2
precision       int8 | mixed                                                     2
w_bits, a_bits  one bitwidth per layer (our extension; None = not given)         -
==============  ===============================================================  =====

48 int8 configurations per model (96 with mixed) in the paper. The paper's "mixed" keeps
sensitive layers in float; ours lowers per-layer bits: a configuration with bits is
``int8`` when every layer is at 8 bits and ``mixed`` otherwise.

Features (:class:`ConfigEncoder`): one column per level of the five categorical fields
(one-hot, 13 columns), then - when bits are encoded - mean and min of the weight and of
the activation bits (4 columns, model-independent; 8 for an int8 configuration given
without bits) and the bits of every layer (``2 x n_layers`` columns), then the 8 architecture features of the model
(:mod:`haq.methods.quantune.arch`). Unknown values (bits of a row that has none, features
of an untraceable model) are NaN, which XGBoost treats as missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from haq.errors import ConfigError
from haq.methods.quantune.arch import ArchFeatures
from haq.scheme import QuantScheme

CALIBRATIONS = (1, 1000, 10000)  #: calibration images of the paper (ImageNet)
CLIPPINGS = ("max", "KL")
SCHEMAS = ("asymmetric", "symmetric", "symmetric-uint8", "power-of-two")
GRANULARITIES = ("per-tensor", "per-channel")
PRECISIONS = ("int8", "mixed")

#: schema -> (weight mode, activation mode) of :class:`QuantScheme`.
SCHEMA_MODES = {
    "asymmetric": ("asymmetric", "asymmetric"),
    "symmetric": ("symmetric", "symmetric"),
    "symmetric-uint8": ("symmetric", "unsigned"),  # Glow's SymmetricWithUnsigned
    "power-of-two": ("power-of-two", "power-of-two"),  # Glow's SymmetricWithPower2Scale
}
#: clipping -> activation calibrator of :class:`QuantScheme`.
CLIPPING_CALIBRATORS = {"max": "minmax", "KL": "entropy"}

_CATEGORICAL = (
    ("calibration", CALIBRATIONS),
    ("clipping", CLIPPINGS),
    ("schema", SCHEMAS),
    ("granularity", GRANULARITIES),
    ("precision", PRECISIONS),
)


@dataclass(frozen=True)
class QuantuneConfig:
    """One point of the space (hashable: measured configurations are kept in sets).

    Attributes:
        calibration: calibration images in the paper's units (1, 1000 or 10000 ImageNet
            images); :meth:`to_scheme` scales it to the data at hand.
        clipping: activation range: ``max`` (min/max) or ``KL`` (entropy calibration).
        schema: asymmetric, symmetric, symmetric-uint8 (signed weights, unsigned
            activations) or power-of-two (symmetric, scales rounded to 2^k).
        granularity: weight scales per-tensor or per-channel.
        precision: ``int8`` or ``mixed`` (see the module docstring).
        w_bits: weight bits per layer, or None when the configuration has none.
        a_bits: activation bits per layer, or None.
    """

    calibration: int = 10000
    clipping: str = "KL"
    schema: str = "asymmetric"
    granularity: str = "per-channel"
    precision: str = "int8"
    w_bits: tuple[int, ...] | None = None
    a_bits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name, levels in _CATEGORICAL:
            if getattr(self, name) not in levels:
                raise ConfigError(
                    f"Quantune {name} {getattr(self, name)!r} is unknown: use one of {', '.join(map(str, levels))}"
                )
        if (self.w_bits is None) != (self.a_bits is None):
            raise ConfigError("a Quantune configuration has both w_bits and a_bits or neither")
        if self.w_bits is not None and len(self.w_bits) != len(self.a_bits or ()):
            raise ConfigError(f"w_bits has {len(self.w_bits)} layers, a_bits {len(self.a_bits or ())}")

    @classmethod
    def with_bits(cls, base: QuantuneConfig, w_bits: Iterable[int], a_bits: Iterable[int]) -> QuantuneConfig:
        """``base``'s global scheme with these per-layer bits (precision follows the bits)."""
        w = tuple(int(b) for b in w_bits)
        a = tuple(int(b) for b in a_bits)
        precision = "int8" if all(b == 8 for b in w + a) else "mixed"
        return cls(base.calibration, base.clipping, base.schema, base.granularity, precision, w, a)

    @property
    def global_part(self) -> QuantuneConfig:
        """The configuration without its bits (precision ``int8``)."""
        return QuantuneConfig(self.calibration, self.clipping, self.schema, self.granularity)

    def calibration_images(self, available: int) -> int:
        """Images to calibrate on when ``available`` exist: 1, a tenth, or all (the
        paper's 1 : 1000 : 10000 ladder, anchored at the data set's calibration split)."""
        if available < 1:
            raise ConfigError(f"the calibration split has {available} images; Quantune needs at least 1")
        return {1: 1, 1000: max(1, round(available / 10)), 10000: available}[self.calibration]

    def to_scheme(self, available_images: int) -> QuantScheme:
        """The :class:`QuantScheme` the evaluator applies for this configuration."""
        weight_mode, activation_mode = SCHEMA_MODES[self.schema]
        return QuantScheme(
            weight_mode=weight_mode,
            weight_granularity=self.granularity,
            activation_mode=activation_mode,
            calibration=CLIPPING_CALIBRATORS[self.clipping],
            calibration_images=self.calibration_images(available_images),
        )


def global_configs(precisions: Sequence[str] = ("int8",)) -> list[QuantuneConfig]:
    """Every global configuration: 48 per precision, in the paper's grid order
    (schema fastest, then clipping, granularity, calibration; R's ``expand.grid``)."""
    schemas = ("asymmetric", "symmetric", "power-of-two", "symmetric-uint8")  # the R script's level order
    grans = ("per-tensor", "per-channel")
    return [
        QuantuneConfig(cal, clip, schema, gran, prec)
        for prec in precisions
        for cal, gran, clip, schema in itertools.product(CALIBRATIONS, grans, CLIPPINGS, schemas)
    ]


class ConfigEncoder:
    """Turns configurations into the surrogate's feature matrix and back.

    Args:
        n_layers: layers of the model whose bits are encoded; 0 = encode no bits (the
            paper's features: one-hot + architecture).
    """

    def __init__(self, n_layers: int = 0) -> None:
        if n_layers < 0:
            raise ConfigError(f"n_layers={n_layers} must be >= 0")
        self.n_layers = n_layers
        names = [f"{name}={level}" for name, levels in _CATEGORICAL for level in levels]
        if n_layers:
            names += ["w_bits_mean", "w_bits_min", "a_bits_mean", "a_bits_min"]
            names += [f"w{i}" for i in range(n_layers)] + [f"a{i}" for i in range(n_layers)]
        self.feature_names: tuple[str, ...] = (*names, *ArchFeatures.names())
        self._n_onehot = sum(len(levels) for _, levels in _CATEGORICAL)

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def encode(self, configs: Sequence[QuantuneConfig], arch: ArchFeatures | Sequence[ArchFeatures]) -> np.ndarray:
        """Features of ``configs``, shape ``(len(configs), width)``, float64.

        ``arch`` is one model's features for every row, or one per row (warm-start rows
        of several models)."""
        archs = [arch] * len(configs) if isinstance(arch, ArchFeatures) else list(arch)
        if len(archs) != len(configs):
            raise ConfigError(f"{len(configs)} configurations but {len(archs)} architecture rows")
        out = np.full((len(configs), self.width), np.nan)
        col = 0
        for name, levels in _CATEGORICAL:
            values = [getattr(c, name) for c in configs]
            for level in levels:
                out[:, col] = [v == level for v in values]
                col += 1
        if self.n_layers:
            for r, c in enumerate(configs):
                if c.w_bits is None or c.a_bits is None:
                    if c.precision == "int8":  # every layer at 8 bits, layer count unknown
                        out[r, col : col + 4] = 8.0
                    continue
                if len(c.w_bits) != self.n_layers:
                    raise ConfigError(f"configuration has {len(c.w_bits)} layers, the encoder {self.n_layers}")
                w, a = np.asarray(c.w_bits, float), np.asarray(c.a_bits, float)
                out[r, col : col + 4] = (w.mean(), w.min(), a.mean(), a.min())
                out[r, col + 4 : col + 4 + 2 * self.n_layers] = np.concatenate([w, a])
            col += 4 + 2 * self.n_layers
        out[:, col:] = np.stack([a.vector() for a in archs]) if archs else np.empty((0, 8))
        return out

    def decode(self, row: np.ndarray) -> QuantuneConfig:
        """The configuration a feature row encodes (inverse of :meth:`encode`)."""
        row = np.asarray(row, float)
        if row.shape != (self.width,):
            raise ConfigError(f"feature row has shape {row.shape}, the encoder expects ({self.width},)")
        kw: dict[str, object] = {}
        col = 0
        for name, levels in _CATEGORICAL:
            hot = row[col : col + len(levels)]
            if np.count_nonzero(hot == 1) != 1 or np.count_nonzero(hot) != 1:
                raise ConfigError(f"feature row is not one-hot in {name}: {hot.tolist()}")
            kw[name] = levels[int(np.argmax(hot))]
            col += len(levels)
        if self.n_layers and not np.isnan(row[col + 4]):
            bits = row[col + 4 : col + 4 + 2 * self.n_layers].astype(int)
            kw["w_bits"] = tuple(int(b) for b in bits[: self.n_layers])
            kw["a_bits"] = tuple(int(b) for b in bits[self.n_layers :])
        return QuantuneConfig(**kw)  # type: ignore[arg-type]
