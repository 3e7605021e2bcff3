"""The flex channel: OpenAI's `service_tier: "flex"` (and Groq's) on an ordinary chat completion.

Flex bills batch rates but may answer "no capacity right now": OpenAI with 429 `resource_unavailable`,
Groq with 498 `capacity_exceeded`. Such an answer did no work and is not billed, so it is not a failed
attempt: `FlexCall.complete` waits (doubling, jittered) and asks flex again, inside the one attempt the engine
reserved. When flex has not answered by the time the job's deadline needs the work (the batch runner's
fallback point) or the task's deadline, the same request goes to the standard tier instead. The caller learns
which tier served it (`served`) and prices accordingly: flex at the batch discount, standard at list price.
The reservation is the standard tier's upper bound, so the hard cap holds either way.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from . import backoff, channels
from .catalog import ModelInfo
from .catalog.pricing import price
from .errors import PricingError, ProviderError
from .models import ChatRequest, Completion
from .providers.base import Adapter

UNAVAILABLE_CODES = ("resource_unavailable", "capacity_exceeded")


def is_unavailable(e: ProviderError) -> bool:
    """Flex's "no capacity now" answer (never billed)."""
    if e.status_code == 498:
        return True
    text = (e.message or "").lower()
    return e.status_code == 429 and any(c in text or c.replace("_", " ") in text for c in UNAVAILABLE_CODES)


_FLEX_CLASSES: dict[type, type] = {}


def flex_adapter(adapter: Adapter) -> Adapter:
    """The same adapter (provider, client, key) whose requests carry service_tier "flex"."""
    base = type(adapter)
    cls = _FLEX_CLASSES.get(base)
    if cls is None:

        def build_body(self, model, request):
            return {**base.build_body(self, model, request), "service_tier": "flex"}

        cls = _FLEX_CLASSES[base] = type(f"Flex{base.__name__}", (base,), {"build_body": build_body})
    return cls(adapter.provider, adapter.client, adapter._api_key)


@dataclass
class FlexCall:
    flex: Adapter
    standard: Adapter
    timeout_s: float  # one flex call may queue this long
    until: float  # after this (epoch), no more flex tries: the standard tier serves
    base_delay_s: float
    max_delay_s: float
    rng: random.Random
    served: str = channels.FLEX
    unavailable: int = 0  # flex answers "no capacity" seen (not billed)

    async def complete(self, model: ModelInfo, request: ChatRequest, *, timeout: float) -> Completion:
        n = 0
        while time.time() < self.until:
            try:
                return await self.flex.complete(
                    model, request, timeout=min(self.timeout_s, max(1.0, self.until - time.time()))
                )
            except ProviderError as e:
                if not is_unavailable(e):
                    raise
                self.unavailable += 1
            delay = backoff.retry_delay(n, None, base=self.base_delay_s, cap=self.max_delay_s, rng=self.rng)
            n += 1
            if time.time() + delay >= self.until:
                break
            await asyncio.sleep(delay)
        self.served = channels.ONLINE
        return await self.standard.complete(model, request, timeout=timeout)

    def cost(self, completion: Completion, model: ModelInfo) -> tuple[int, str, str | None] | None:
        """The flex price (batch rates) when flex served; None: price it as any online call."""
        if self.served != channels.FLEX:
            return None
        try:
            return price(completion.usage, model, batch=True).picos, "usage", None
        except PricingError:
            return None
