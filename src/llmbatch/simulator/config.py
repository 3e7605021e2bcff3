"""SimulatorConfig: every knob of the simulator, with validation and partial updates.

The config object is immutable in practice: a runtime change (`POST /_sim/config`) builds a new one with
`merged()` and swaps it in, so a request in flight always sees one consistent set of settings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Faults whose rate is the fraction of wall time spent in a burst (every request inside a burst fails).
BURST_FAULTS: tuple[str, ...] = ("storm429", "burst5xx")
# Faults whose rate is the probability that one request is hit.
REQUEST_FAULTS: tuple[str, ...] = ("hang", "reset", "malformed", "truncated", "slow_body")
FAULTS: tuple[str, ...] = BURST_FAULTS + REQUEST_FAULTS

TIERS: tuple[str, ...] = ("mini", "standard", "frontier")

# What a per-model override may change.
OVERRIDE_KEYS: dict[str, type] = {
    "label_error_rate": float,  # classify answers outside the allowed labels
    "json_error_rate": float,  # extract answers that are not valid JSON
    "wrong_answer_rate": float,  # valid but wrong answers (mean rate; see simulator.quality)
    "error_rate": float,  # injected 429/5xx, instead of the global error_rate
    "latency_s": float,
    "latency_p50_s": float,  # this model's own lognormal latency (see latency.py)
    "latency_p99_s": float,
    "rpm": int,
}


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_percentiles(prefix: str, p50: float | None, p99: float | None) -> None:
    if p99 is not None and p50 is None:
        raise ValueError(f"{prefix}latency_p99_s needs {prefix}latency_p50_s (the median) as well")
    if p50 is not None and p99 is not None and p99 < p50:
        raise ValueError(f"{prefix}latency_p99_s ({p99}) must be >= {prefix}latency_p50_s ({p50})")


@dataclass(frozen=True)
class SimulatorConfig:
    latency_s: float = 0.0  # mean added latency of a successful answer
    latency_jitter_s: float = 0.0  # latency is uniform in latency_s +- jitter (never below 0)
    # Lognormal latency (a long tail, like real providers): median and 99th percentile. When latency_p50_s is
    # set it replaces latency_s/latency_jitter_s; latency_p99_s defaults to the median (no spread).
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    error_rate: float = 0.0  # fraction of requests answered 429 or 5xx (half each)
    rpm: int | None = None  # requests per minute per model (sliding 60 s window); None = unlimited
    seed: int = 0  # seeds the RNG behind injected errors, faults and jitter
    mini_error_rate: float = 0.05  # mini tier answers wrong (label/JSON); standard 1/5 of it; frontier never
    # Valid but wrong answers (a wrong label, a changed field) of the mini tier; standard 0.3x, frontier 0.1x,
    # each model x a stable factor in [0.7, 1.3] (simulator.quality). 0 turns the quality model off.
    wrong_answer_rate: float = 0.10
    faults: dict[str, float] = field(default_factory=dict)  # name -> rate, names in FAULTS
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> OVERRIDE_KEYS
    extra_models: dict[str, str] = field(default_factory=dict)  # model id -> tier, served on every API
    retry_after_s: float = 1.0  # the wait an injected 429 asks for
    storm_duration_s: float = 3.0  # length of one storm429 burst
    burst_duration_s: float = 2.0  # length of one burst5xx burst
    hang_max_s: float = 300.0  # a hung request is dropped after this long if the client is still waiting
    slow_body_s: float = 3.0  # how long a slow_body answer takes to trickle out
    cache_min_tokens: int = 1024  # OpenAI/Gemini prompt caching only applies at or above this prompt size
    anthropic_cache_min_tokens: int = 0  # Anthropic caches a cache_control prefix only from this size
    # --- discount-channels ---
    batch_turnaround_s: float = 1.0  # a batch's lines finish evenly over this long (0: at once; < 0: never)
    batch_fail_rate: float = 0.0  # share of batch lines that end in a server error
    batch_expiry_s: float = 86400.0  # an unfinished batch expires this long after creation (the 24h window)
    flex_unavailable: float = 0.0  # share of flex calls (service_tier "flex") answered 429 resource unavailable

    def __post_init__(self) -> None:
        for name in (
            "latency_s",
            "latency_jitter_s",
            "retry_after_s",
            "storm_duration_s",
            "burst_duration_s",
            "hang_max_s",
            "slow_body_s",
        ):
            object.__setattr__(self, name, _non_negative(name, getattr(self, name)))
        if isinstance(self.batch_turnaround_s, bool) or not isinstance(self.batch_turnaround_s, (int, float)):
            raise ValueError(f"batch_turnaround_s must be a number, got {self.batch_turnaround_s!r}")
        object.__setattr__(self, "batch_expiry_s", _non_negative("batch_expiry_s", self.batch_expiry_s))
        for name in ("batch_fail_rate", "flex_unavailable"):
            object.__setattr__(self, name, _rate(name, getattr(self, name)))
        for name in ("error_rate", "mini_error_rate", "wrong_answer_rate"):
            object.__setattr__(self, name, _rate(name, getattr(self, name)))
        for name in ("latency_p50_s", "latency_p99_s"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _non_negative(name, getattr(self, name)))
        _check_percentiles("", self.latency_p50_s, self.latency_p99_s)
        if self.rpm is not None and (isinstance(self.rpm, bool) or not isinstance(self.rpm, int) or self.rpm < 1):
            raise ValueError(f"rpm must be a positive integer or null, got {self.rpm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("cache_min_tokens", "anthropic_cache_min_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        object.__setattr__(self, "faults", self._check_faults(self.faults))
        object.__setattr__(self, "model_overrides", self._check_overrides(self.model_overrides))
        object.__setattr__(self, "extra_models", self._check_extra(self.extra_models))

    @staticmethod
    def _check_faults(faults: Any) -> dict[str, float]:
        if not isinstance(faults, dict):
            raise ValueError("faults must be an object of fault name -> rate")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        return {k: _rate(f"faults.{k}", v) for k, v in faults.items()}

    @staticmethod
    def _check_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(overrides, dict):
            raise ValueError("model_overrides must be an object of model -> settings")
        out: dict[str, dict[str, Any]] = {}
        for model, settings in overrides.items():
            if not isinstance(settings, dict):
                raise ValueError(f"model_overrides.{model} must be an object")
            unknown = set(settings) - set(OVERRIDE_KEYS)
            if unknown:
                raise ValueError(
                    f"model_overrides.{model}: unknown keys {sorted(unknown)}; known: {', '.join(OVERRIDE_KEYS)}"
                )
            checked: dict[str, Any] = {}
            for k, v in settings.items():
                if k == "rpm":
                    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                        raise ValueError(f"model_overrides.{model}.rpm must be a positive integer")
                    checked[k] = v
                elif k.startswith("latency_"):
                    checked[k] = _non_negative(f"model_overrides.{model}.{k}", v)
                else:
                    checked[k] = _rate(f"model_overrides.{model}.{k}", v)
            _check_percentiles(f"model_overrides.{model}.", checked.get("latency_p50_s"), checked.get("latency_p99_s"))
            out[str(model)] = checked
        return out

    @staticmethod
    def _check_extra(extra: Any) -> dict[str, str]:
        if not isinstance(extra, dict):
            raise ValueError("extra_models must be an object of model id -> tier")
        for model, tier in extra.items():
            if tier not in TIERS:
                raise ValueError(f"extra_models.{model}: tier must be one of {', '.join(TIERS)}, got {tier!r}")
        return dict(extra)

    def merged(self, changes: dict[str, Any]) -> "SimulatorConfig":
        """A new config with `changes` applied; fields not named keep their value. Raises ValueError."""
        if not isinstance(changes, dict):
            raise ValueError("config changes must be a JSON object")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimulatorConfig":
        return cls().merged(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, model: str, key: str, default: Any) -> Any:
        settings = self.model_overrides.get(model)
        if settings is not None and key in settings:
            return settings[key]
        return default
