"""Prompt-cache-aware scheduling: tasks whose requests share a long prefix (the leading system/developer
messages: a shared system prompt or instructions) hit the provider's prompt cache.

- Only a prefix at or above the model's minimum cacheable length counts (below it providers cache nothing).
- Close in time: the first call of a (model, prefix) group goes alone; the others of the group wait until it
  has answered (the provider has then written the prefix) and go after it, within the cache's lifetime.
- Anthropic caches only what a `cache_control` breakpoint marks. A breakpoint costs a write at 1.25x input
  for the prefix, then every read costs 0.1x: it is placed when the expected reads (the other tasks seen
  with the same prefix) save more than the write's premium, at the model's catalog prices.
- Same model: tasks with one prefix are routed by one rule on near-identical requests, so they land on one
  model; the gate is per (model, prefix), so a group split across models warms each model once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

import orjson

from ..catalog import ModelInfo
from ..models import ChatRequest
from ..tokens import estimate_input_tokens

SYSTEM_ROLES = ("system", "developer")
MAX_TRACKED_PREFIXES = 100_000  # prefix counts kept per process (LRU): memory stays bounded
# Anthropic's default cache lives 5 minutes from last use; a group idle longer than this warms again.
WARM_FOR_S = 270.0
ANTHROPIC_WRITE = Decimal("1.25")  # when the catalog has no cache-write price
ANTHROPIC_READ = Decimal("0.1")  # when the catalog has no cached-input price


def min_cacheable_tokens(model: ModelInfo) -> int | None:
    """The provider's minimum cacheable prefix for this model; None when the model has no prompt-cache
    discount. Anthropic: 4096 (Haiku 4.5, Opus 4.5/4.6), 2048 (Haiku 3/3.5, Sonnet 4.6), else 1024;
    OpenAI 1024; Gemini implicit caching 1024 (Pro models 4096)."""
    name = model.model.lower()
    if model.api == "anthropic":
        if any(s in name for s in ("haiku-4-5", "opus-4-5", "opus-4-6")):
            return 4096
        if "haiku" in name or "sonnet-4-6" in name:
            return 2048
        return 1024
    if model.cached_input_per_mtok is None or model.cached_input_per_mtok >= model.input_per_mtok:
        return None
    if model.api == "gemini" and "pro" in name:
        return 4096
    return 1024


@dataclass(frozen=True)
class Prefix:
    messages: int  # leading system/developer messages
    digest: str
    tokens: int  # estimated


def shared_prefix(request: ChatRequest, *, min_tokens: int = 0) -> Prefix | None:
    """The request's cacheable prefix candidate: its leading system/developer messages (None when there are
    none, when they are the whole request, or when they are estimated below `min_tokens`: not digested)."""
    n = 0
    for m in request.messages:
        if m.get("role") not in SYSTEM_ROLES:
            break
        n += 1
    if n == 0 or n == len(request.messages):
        return None
    head = request.messages[:n]
    tokens = estimate_input_tokens(head)
    if tokens < min_tokens:
        return None
    digest = hashlib.sha256(orjson.dumps(head, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return Prefix(n, digest, tokens)


def breakpoint_pays(model: ModelInfo, expected_reads: int) -> bool:
    """Anthropic: do `expected_reads` reads at the cached price save more than the write's premium?"""
    if expected_reads < 1:
        return False
    base = model.input_per_mtok
    write = model.cache_write_per_mtok if model.cache_write_per_mtok is not None else base * ANTHROPIC_WRITE
    read = model.cached_input_per_mtok if model.cached_input_per_mtok is not None else base * ANTHROPIC_READ
    return expected_reads * (base - read) > write - base


@dataclass
class Warm:
    """One (model, prefix) group's warm-up: the first call goes alone; the others wait for it."""

    done: asyncio.Future
    at: float = 0.0


class PromptPlanner:
    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._groups: dict[tuple[str, str], Warm] = {}
        self._minimum: dict[str, int | None] = {}  # model key -> min_cacheable_tokens, asked for every call

    def note(self, request: ChatRequest) -> None:
        """Count a claimed task's prefix (before its tasks run: how many will share it)."""
        # Far below any provider's minimum: not worth tracking.
        p = shared_prefix(request, min_tokens=1024 // 2) if self.enabled else None
        if p is None:
            return
        self._counts[p.digest] = self._counts.pop(p.digest, 0) + 1
        if len(self._counts) > MAX_TRACKED_PREFIXES:
            self._counts.popitem(last=False)

    def sharing(self, digest: str) -> int:
        return self._counts.get(digest, 1)

    async def plan(
        self, model: ModelInfo, request: ChatRequest, deadline: float
    ) -> tuple[ChatRequest, tuple[str, str] | None]:
        """The request to send (with an Anthropic breakpoint when it pays), after this group's warm-up call
        when another task is making it. Returns (request, group) where group is set when this call is the
        warm-up: pass it to warmed() when the call has ended, whatever its outcome."""
        if not self.enabled:
            return request, None
        try:
            minimum = self._minimum[model.key]
        except KeyError:
            minimum = self._minimum[model.key] = min_cacheable_tokens(model)
        # A model without a prompt-cache discount (most cheap ones) needs no look at the prefix at all.
        p = shared_prefix(request, min_tokens=minimum) if minimum is not None else None
        if p is None:
            return request, None
        n = self.sharing(p.digest)
        if n < 2:
            return request, None
        if model.api == "anthropic":
            if not breakpoint_pays(model, n - 1):
                return request, None
            request = request.model_copy(update={"cache_prefix_messages": p.messages})
        group = (model.key, p.digest)
        now = time.time()
        warm = self._groups.get(group)
        if warm is None or (warm.done.done() and now - warm.at > WARM_FOR_S):
            self._groups[group] = Warm(asyncio.get_running_loop().create_future())
            return request, group
        if not warm.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(warm.done), timeout=max(0.0, deadline - now))
            except (asyncio.TimeoutError, TimeoutError):
                pass
        warm.at = time.time()
        return request, None

    def warmed(self, group: tuple[str, str]) -> None:
        warm = self._groups.get(group)
        if warm is not None and not warm.done.done():
            warm.at = time.time()
            warm.done.set_result(None)
