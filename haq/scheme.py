"""How tensors are quantized, as a frozen value object that round-trips through policy JSON.

The string forms are the ones written in ``policy.json``'s ``quant`` block::

    QuantScheme()                      # weight "symmetric-per-channel",
                                       # activation "asymmetric-per-tensor",
                                       # calibration "percentile:99.99"
    QuantScheme.from_dict({"weight": "power-of-two-per-tensor", "calibration": "entropy"})
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from haq.errors import ConfigError

WEIGHT_MODES = ("symmetric", "asymmetric", "power-of-two")
ACTIVATION_MODES = ("asymmetric", "symmetric", "unsigned", "power-of-two")
GRANULARITIES = ("per-channel", "per-tensor")
_CALIBRATION_RE = re.compile(r"^(minmax|avg-minmax|entropy|mse|percentile:(\d+(\.\d+)?))$")


@dataclass(frozen=True)
class QuantScheme:
    """The global quantization scheme a per-layer bit policy is applied with.

    Attributes:
        weight_mode: symmetric (zero point 0, range +-max|W|), asymmetric (min/max with a
            zero point) or power-of-two (symmetric, scale rounded up to 2^k).
        weight_granularity: per-channel (one scale per output channel) or per-tensor.
        activation_mode: asymmetric (calibrated min/max, zero point), symmetric (signed,
            +-max|x|), unsigned (zero point 0, range [0, max]; "symmetric-uint8") or
            power-of-two (symmetric with a 2^k scale).
        calibration: activation range estimator: minmax, avg-minmax (HAGO's avg_range),
            percentile:P, entropy (KL, TensorRT-style) or mse.
        calibration_images: images used to calibrate; None = all of the calibration split.
    """

    weight_mode: str = "symmetric"
    weight_granularity: str = "per-channel"
    activation_mode: str = "asymmetric"
    calibration: str = "percentile:99.99"
    calibration_images: int | None = None

    def __post_init__(self) -> None:
        if self.weight_mode not in WEIGHT_MODES:
            raise ConfigError(f"weight mode {self.weight_mode!r} is unknown: use one of {', '.join(WEIGHT_MODES)}")
        if self.weight_granularity not in GRANULARITIES:
            raise ConfigError(
                f"weight granularity {self.weight_granularity!r} is unknown: use per-channel or per-tensor"
            )
        if self.activation_mode not in ACTIVATION_MODES:
            raise ConfigError(
                f"activation mode {self.activation_mode!r} is unknown: use one of {', '.join(ACTIVATION_MODES)}"
            )
        m = _CALIBRATION_RE.match(self.calibration)
        if not m:
            raise ConfigError(
                f"calibrator {self.calibration!r} is unknown: use minmax, avg-minmax, entropy, mse or percentile:P "
                "(e.g. percentile:99.99)"
            )
        if m.group(2) is not None and not (0 < float(m.group(2)) <= 100):
            raise ConfigError(f"calibrator {self.calibration!r}: the percentile must be in (0, 100]")
        if self.calibration_images is not None and self.calibration_images < 1:
            raise ConfigError(f"calibration_images={self.calibration_images} must be at least 1")

    @property
    def weight(self) -> str:
        return f"{self.weight_mode}-{self.weight_granularity}"

    @property
    def activation(self) -> str:
        return f"{self.activation_mode}-per-tensor"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"weight": self.weight, "activation": self.activation, "calibration": self.calibration}
        if self.calibration_images is not None:
            d["calibration_images"] = self.calibration_images
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantScheme:
        kw: dict[str, Any] = {}
        if "weight" in d:
            mode, _, gran = d["weight"].rpartition("-per-")
            kw["weight_mode"], kw["weight_granularity"] = mode, "per-" + gran
        if "activation" in d:
            kw["activation_mode"] = d["activation"].removesuffix("-per-tensor")
        if "calibration" in d:
            kw["calibration"] = d["calibration"]
        if d.get("calibration_images") is not None:
            kw["calibration_images"] = int(d["calibration_images"])
        return cls(**kw)

    def replace(self, **changes: Any) -> QuantScheme:
        return replace(self, **changes)
