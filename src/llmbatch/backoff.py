"""Pure retry timing: exponential backoff with full jitter, and the provider's own wait hints.

Exactly one layer retries (the engine); adapters never do.
"""

from __future__ import annotations

import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def compute_backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]. attempt counts from 0."""
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2 ** min(attempt, 32))))


def parse_duration(value: str) -> float | None:
    """'1s', '6m0s', '20ms', '1h2m3.5s' or a bare number of seconds -> seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            return None
        n, unit = float(m.group(1)), m.group(2)
        total += n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]
        pos = m.end()
    return total if pos == len(value) and pos > 0 else None


def parse_retry_after(
    headers: Mapping[str, str], *, now: float | None = None, quota_resets: bool = True
) -> float | None:
    """Seconds the provider asks us to wait, from retry-after-ms, retry-after (seconds or HTTP date),
    or (with `quota_resets`) the x-ratelimit-reset-* headers. None when the response gives no hint."""
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in h:
        v = h["retry-after"].strip()
        try:
            return max(0.0, float(v))
        except ValueError:
            try:
                when = parsedate_to_datetime(v).timestamp()
                return max(0.0, when - (now if now is not None else time.time()))
            except (TypeError, ValueError):
                pass
    if not quota_resets:
        return None
    parsed = [parse_duration(h[k]) for k in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if k in h]
    resets = [r for r in parsed if r is not None]
    if resets:
        return max(resets)
    return None


def retry_delay(
    attempt: int, hint: float | None, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """The provider's hint wins when given (plus a little jitter so workers do not stampede); else backoff."""
    if hint is not None:
        r = rng or random
        return min(max(hint, 0.0) + r.uniform(0.0, min(1.0, base)), max(cap, hint))
    return compute_backoff(attempt, base=base, cap=cap, rng=rng)
