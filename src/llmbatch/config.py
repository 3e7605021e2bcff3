"""Settings from the environment and an optional llmbatch.toml: one validated pydantic-settings model.
Every tunable number lives here with its default, written once.

Precedence: explicit arguments > environment (LLMBATCH_*) > llmbatch.toml > defaults below.
The TOML file is `$LLMBATCH_CONFIG` if set, else `./llmbatch.toml` if present.

Values are checked (types, ranges; money finite and >= 0); an unknown key is refused with the closest valid
name. Every problem is a ConfigError with one line that names the setting and where it came from.

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

import difflib
import os
import tomllib
from dataclasses import dataclass, fields
from functools import cached_property
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .env_names import ENV_PREFIX, TABLES, unknown_variable
from .errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///llmbatch.db"

PositiveInt = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Usd = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryPolicy(_Frozen):
    max_attempts_per_model: PositiveInt = 4  # tries on one model before falling back to the next candidate
    max_attempts_per_task: PositiveInt = 8  # all tries of one task, across models
    base_delay_s: Seconds = 0.5
    max_delay_s: Seconds = 30.0
    task_deadline_s: PositiveSeconds = 600.0  # no new attempt starts after this much time on one task
    call_timeout_s: PositiveSeconds = 120.0  # one HTTP call
    # Consecutive server-side failures (5xx, connect errors, timeouts, resets) of one provider, across tasks,
    # that pause calls to it (see breaker.py); 0 turns the breaker off.
    breaker_failures: Annotated[int, Field(ge=0)] = 5


class RateLimit(_Frozen):
    # Ranges are checked where limits are built (ratelimit.base), which names the key; load_settings checks too.
    rpm: int | None = None
    tpm: int | None = None


# --- hostile-input ---
@dataclass(frozen=True)
class InputLimits:
    """What one submitted line or spec may hold (README "Threat model"). Each error that enforces a limit names
    it. Each is also a top-level setting (llmbatch.toml or LLMBATCH_<NAME>, e.g. LLMBATCH_MAX_LINE_BYTES) whose
    default is the one written here; Settings.input_limits gathers them for ingest and validation."""

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


_LIMITS = InputLimits()


class Settings(BaseSettings):
    """The effective configuration. Construct it directly for a pure value (tests); load_settings() reads the
    environment and llmbatch.toml."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX, validate_default=False)

    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str | None = None
    simulator_url: str | None = None
    redis_url: str | None = None  # for shared rate limits; defaults to broker_url
    daily_cap_usd: Usd | None = None
    baseline_model: str = "gpt-4o"
    retry: RetryPolicy = RetryPolicy()
    rate_limits: dict[str, RateLimit] = {}
    providers: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    catalog_file: str | None = None  # extra catalog (e.g. from `llmbatch catalog import`)
    lease_seconds: PositiveSeconds = 300.0  # a claimed task is someone's for this long without a heartbeat
    chunk_size: PositiveInt = 50  # tasks per queue message
    max_units_per_dispatch: PositiveInt = 5000  # huge jobs get bigger units rather than more messages
    max_deliveries: PositiveInt = 5  # a task delivered this many times without finishing goes to failed (poison)
    concurrency: PositiveInt = 64  # calls in flight per process (embedded run and each worker)
    shutdown_grace_s: Seconds = (
        30.0  # a stopping run or worker's time to finish in-flight calls before handing them back
    )
    # --- hostile-input: the InputLimits, one setting each (defaults and meaning there) ---
    max_line_bytes: PositiveInt = _LIMITS.max_line_bytes
    max_labels_per_line: PositiveInt = _LIMITS.max_labels_per_line
    max_schema_bytes: PositiveInt = _LIMITS.max_schema_bytes
    max_schema_depth: PositiveInt = _LIMITS.max_schema_depth
    max_images_per_line: PositiveInt = _LIMITS.max_images_per_line
    max_image_bytes: PositiveInt = _LIMITS.max_image_bytes
    allow_http_images: bool = _LIMITS.allow_http_images
    allow_local_images: bool = _LIMITS.allow_local_images
    max_spec_bytes: PositiveInt = _LIMITS.max_spec_bytes
    max_spec_nodes: PositiveInt = _LIMITS.max_spec_nodes
    schema_validation_timeout_s: PositiveSeconds = _LIMITS.schema_validation_timeout_s
    # --- fast-recovery ---
    # A worker's presence record lapses this long after its last renewal (renewed 4x per TTL); then live
    # workers hand its tasks to others. Shorter: faster recovery, more false alarms on a stalled loop.
    presence_ttl_s: PositiveSeconds = 10.0
    sweep_interval_s: PositiveSeconds = 2.0  # how often each worker looks for lapsed workers (one cheap query)
    # --- never-pay-twice (cache) ---
    cache_ttl_s: PositiveSeconds = 30 * 86400.0  # a cached answer older than this is a miss (models and prompts drift)
    cache_max_entries: PositiveInt = 1_000_000  # response-cache size bound; over it the oldest go, down to 90 %
    prompt_cache_scheduling: bool = True  # shared long prefixes: one warm-up call first, Anthropic breakpoints
    # --- discount-channels ---
    batch_turnaround_s: PositiveSeconds = (
        86400.0  # a provider batch is assumed to take its completion window until measured
    )
    batch_linger_s: Seconds = 2.0  # batch-bound tasks gather this long (since the last arrival) before a batch is sent
    batch_poll_s: PositiveSeconds = 5.0  # first poll of a provider batch after this long; the wait doubles ...
    batch_poll_max_s: PositiveSeconds = 300.0  # ... up to this (polling never hammers the provider)
    # cancel unfinished batches this long before the deadline (None: a quarter of it, at most 1 h)
    batch_fallback_s: PositiveSeconds | None = None
    flex_timeout_s: PositiveSeconds = 900.0  # one flex call may queue this long (OpenAI advises up to 15 min)
    # --- service ---
    service_files_dir: str = "llmbatch-files"  # `llmbatch serve` keeps uploaded and result files here
    service_parallel_jobs: PositiveInt = 2  # batches the embedded service runs at once (the rest wait their turn)
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None  # `llmbatch worker` serves /metrics here
    # Provider calls go out on llmbatch's lean HTTP/1.1 client (providers/wire.py: ~0.1 ms CPU per call against
    # aiohttp's ~0.33); "aiohttp" sends them through aiohttp's client instead, should a server need it.
    http_client: Literal["lean", "aiohttp"] = "lean"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # A direct Settings(...) is a pure value; load_settings() adds the environment and the file itself.
        return (init_settings,)

    @field_validator("database_url", "broker_url", "redis_url", "simulator_url")
    @classmethod
    def _url(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            return None if info.field_name != "database_url" else DEFAULT_DATABASE_URL
        if "://" not in v:
            raise ValueError(
                "not a URL (expected e.g. "
                + {
                    "database_url": "sqlite:///llmbatch.db or postgresql://user@host/db",
                    "simulator_url": "http://127.0.0.1:8765",
                }.get(info.field_name, "redis://localhost:6379/0")
                + ")"
            )
        return v

    @field_validator("rate_limits")
    @classmethod
    def _limits(cls, v: dict[str, RateLimit]) -> dict[str, RateLimit]:
        for name, rl in v.items():
            for k in ("rpm", "tpm"):
                n = getattr(rl, k)
                if n is not None and n < 1:
                    raise ValueError(f'"{name}".{k} must be >= 1 (got {n}); omit it for no limit')
        return v

    @property
    def effective_redis_url(self) -> str | None:
        return self.redis_url or self.broker_url

    @cached_property
    def input_limits(self) -> InputLimits:
        return InputLimits(**{f.name: getattr(self, f.name) for f in fields(InputLimits)})


def config_file() -> Path | None:
    env = os.environ.get("LLMBATCH_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"LLMBATCH_CONFIG points to {env}, which is not a file")
        return p
    p = Path("llmbatch.toml")
    return p if p.is_file() else None


# Top-level settings that may come from the environment (LLMBATCH_<NAME>); the tables come from the file only.
_SCALARS = tuple(n for n in Settings.model_fields if n not in TABLES)


def _closest(name: str, valid) -> str:
    m = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {m[0]!r}?)" if m else f"; valid keys: {', '.join(sorted(valid))}"


def _unknown_keys(data: dict[str, Any], where: str) -> None:
    top = set(Settings.model_fields)
    for key in data:
        if key not in top:
            raise ConfigError(f"{where}: unknown key {key!r}{_closest(key, top)}")
    retry = data.get("retry")
    if isinstance(retry, dict):
        for key in retry:
            if key not in RetryPolicy.model_fields:
                raise ConfigError(f"{where}: unknown key [retry].{key}{_closest(key, RetryPolicy.model_fields)}")
    for name, rl in (data.get("rate_limits") or {}).items():
        if isinstance(rl, dict):
            for key in rl:
                if key not in RateLimit.model_fields:
                    raise ConfigError(
                        f'{where}: unknown key [rate_limits."{name}"].{key}{_closest(key, RateLimit.model_fields)}'
                    )


def load_settings(**overrides: Any) -> Settings:
    """The settings for this process: arguments (None = not given) > LLMBATCH_* > llmbatch.toml > defaults."""
    path = config_file()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
        _unknown_keys(data, str(path))
    source: dict[str, str] = {k: f"{path}: {k}" for k in data}
    unknown = unknown_variable(os.environ, _SCALARS)
    if unknown is not None:
        raise ConfigError(unknown)
    merged = dict(data)
    for name in _SCALARS:
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None and value.strip() != "":
            merged[name] = value
            source[name] = ENV_PREFIX + name.upper()
    for name, value in overrides.items():
        if value is not None:
            if name not in Settings.model_fields:
                raise ConfigError(f"unknown setting {name!r}{_closest(name, Settings.model_fields)}")
            merged[name] = value
            source[name] = f"--{name.replace('_', '-')}"
    try:
        return Settings(**merged)
    except ValidationError as e:
        raise ConfigError(describe_error(e, source)) from None


def describe_error(e: ValidationError, source: dict[str, str] | None = None) -> str:
    """One line for the first problem: where the value came from, what is wrong, what was given."""
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"]]
    top = loc[0] if loc else "settings"
    where = (source or {}).get(top, top)
    if len(loc) > 1:
        where += "." + ".".join(loc[1:])
    msg = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{where}: {msg}{shown}"
