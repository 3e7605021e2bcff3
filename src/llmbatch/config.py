"""Settings from the environment and an optional llmbatch.toml. Every tunable number lives here with its default.

Precedence: explicit arguments > environment (LLMBATCH_*) > llmbatch.toml > defaults below.
The TOML file is `$LLMBATCH_CONFIG` if set, else `./llmbatch.toml` if present.

    database_url = "postgresql+psycopg://..."
    broker_url = "redis://localhost:6379/0"
    daily_cap_usd = "250"            # global cap across all jobs, per UTC day
    baseline_model = "gpt-4o"

    [retry]
    max_attempts_per_model = 4
    max_attempts_per_task = 8
    base_delay_s = 0.5
    max_delay_s = 30
    task_deadline_s = 600

    [rate_limits."openai/gpt-4o-mini"]
    rpm = 5000
    tpm = 2000000

    [providers.vllm]                 # any OpenAI-compatible endpoint
    api = "openai"
    base_url = "http://gpu-box:8000/v1"
    key_env = "VLLM_API_KEY"

    [models."vllm/llama-3.1-70b"]    # add or override catalog entries
    api = "openai"
    tier = "standard"
    input_per_mtok = "0.20"
    output_per_mtok = "0.20"
    context_window = 131072
    max_output_tokens = 8192
    capabilities = ["system_role", "temperature"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///llmbatch.db"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts_per_model: int = 4  # tries on one model before falling back to the next candidate
    max_attempts_per_task: int = 8  # all tries of one task, across models
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    task_deadline_s: float = 600.0  # no new attempt starts after this much time on one task
    call_timeout_s: float = 120.0  # one HTTP call
    # Consecutive server-side failures (5xx, connect errors, timeouts, resets) of one provider, across tasks,
    # that pause calls to it (see breaker.py); 0 turns the breaker off.
    breaker_failures: int = 5


@dataclass(frozen=True)
class RateLimit:
    rpm: int | None = None
    tpm: int | None = None


# --- hostile-input ---
@dataclass(frozen=True)
class InputLimits:
    """What one submitted line or spec may hold (README "Threat model"). Each error that enforces a limit names it.
    Read from the top level of llmbatch.toml or from LLMBATCH_<NAME> (e.g. LLMBATCH_MAX_LINE_BYTES)."""

    max_line_bytes: int = 8 << 20  # one JSONL line; a longer one is measured and skipped, never held in memory
    max_labels_per_line: int = 1000  # a classify label set: every label goes into every prompt
    max_schema_bytes: int = 64 << 10  # an extract schema, as JSON: it is sent with every call and compiled
    max_schema_depth: int = 32  # nesting levels of an extract schema: deeper ones cost recursion in the validator
    max_images_per_line: int = 16  # images in one line (input images plus message parts)
    max_image_bytes: int = 20 << 20  # one data: URL image, decoded (providers refuse larger ones anyway)
    allow_http_images: bool = False  # remote images must be https unless this is true
    # file: URLs and loopback, private, link-local or reserved hosts: only a local model server could use them
    allow_local_images: bool = False
    max_spec_bytes: int = 1 << 20  # a --spec or --schema file; reading stops at this many bytes
    max_spec_nodes: int = 100_000  # YAML nodes of a spec after alias expansion (defuses alias bombs)
    schema_validation_timeout_s: float = 2.0  # checking one output against its schema (regex patterns included)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str | None = None
    simulator_url: str | None = None
    redis_url: str | None = None  # for shared rate limits; defaults to broker_url
    daily_cap_usd: Decimal | None = None
    baseline_model: str = "gpt-4o"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    catalog_file: str | None = None  # extra catalog (e.g. from `llmbatch catalog import`)
    lease_seconds: float = 300.0  # a claimed task is someone's for this long without a heartbeat
    chunk_size: int = 50  # tasks per queue message
    max_units_per_dispatch: int = 5000  # huge jobs get bigger units rather than more messages
    max_deliveries: int = 5  # a task delivered this many times without finishing goes to failed (poison)
    concurrency: int = 64  # calls in flight per process
    shutdown_grace_s: float = 30.0  # a stopping worker's time to finish in-flight units before handing them back
    # --- hostile-input ---
    input_limits: InputLimits = field(default_factory=InputLimits)  # see InputLimits

    @property
    def effective_redis_url(self) -> str | None:
        return self.redis_url or self.broker_url


def _find_config_file() -> Path | None:
    env = os.environ.get("LLMBATCH_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"LLMBATCH_CONFIG points to {env}, which is not a file")
        return p
    p = Path("llmbatch.toml")
    return p if p.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    path = _find_config_file()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    env = os.environ

    def pick(key: str, env_key: str, default=None):
        if overrides.get(key) is not None:
            return overrides[key]
        if env.get(env_key):
            return env[env_key]
        return data.get(key, default)

    try:
        retry = RetryPolicy(**data.get("retry", {}))
    except TypeError as e:
        raise ConfigError(f"{path}: [retry]: {e}") from None
    rate_limits = {}
    for name, rl in data.get("rate_limits", {}).items():
        try:
            rate_limits[name] = RateLimit(**rl)
        except TypeError as e:
            raise ConfigError(f"{path}: [rate_limits.\"{name}\"]: {e}") from None
    cap = pick("daily_cap_usd", "LLMBATCH_DAILY_CAP_USD")
    # --- hostile-input ---
    input_limits = _input_limits(pick, path)
    return Settings(
        database_url=pick("database_url", "LLMBATCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        broker_url=pick("broker_url", "LLMBATCH_BROKER_URL"),
        simulator_url=pick("simulator_url", "LLMBATCH_SIMULATOR_URL"),
        redis_url=pick("redis_url", "LLMBATCH_REDIS_URL"),
        daily_cap_usd=Decimal(str(cap)) if cap is not None else None,
        baseline_model=pick("baseline_model", "LLMBATCH_BASELINE_MODEL", "gpt-4o"),
        retry=retry,
        rate_limits=rate_limits,
        providers=data.get("providers", {}),
        models=data.get("models", {}),
        catalog_file=pick("catalog_file", "LLMBATCH_CATALOG_FILE"),
        lease_seconds=float(pick("lease_seconds", "LLMBATCH_LEASE_SECONDS", 300.0)),
        chunk_size=int(pick("chunk_size", "LLMBATCH_CHUNK_SIZE", 50)),
        max_units_per_dispatch=int(pick("max_units_per_dispatch", "LLMBATCH_MAX_UNITS_PER_DISPATCH", 5000)),
        max_deliveries=int(pick("max_deliveries", "LLMBATCH_MAX_DELIVERIES", 5)),
        concurrency=int(pick("concurrency", "LLMBATCH_CONCURRENCY", 64)),
        shutdown_grace_s=float(pick("shutdown_grace_s", "LLMBATCH_SHUTDOWN_GRACE_S", 30.0)),
        input_limits=input_limits,
    )


# --- hostile-input ---
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _input_limits(pick, path: Path | None) -> InputLimits:
    values: dict[str, Any] = {}
    for f in fields(InputLimits):
        raw = pick(f.name, f"LLMBATCH_{f.name.upper()}", f.default)
        try:
            if f.type == "bool":
                value = raw if isinstance(raw, bool) else _BOOLS[str(raw).strip().lower()]
            elif f.type == "int":
                value = int(raw)
            else:
                value = float(raw)
        except (TypeError, ValueError, KeyError):
            wanted = "true or false" if f.type == "bool" else "a number"
            raise ConfigError(f"{f.name} (LLMBATCH_{f.name.upper()} or {path or 'llmbatch.toml'}): "
                              f"expected {wanted}, got {raw!r}") from None
        if not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"{f.name} must be positive, got {raw!r}")
        values[f.name] = value
    return InputLimits(**values)
