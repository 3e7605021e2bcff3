"""What the engine does after a failed call: a pure function of (the error, the attempt state, the policy).
No I/O, no clock: the engine supplies how much time the task has left and acts on the Move.

- retry: the same model again, after `delay_s` of backoff;
- cooldown: the same model again after `delay_s`, shared with every worker (a 429: the rate limiter waits);
- fallback: the next candidate model (reroute errors, retries on this model used up, a wait past the deadline);
- escalate: the output failed validation: a higher tier;
- fail: the task ends failed (a fatal error, or invalid output with nowhere to escalate).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import backoff
from .config import RetryPolicy
from .errors import FatalError, ProviderError, RateLimitedError, RerouteError, RetryableError

RETRY, COOLDOWN, FALLBACK, ESCALATE, FAIL = "retry", "cooldown", "fallback", "escalate", "fail"


@dataclass(frozen=True)
class Move:
    kind: str
    delay_s: float = 0.0
    reason: str = ""


def after_error(
    e: ProviderError, *, n: int, policy: RetryPolicy, time_left_s: float, rng: random.Random | None = None
) -> Move:
    """The move after attempt `n` (0-based, on this model) failed with `e`."""
    if isinstance(e, RerouteError):
        return Move(FALLBACK, reason=e.message)
    if isinstance(e, FatalError):
        return Move(FAIL, reason=f"{e.error_class}: {e.message}")
    if isinstance(e, RateLimitedError):
        # Every worker holds this model for the hint; the next acquire() waits it out (within the deadline).
        return Move(COOLDOWN, e.retry_after if e.retry_after is not None else policy.base_delay_s * (2**n), e.message)
    if n + 1 >= policy.max_attempts_per_model:
        return Move(FALLBACK, reason=e.message)  # no sleep before the next candidate
    retry_after = e.retry_after if isinstance(e, RetryableError) else None
    delay = backoff.retry_delay(
        n, retry_after, base=policy.base_delay_s, cap=policy.max_delay_s, rng=rng or random.Random()
    )
    if delay > time_left_s:  # a provider's hint can exceed what the task has left
        return Move(FALLBACK, reason=f"{e.message} (asked to wait {delay:.0f}s, past the task deadline)")
    return Move(RETRY, delay, e.message)


def after_invalid_output(*, higher_tier_left: bool, escalation_enabled: bool) -> Move:
    if higher_tier_left and escalation_enabled:
        return Move(ESCALATE)
    return Move(FAIL, reason="no higher tier to escalate to" if escalation_enabled else "escalation disabled")
