"""Channels: how a task's call reaches the provider, and which one a task takes. Pure: no I/O.

- online: an ordinary synchronous call, list price.
- flex: a synchronous call at OpenAI's flex tier (`service_tier: "flex"`): batch rates, slower, may answer
  429 resource unavailable (not billed). Models that offer it say so with the catalog quirk `"flex": true`.
- batch: the provider's batch API (OpenAI, Anthropic, Gemini): the catalog's `batch_discount` of list price,
  results within the completion window (24 h).
- cache: an identical earlier answer (the cache helper's channel; recorded, never chosen here).

`--channel auto` (the default) picks per task the cheapest channel whose expected turnaround fits the job's
deadline; no deadline means as soon as possible, which is online. Attempts recorded before channels existed
say "sync": that is online.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from .catalog import ModelInfo

ONLINE, FLEX, BATCH, CACHE = "online", "flex", "batch", "cache"
CHANNELS = (ONLINE, FLEX, BATCH, CACHE)
CHOICES = ("auto", ONLINE, FLEX, BATCH)  # what --channel accepts
BATCH_APIS = frozenset({"openai", "anthropic", "gemini"})
_LEGACY = {"sync": ONLINE}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> float:
    """'90s', '30m', '24h', '2d' or a number of seconds -> seconds. ValueError with the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a deadline must be positive, got {text}")
        return float(text)
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r}; use a number with s, m, h or d (90s, 30m, 24h)")
    return float(m.group(1)) * _UNIT[(m.group(2) or "s").lower()]


def canonical(channel: str | None) -> str:
    """The channel a ledger row means ("sync", from before channels, is online)."""
    return _LEGACY.get(channel or ONLINE, channel or ONLINE)


def supports(model: ModelInfo, channel: str) -> bool:
    if channel == ONLINE:
        return True
    if channel == BATCH:
        return model.batch_discount is not None and model.api in BATCH_APIS
    if channel == FLEX:
        return bool(model.quirks.get("flex")) and model.api == "openai"
    return False


def discount(model: ModelInfo, channel: str) -> Decimal:
    """The share of list price a channel bills (flex bills batch rates; Groq's flex is list price)."""
    if channel in (BATCH, FLEX) and model.batch_discount is not None:
        return model.batch_discount
    return Decimal(1)


@dataclass(frozen=True)
class Timing:
    """What the chooser knows about time, in seconds."""

    deadline_span_s: float | None  # the job's deadline, counted from its creation; None = as soon as possible
    remaining_s: float | None  # time left until the deadline
    batch_turnaround_s: float  # measured (or, until measured, assumed = the completion window)
    flex_turnaround_s: float  # how long flex work is expected to take
    fallback_s: float  # time kept in reserve before the deadline to finish online


def choose(requested: str, model: ModelInfo, timing: Timing) -> str:
    """The channel for one task whose cheapest model is `model`. An explicit channel the model does not
    offer becomes online; `auto` takes the cheapest channel that fits the deadline, batch before flex at
    equal price (no per-call rate limits)."""
    if requested == ONLINE or requested not in CHOICES:
        return ONLINE
    if requested in (BATCH, FLEX):
        ok = supports(model, requested) and (timing.remaining_s is None or timing.remaining_s > timing.fallback_s)
        return requested if ok else ONLINE
    if timing.deadline_span_s is None or timing.remaining_s is None:
        return ONLINE
    options = [ONLINE]
    usable = timing.remaining_s - timing.fallback_s
    if supports(model, BATCH) and timing.batch_turnaround_s <= timing.deadline_span_s and usable > 0:
        options.append(BATCH)
    if supports(model, FLEX) and timing.flex_turnaround_s <= usable:
        options.append(FLEX)
    return min(options, key=lambda c: (discount(model, c), (BATCH, FLEX, ONLINE).index(c)))


def fallback_s(deadline_span_s: float, configured: float | None) -> float:
    """Time before the deadline at which unfinished batch work is cancelled and run online: the setting, or
    a quarter of the deadline span, at most an hour."""
    if configured is not None:
        return configured
    return min(3600.0, deadline_span_s / 4)
