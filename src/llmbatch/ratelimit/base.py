"""The RateLimiter seam and the waiting discipline both backends share.

Waiting discipline: per key, one coroutine at a time (the head of a FIFO queue) asks the backend
whether its request fits; the backend answers "granted" or "wait N seconds". The head sleeps that
long (never spins) and asks again; everyone else queues behind it on an asyncio.Lock, which hands
over in FIFO order. So 200 coroutines waiting on one key cost one backend call per grant or
wake-up, not 200, and a large request at the head is never starved by small ones behind it.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from typing import Callable, Mapping

from ..backoff import compute_backoff
from ..config import RateLimit
from ..errors import ConfigError, LLMBatchError
from .gcra import DEFAULT_BURST_S, DEFAULT_LATENCY_ALLOWANCE_S, DEFAULT_TOKEN_BURST, KeyPacing, Pacing

# While the shared store is unreachable, acquire retries with this backoff (seconds) until its deadline.
OUTAGE_BACKOFF_BASE_S = 0.1
OUTAGE_BACKOFF_CAP_S = 5.0


class RateLimiterUnavailable(LLMBatchError, TimeoutError):
    """The shared rate-limit store (Redis) stayed unreachable until the caller's deadline.

    A TimeoutError too, so a caller that handles "no slot before the deadline" handles this the same way.
    """


def build_pacing(
    limits: Mapping[str, RateLimit],
    *,
    burst_s: float = DEFAULT_BURST_S,
    latency_allowance_s: float = DEFAULT_LATENCY_ALLOWANCE_S,
    token_burst: int = DEFAULT_TOKEN_BURST,
) -> dict[str, KeyPacing]:
    """Validate the configured limits; keys with neither RPM nor TPM are left out (unlimited)."""
    out: dict[str, KeyPacing] = {}
    for key, rl in limits.items():
        dims: dict[str, Pacing | None] = {}
        for name, value in (("rpm", rl.rpm), ("tpm", rl.tpm)):
            if value is None:
                dims[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f'rate_limits."{key}".{name} = {value!r}: must be a positive integer per minute '
                    f"(remove it for no {name.upper()} limit)"
                )
            dims[name] = Pacing.per_minute(
                value,
                burst_s=burst_s,
                latency_allowance_s=latency_allowance_s,
                min_burst=token_burst if name == "tpm" else 1,
            )
        if dims["rpm"] or dims["tpm"]:
            out[key] = KeyPacing(requests=dims["rpm"], tokens=dims["tpm"])
    return out


class RateLimiter(abc.ABC):
    """Per "provider/model" RPM and TPM limits plus a shared cooldown after a 429."""

    # Fraction of each wait added at random, capped, so waiters in different processes that were
    # told the same slot do not all hit the store in the same millisecond.
    _jitter_fraction = 0.0
    _jitter_cap_s = 0.0

    def __init__(self, pacing: dict[str, KeyPacing], *, wall_clock: Callable[[], float] = time.time) -> None:
        self._pacing = pacing
        self._wall = wall_clock
        self._gates: dict[str, asyncio.Lock] = {}

    async def acquire(self, key: str, tokens: int, *, deadline: float | None = None) -> None:
        """Wait until one request and `tokens` tokens fit under the key's limits, then take them.

        `deadline` is epoch seconds; raises asyncio.TimeoutError as soon as it is clear the slot comes
        later (it does not sleep until the deadline first)."""
        remaining = None if deadline is None else deadline - self._wall()
        if remaining is not None and remaining <= 0:
            raise asyncio.TimeoutError(f"rate limit {key}: deadline already passed")
        pacing = self._pacing.get(key)
        if pacing is None and self._clear_now(key):
            return  # unlimited and, as far as this process knows, not cooling down: the common case, no wait set up
        async with asyncio.timeout(remaining):
            if pacing is None:
                await self._wait_cooldown_only(key, deadline)
                return
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = asyncio.Lock()
            async with gate:
                await self._acquire_as_head(key, pacing, tokens, deadline)

    async def _acquire_as_head(self, key: str, pacing: KeyPacing, tokens: int, deadline: float | None) -> None:
        outages = 0
        while True:
            try:
                wait = await self._try_acquire(key, pacing, tokens)
                outages = 0
            except RateLimiterUnavailable:
                wait = max(
                    OUTAGE_BACKOFF_BASE_S,
                    compute_backoff(outages, base=OUTAGE_BACKOFF_BASE_S, cap=OUTAGE_BACKOFF_CAP_S),
                )
                outages += 1
                if deadline is not None and self._wall() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
                continue
            if wait <= 0:
                return
            if deadline is not None and self._wall() + wait > deadline:
                raise asyncio.TimeoutError(f"rate limit {key}: next slot in {wait:.2f}s is after the deadline")
            await asyncio.sleep(wait + self._jitter(wait))

    def _jitter(self, wait: float) -> float:
        if not self._jitter_fraction:
            return 0.0
        return random.uniform(0.0, min(self._jitter_cap_s, wait * self._jitter_fraction))

    async def _wait_cooldown_only(self, key: str, deadline: float | None) -> None:
        """Unlimited keys: no pacing, but a cooldown after a 429 still holds calls back."""
        while (left := await self.cooldown_remaining(key)) > 0:
            if deadline is not None and self._wall() + left > deadline:
                raise asyncio.TimeoutError(f"rate limit {key}: cooling down for {left:.2f}s, past the deadline")
            await asyncio.sleep(left + self._jitter(left))

    def _clear_now(self, key: str) -> bool:
        """True when this process's current view says `key` has no cooldown (no I/O); False when unsure."""
        return False

    @abc.abstractmethod
    async def _try_acquire(self, key: str, pacing: KeyPacing, tokens: int) -> float:
        """Take one request and `tokens` tokens if both fit (and the key is not cooling down): return 0.
        Otherwise take nothing and return the seconds to wait. Raise RateLimiterUnavailable if the store is down."""

    @abc.abstractmethod
    async def refund(self, key: str, tokens: int) -> None:
        """Give back tokens reserved but not used (the estimate was high). Requests are never refunded."""

    @abc.abstractmethod
    async def cooldown(self, key: str, seconds: float) -> None:
        """After a 429: hold every call to `key`, in every worker, until now + seconds (or a later existing cooldown)."""

    @abc.abstractmethod
    async def cooldown_remaining(self, key: str) -> float:
        """Seconds of cooldown left on `key` (0 when none), from this process's view: cheap enough to ask
        before every call, so a shared store is not asked each time."""

    async def close(self) -> None:
        return None
