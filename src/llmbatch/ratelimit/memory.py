"""In-process limiter for embedded mode: the same pacing as the Redis one, state in a dict.

All state changes happen between awaits on one event loop, so check-and-consume is atomic
without a lock of its own.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from ..config import RateLimit
from .base import RateLimiter, build_pacing
from .gcra import KeyPacing

_IDLE = float("-inf")


class InProcessRateLimiter(RateLimiter):
    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(build_pacing(limits), wall_clock=wall_clock)
        self._clock = clock
        # A key never seen is idle since forever (-inf), like a missing key in Redis; that matters
        # for a request costing more than the burst, which needs the bucket idle for a while.
        self._tat_requests: dict[str, float] = {}
        self._tat_tokens: dict[str, float] = {}
        self._cool_until: dict[str, float] = {}

    async def _try_acquire(self, key: str, pacing: KeyPacing, tokens: int) -> float:
        now = self._clock()
        wait = max(0.0, self._cool_until.get(key, now) - now)
        req, tok = pacing.requests, pacing.tokens
        tat_req = self._tat_requests.get(key, _IDLE)
        tat_tok = self._tat_tokens.get(key, _IDLE)
        if req is not None:
            wait = max(wait, req.wait(tat_req, now, 1))
        if tok is not None:
            wait = max(wait, tok.wait(tat_tok, now, tokens))
        if wait > 0:
            return wait  # neither dimension consumed
        if req is not None:
            self._tat_requests[key] = req.consume(tat_req, now, 1)
        if tok is not None and tok.cost(tokens) > 0:
            self._tat_tokens[key] = tok.consume(tat_tok, now, tokens)
        return 0.0

    async def refund(self, key: str, tokens: int) -> None:
        pacing = self._pacing.get(key)
        if pacing is None or pacing.tokens is None or tokens <= 0 or key not in self._tat_tokens:
            return
        now = self._clock()
        self._tat_tokens[key] = pacing.tokens.refund(self._tat_tokens[key], now, tokens)

    async def cooldown(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._cool_until[key] = max(self._cool_until.get(key, until), until)

    def _clear_now(self, key: str) -> bool:
        until = self._cool_until.get(key)
        return until is None or until <= self._clock()

    async def cooldown_remaining(self, key: str) -> float:
        until = self._cool_until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._cool_until[key]
            return 0.0
        return left
