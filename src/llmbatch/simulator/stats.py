"""Request counters behind GET /_sim/stats. Model names are counted only for known models, so a client
sending random names cannot grow memory without bound; nothing from headers (keys) is ever recorded."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.total = 0
        self.in_flight = 0
        self.by_status: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_api: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.by_error: Counter[str] = Counter()  # why a non-200 answer was given: rpm, injected, storm429...
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt-cache reads, all APIs
        self.cache_write_tokens = 0  # prompt-cache writes (Anthropic)

    def record(self, *, api: str, model: str | None, status: int | str, fault: str | None, error: str | None) -> None:
        self.total += 1
        self.by_status[str(status)] += 1
        self.by_api[api] += 1
        self.by_model[model or "<unknown>"] += 1
        if fault:
            self.by_fault[fault] += 1
        if error:
            self.by_error[error] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "in_flight": self.in_flight,
            "uptime_s": round(time.time() - self.started, 3),
            "by_status": dict(self.by_status),
            "by_model": dict(self.by_model),
            "by_api": dict(self.by_api),
            "by_fault": dict(self.by_fault),
            "by_error": dict(self.by_error),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }
