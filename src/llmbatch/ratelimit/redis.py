"""Shared limiter: GCRA state in Redis, checked and consumed by one Lua script per attempt.

Time comes from the Redis server (TIME inside the scripts), never from worker clocks, which
drift between machines. Redis 7 replicates script effects, so TIME in a writing script is fine.

Keys, per "provider/model" (the braces keep all three in one Redis Cluster slot):
    {prefix}{provider/model}:req    TAT for requests, microseconds of server time
    {prefix}{provider/model}:tok    TAT for tokens
    {prefix}{provider/model}:cool   cooldown end, microseconds; expires at that instant
A TAT key expires IDLE_TTL_MS after its bucket is full again: a missing key and an idle one
mean the same thing, so idle limits leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Mapping

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ..config import RateLimit
from .base import RateLimiter, RateLimiterUnavailable, build_pacing
from .gcra import WINDOW_S, KeyPacing, Pacing

log = logging.getLogger(__name__)

# An oversized request needs to know how long its bucket has been idle (see gcra.py), up to one
# window; keeping the key a window past "full" preserves that.
IDLE_TTL_MS = int(WINDOW_S * 1000)
COOLDOWN_POLL_S = 1.0  # how stale this process's view of another worker's cooldown may be
MAX_CONNECTIONS = 32  # waiters are coalesced per key, so a few connections serve hundreds of calls
OUTAGE_LOG_EVERY_S = 30.0

_UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)

# KEYS: req, tok, cool.  ARGV: req interval us (0 = unlimited), req burst, tok interval us, tok burst,
# tokens, idle ttl ms.  Returns {wait_us, cooldown_us}; wait_us 0 means granted and consumed.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local idle_ttl = tonumber(ARGV[6])
local wait, cool = 0, 0
local cool_until = tonumber(redis.call('GET', KEYS[3]) or '0')
if cool_until > now then
  cool = cool_until - now
  wait = cool
end
local interval = {tonumber(ARGV[1]), tonumber(ARGV[3])}
local burst = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local cost = {1, tonumber(ARGV[5])}
local tat = {}
for i = 1, 2 do
  if interval[i] > 0 and cost[i] > 0 then
    tat[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
    local w = tat[i] + (cost[i] - burst[i]) * interval[i] - now
    if w > wait then wait = w end
  end
end
if wait > 0 then
  return {math.ceil(wait), math.ceil(cool)}
end
for i = 1, 2 do
  if tat[i] then
    local new = math.ceil(math.max(tat[i], now) + cost[i] * interval[i])
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + idle_ttl)
  end
end
return {0, 0}
"""

# KEYS: tok.  ARGV: tok interval us, tokens, idle ttl ms.
REFUND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat <= now then return 0 end
local new = math.ceil(math.max(tat - tonumber(ARGV[2]) * tonumber(ARGV[1]), now))
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + tonumber(ARGV[3]))
return 1
"""

# KEYS: cool.  ARGV: seconds in us.  Keeps the later of the existing and the new end; returns us left.
COOLDOWN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur >= new then return math.ceil(cur - now) end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PXAT', string.format('%.0f', math.ceil(new / 1000)))
return math.ceil(new - now)
"""


@dataclass
class _CooldownView:
    until: float  # time.monotonic()
    fetched: float


def _us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


def _dim_args(p: Pacing | None) -> tuple[float, int]:
    return (p.interval * 1_000_000, p.burst) if p is not None else (0, 0)


class RedisRateLimiter(RateLimiter):
    _jitter_fraction = 0.1
    _jitter_cap_s = 0.02

    def __init__(
        self,
        redis_url: str,
        limits: Mapping[str, RateLimit],
        *,
        prefix: str = "llmbatch:rl:",
    ) -> None:
        super().__init__(build_pacing(limits))
        self._prefix = prefix
        self._pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=MAX_CONNECTIONS, timeout=10, socket_timeout=5, socket_connect_timeout=5
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        # AsyncScript: EVALSHA, and on NoScriptError (SCRIPT FLUSH, failover) it reloads once and retries.
        self._acquire_script = self._redis.register_script(ACQUIRE_LUA)
        self._refund_script = self._redis.register_script(REFUND_LUA)
        self._cooldown_script = self._redis.register_script(COOLDOWN_LUA)
        self._where = self._describe(self._pool)
        self._cool: dict[str, _CooldownView] = {}
        self._cool_refreshing: set[str] = set()
        self._pending_refunds: dict[str, int] = {}
        self._refund_gates: dict[str, asyncio.Lock] = {}
        self._last_outage_log = -math.inf

    @staticmethod
    def _describe(pool: aioredis.ConnectionPool) -> str:
        """Where Redis is, for log lines; never the URL itself, which may carry a password."""
        kw = pool.connection_kwargs
        if kw.get("path"):
            return f"unix:{kw['path']}"
        return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}{{{key}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:cool"]

    def _outage(self, op: str, key: str, exc: BaseException) -> RateLimiterUnavailable:
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_EVERY_S:
            self._last_outage_log = now
            log.warning(
                "rate limiter: Redis at %s unreachable during %s for %s (%s: %s); calls wait and retry until "
                "their deadline. Check that Redis is up and LLMBATCH_REDIS_URL / LLMBATCH_BROKER_URL point to it.",
                self._where,
                op,
                key,
                type(exc).__name__,
                exc,
            )
        return RateLimiterUnavailable(
            f"rate limiter: Redis at {self._where} unreachable ({type(exc).__name__}); "
            f"could not take a slot for {key} before the deadline"
        )

    def _note_cooldown(self, key: str, seconds: float) -> None:
        now = time.monotonic()
        self._cool[key] = _CooldownView(until=now + max(0.0, seconds), fetched=now)

    async def _try_acquire(self, key: str, pacing: KeyPacing, tokens: int) -> float:
        req_interval, req_burst = _dim_args(pacing.requests)
        tok_interval, tok_burst = _dim_args(pacing.tokens)
        cost = pacing.tokens.cost(tokens) if pacing.tokens is not None else 0
        try:
            wait_us, cool_us = await self._acquire_script(
                keys=self._keys(key),
                args=[req_interval, req_burst, tok_interval, tok_burst, cost, IDLE_TTL_MS],
            )
        except _UNAVAILABLE as e:
            raise self._outage("acquire", key, e) from e
        self._note_cooldown(key, int(cool_us) / 1_000_000)
        return int(wait_us) / 1_000_000

    def _clear_now(self, key: str) -> bool:
        view = self._cool.get(key)
        now = time.monotonic()
        return view is not None and now - view.fetched < COOLDOWN_POLL_S and view.until <= now

    async def cooldown_remaining(self, key: str) -> float:
        """This process's view of the key's cooldown, refreshed from Redis at most every COOLDOWN_POLL_S:
        not a round trip per call."""
        view = self._cool.get(key)
        now = time.monotonic()
        stale = view is None or now - view.fetched >= COOLDOWN_POLL_S
        # One coroutine refreshes; the others go on with the view they have rather than queue on Redis.
        if stale and key not in self._cool_refreshing:
            self._cool_refreshing.add(key)
            try:
                pttl = await self._redis.pttl(self._keys(key)[2])
                self._note_cooldown(key, max(0, int(pttl)) / 1000)
            except _UNAVAILABLE as e:
                self._outage("cooldown check", key, e)
            finally:
                self._cool_refreshing.discard(key)
            view = self._cool.get(key)
        return max(0.0, view.until - time.monotonic()) if view is not None else 0.0

    async def cooldown(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        view = self._cool.get(key)
        local_until = time.monotonic() + seconds
        if view is None or view.until < local_until:
            self._note_cooldown(key, seconds)  # this process holds back at once, even if Redis is down
        try:
            left_us = await self._cooldown_script(keys=[self._keys(key)[2]], args=[_us(seconds)])
        except _UNAVAILABLE as e:
            self._outage("cooldown", key, e)
            return
        self._note_cooldown(key, int(left_us) / 1_000_000)

    async def refund(self, key: str, tokens: int) -> None:
        pacing = self._pacing.get(key)
        if pacing is None or pacing.tokens is None or tokens <= 0:
            return
        # Refunds pile up while one is in flight; the next holder of the gate sends them in one call.
        self._pending_refunds[key] = self._pending_refunds.get(key, 0) + int(tokens)
        gate = self._refund_gates.setdefault(key, asyncio.Lock())
        async with gate:
            amount = self._pending_refunds.pop(key, 0)
            if not amount:
                return
            try:
                await self._refund_script(
                    keys=[self._keys(key)[1]],
                    args=[pacing.tokens.interval * 1_000_000, pacing.tokens.cost(amount), IDLE_TTL_MS],
                )
            except _UNAVAILABLE as e:
                self._outage("refund", key, e)  # a lost refund only makes us slightly conservative

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()
