"""The per-layer bitwidth policy: the artefact users ship (``haq-policy/1`` JSON).

A :class:`Policy` is a weight and an activation bitwidth for every quantizable layer, the
quantization scheme they are applied with, and optionally the measured metrics and how it
was found. Loading validates twice: against the JSON Schema shipped in the package, then
against the model (every layer named exists, none is missing) and, when given, the
hardware (every bitwidth is one it runs). Every violation is one line with the fix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from haq.atomic import atomic_write_json
from haq.bits import check_bits
from haq.errors import PolicyError
from haq.layers import LayerSpec
from haq.scheme import QuantScheme

FORMAT = "haq-policy/1"


@dataclass(frozen=True)
class LayerBits:
    """Bitwidths of one layer: ``w_bits`` for its weights, ``a_bits`` for its input."""

    name: str
    kind: str
    w_bits: int
    a_bits: int


@dataclass(frozen=True)
class Policy:
    """Per-layer bitwidths in layer (execution) order, plus provenance.

    ``metrics`` uses the keys of design §3: ``accuracy`` (0-1), ``latency_ms``,
    ``energy_mj``, ``size_mib``, ``bops_g``; ``search`` records method, budget, seed.
    """

    layers: tuple[LayerBits, ...]
    model: str = ""
    hardware: str | None = None
    quant: QuantScheme = field(default_factory=QuantScheme)
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)

    # ----- construction -------------------------------------------------------------
    @classmethod
    def from_bits(
        cls,
        layers: Sequence[LayerSpec],
        w_bits: Sequence[int] | np.ndarray,
        a_bits: Sequence[int] | np.ndarray,
        **meta: Any,
    ) -> Policy:
        if len(w_bits) != len(layers) or len(a_bits) != len(layers):
            raise PolicyError(
                f"a policy needs one bitwidth per layer: got {len(w_bits)} weight and {len(a_bits)} activation "
                f"bitwidths for {len(layers)} layers"
            )
        entries = tuple(
            LayerBits(spec.name, spec.kind, check_bits(int(w), f"w_bits of {spec.name}"), check_bits(int(a), f"a_bits of {spec.name}"))
            for spec, w, a in zip(layers, w_bits, a_bits, strict=True)
        )
        return cls(layers=entries, **meta)

    @classmethod
    def uniform(cls, layers: Sequence[LayerSpec], w_bits: int, a_bits: int | None = None, **meta: Any) -> Policy:
        a = w_bits if a_bits is None else a_bits
        return cls.from_bits(layers, [w_bits] * len(layers), [a] * len(layers), **meta)

    def replace(self, **changes: Any) -> Policy:
        return replace(self, **changes)

    # ----- views --------------------------------------------------------------------
    @property
    def w_bits(self) -> np.ndarray:
        return np.array([lb.w_bits for lb in self.layers], dtype=np.int64)

    @property
    def a_bits(self) -> np.ndarray:
        return np.array([lb.a_bits for lb in self.layers], dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return [lb.name for lb in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    # ----- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model,
            "hardware": self.hardware,
            "quant": self.quant.to_dict(),
            "layers": [{"name": lb.name, "kind": lb.kind, "w_bits": lb.w_bits, "a_bits": lb.a_bits} for lb in self.layers],
        }
        if self.metrics:
            d["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        if self.search:
            d["search"] = dict(self.search)
        return d

    def save(self, path: str | Path) -> Path:
        """Write the policy as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, source: str = "policy") -> Policy:
        try:
            _validate_schema(d, source)
        except RecursionError:
            raise PolicyError(f"{source}: nested too deeply to be a policy; fix the file or re-export it") from None
        entries = []
        for _i, e in enumerate(d["layers"]):
            name = e["name"]
            w = check_bits(e["w_bits"], f"{source}: w_bits of layer {name}")
            a = check_bits(e["a_bits"], f"{source}: a_bits of layer {name}")
            entries.append(LayerBits(name, e.get("kind", ""), w, a))
        names = [e.name for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PolicyError(f"{source}: layer {dupes[0]} appears more than once; give each layer one entry")
        return cls(
            layers=tuple(entries),
            model=d.get("model", ""),
            hardware=d.get("hardware"),
            quant=QuantScheme.from_dict(d.get("quant", {})),
            metrics=dict(d.get("metrics", {})),
            search=dict(d.get("search", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and schema-validate a policy JSON file (no model check: see :meth:`matched_to`)."""
        p = Path(path)
        if p.is_dir():
            raise PolicyError(f"policy file {p} is a directory; pass the policy.json inside it (or a shorthand like uniform:8)")
        if not p.is_file():
            raise PolicyError(f"policy file {p} does not exist; pass a policy.json or a shorthand like uniform:8")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise PolicyError(f"policy file {p} is not valid JSON ({why}); fix the file or re-export it") from None
        except RecursionError:
            raise PolicyError(f"policy file {p} is nested too deeply to be a policy; fix the file or re-export it") from None
        except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
            raise PolicyError(f"policy file {p} is not a policy ({str(exc)[:120]}); fix the file or re-export it") from None
        except OSError as exc:
            raise PolicyError(f"policy file {p} cannot be read ({exc.strerror or exc}); check its permissions") from None
        return cls.from_dict(d, source=str(p))

    # ----- validation against a model and a hardware ----------------------------------
    def matched_to(self, layers: Sequence[LayerSpec]) -> Policy:
        """This policy with layers in the model's order, after checking it fits the model.

        Raises one :class:`PolicyError` line for: a layer the model lacks (with the close
        matches) and a layer the policy misses. (Whether a hardware runs its bits is
        :func:`haq.simulators.check_policy_bits`'s question.)
        """
        import difflib

        by_name = {lb.name: lb for lb in self.layers}
        model_names = [s.name for s in layers]
        model_set = set(model_names)
        for lb in self.layers:
            if lb.name not in model_set:
                close = difflib.get_close_matches(lb.name, model_names, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else "check the model name and the policy file"
                raise PolicyError(f"policy names layer {lb.name!r}, which the model does not have: {hint}")
        missing = [n for n in model_names if n not in by_name]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise PolicyError(
                f"policy has no bitwidths for layer {missing[0]}{more}; add an entry per layer "
                "(`haq cost --policy uniform:8 --json` shows the layer names)"
            )
        for s in layers:
            kind = by_name[s.name].kind
            if kind and kind != s.kind:
                raise PolicyError(
                    f"policy says layer {s.name} is a {kind} layer, the model's is {s.kind}; "
                    "the policy was made for another model - re-export it for this one"
                )
        ordered = tuple(
            LayerBits(s.name, s.kind, by_name[s.name].w_bits, by_name[s.name].a_bits) for s in layers
        )
        return replace(self, layers=ordered)


def _finite_or_none(v: Any) -> float | None:
    """A metric as JSON: NaN and infinities (a failed measurement) are written as null."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


_UNIFORM_RE = re.compile(r"^uniform:(?:w(\d+)a(\d+)|(\d+))$")


def parse_policy(spec: str, layers: Sequence[LayerSpec], **meta: Any) -> Policy:
    """A policy from a CLI argument: ``uniform:8``, ``uniform:w4a8`` or a JSON file path.

    The result is matched to ``layers`` (see :meth:`Policy.matched_to`).
    """
    if spec.startswith("uniform:"):
        m = _UNIFORM_RE.match(spec)
        if not m:
            raise PolicyError(f"policy {spec!r} is malformed: write uniform:8 or uniform:w4a8")
        w, a = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(3)), int(m.group(3)))
        check_bits(w, f"{spec}: w_bits")
        check_bits(a, f"{spec}: a_bits")
        return Policy.uniform(layers, w, a, **meta)
    policy = Policy.load(spec)
    model = meta.get("model")
    if model and policy.model and policy.model != model:
        raise PolicyError(
            f"policy {spec} was made for model {policy.model!r}, not {model!r}; pass --model {policy.model} "
            "or a policy searched for this model"
        )
    return policy.matched_to(layers)


@cache
def _schema() -> dict:
    text = resources.files("haq").joinpath("schemas/policy-v1.json").read_text(encoding="utf-8")
    return json.loads(text)


def _validate_schema(d: Any, source: str) -> None:
    import jsonschema

    if isinstance(d, dict) and "format" in d and d["format"] != FORMAT:
        raise PolicyError(
            f"{source}: format {d['format']!r} is not supported; this haq reads {FORMAT!r} "
            "(re-export the policy with this version)"
        )
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise PolicyError(f"{source}: invalid policy at {where}: {e.message}")
