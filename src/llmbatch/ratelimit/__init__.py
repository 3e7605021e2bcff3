"""Per provider/model RPM and TPM limits, paced evenly (GCRA), plus a shared cooldown after a 429.

    limiter = make_rate_limiter(settings, shared=True)
    await limiter.acquire("openai/gpt-4o-mini", estimated_tokens, deadline=time.time() + 60)
    ...call...
    await limiter.refund("openai/gpt-4o-mini", estimated_tokens - actual_tokens)
    on 429: await limiter.cooldown("openai/gpt-4o-mini", retry_after)

Shared mode keeps the state in Redis so every worker process on every machine draws from the
same budget; embedded mode keeps it in-process. Pacing arithmetic and the reasoning behind the
burst size live in `gcra.py`.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .base import RateLimiter, RateLimiterUnavailable
from .gcra import DEFAULT_BURST_S, DEFAULT_LATENCY_ALLOWANCE_S, Pacing
from .memory import InProcessRateLimiter

__all__ = [
    "DEFAULT_BURST_S",
    "DEFAULT_LATENCY_ALLOWANCE_S",
    "InProcessRateLimiter",
    "Pacing",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "make_rate_limiter",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def __getattr__(name: str):
    # redis.asyncio costs ~0.2 s to import, and an embedded run (in-process limits) never needs it.
    if name == "RedisRateLimiter":
        from .redis import RedisRateLimiter

        return RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_rate_limiter(settings: Settings, *, shared: bool) -> RateLimiter:
    """Redis-backed when `shared` and a Redis URL is configured; otherwise in-process."""
    url = settings.effective_redis_url
    if not shared or not url:
        return InProcessRateLimiter(settings.rate_limits)
    if not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(
            "shared rate limits need Redis, but the broker URL is not a redis:// URL; "
            "set LLMBATCH_REDIS_URL (or redis_url in llmbatch.toml) to a Redis server"
        )
    from .redis import RedisRateLimiter

    return RedisRateLimiter(url, settings.rate_limits)
