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
from dataclasses import dataclass, field
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
    # --- service ---
    service_files_dir: str = "llmbatch-files"  # `llmbatch serve` keeps uploaded and result files here
    service_parallel_jobs: int = 2  # batches the embedded service runs at once (the rest wait their turn)
    metrics_port: int | None = None  # `llmbatch worker` serves Prometheus /metrics on this port (unset: none)

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
        service_files_dir=pick("service_files_dir", "LLMBATCH_SERVICE_FILES_DIR", "llmbatch-files"),
        service_parallel_jobs=int(pick("service_parallel_jobs", "LLMBATCH_SERVICE_PARALLEL_JOBS", 2)),
        metrics_port=int(port) if (port := pick("metrics_port", "LLMBATCH_METRICS_PORT")) is not None else None,
    )
