"""The provider-neutral part of the simulator's batch APIs: a batch, its lines, and time.

A batch's lines finish evenly over `batch_turnaround_s` from its creation (all at once when it is 0; never
when it is negative), in input order. Work is done lazily, when somebody looks (retrieve, list, results),
through the same dialect code a synchronous call takes, so answers, usage and the token counters are the
real thing. A cancelled batch keeps what finished before the cancel (it is billed); the rest is cancelled.
A batch not finished `batch_expiry_s` after creation expires the same way. `batch_fail_rate` is the share of
lines that end in a server error. The per-API modules (batch_openai, batch_anthropic, batch_gemini) only
translate this into each API's shapes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .apierror import ApiError
from .dialects.base import Dialect
from .state import SimState

# Terminal outcome of one line.
SUCCEEDED, ERRORED, CANCELLED, EXPIRED = "succeeded", "errored", "cancelled", "expired"


@dataclass
class LineResult:
    kind: str  # SUCCEEDED | ERRORED | CANCELLED | EXPIRED
    body: dict | None = None  # the synchronous API's response body (succeeded)
    status: int = 200
    error: ApiError | None = None


@dataclass
class SimBatch:
    id: str
    api: str
    model: str | None  # Gemini and one-model files; None when each line names its model
    lines: list[tuple[str, dict, str | None]]  # (custom id, request body, model name from the path if any)
    created: float  # wall clock
    meta: dict[str, Any] = field(default_factory=dict)  # metadata / display name, per API
    results: list[LineResult] = field(default_factory=list)  # in input order, as lines finish
    cancelled_at: float | None = None
    ended_at: float | None = None
    expired: bool = False

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def counts(self) -> Counter:
        return Counter(r.kind for r in self.results)


class BatchBook:
    """Every batch and file of one simulator instance, plus counters for tests (GET /_sim/stats)."""

    def __init__(self) -> None:
        self.batches: dict[str, SimBatch] = {}
        self.files: dict[str, tuple[str, bytes, float, str]] = {}  # id -> (filename, content, created, purpose)
        self.created: Counter = Counter()  # batches created, by API
        self.cancelled: Counter = Counter()
        self.lines_done: Counter = Counter()  # lines that reached a terminal outcome, by kind
        self.flex_served = 0
        self.flex_unavailable = 0  # flex calls answered 429 resource unavailable (not billed)

    def snapshot(self) -> dict[str, Any]:
        return {
            "created": dict(self.created),
            "cancelled": dict(self.cancelled),
            "lines": dict(self.lines_done),
            "open": sum(1 for b in self.batches.values() if not b.ended),
            "flex": {"served": self.flex_served, "unavailable": self.flex_unavailable},
        }


def book(state: SimState) -> BatchBook:
    """The batch book of this simulator (created on first use; survives /_sim/reset except its counters)."""
    b = getattr(state, "_batch_book", None)
    if b is None:
        b = BatchBook()
        state._batch_book = b  # type: ignore[attr-defined]
    return b


def new_batch(
    state: SimState, api: str, prefix: str, lines, *, model: str | None = None, meta: dict | None = None
) -> SimBatch:
    b = SimBatch(
        id=f"{prefix}{state.new_id()}", api=api, model=model, lines=list(lines), created=time.time(), meta=meta or {}
    )
    bk = book(state)
    bk.batches[b.id] = b
    bk.created[api] += 1
    return b


def _run_line(state: SimState, dialect: Dialect, custom_id: str, body: dict, model_name: str | None) -> LineResult:
    """One line through the dialect, as a synchronous call would go (no latency, faults or rate limits:
    a batch API has none of those per line)."""
    cfg = state.config
    if cfg.batch_fail_rate and state.rng.random() < cfg.batch_fail_rate:
        return LineResult(
            ERRORED, status=500, error=ApiError(500, "server", "The server had an error while processing this request.")
        )
    try:
        name = model_name or body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid_request", "model: Field required", param="model")
        model = state.registry.find(dialect.api, name)
        if model is None:
            raise dialect.model_not_found(name)
        parsed = dialect.parse(body, model)
        reply = dialect.respond(parsed, model, state, state.new_id())
    except ApiError as e:
        return LineResult(ERRORED, status=e.status, error=e)
    state.stats.prompt_tokens += reply.prompt_tokens
    state.stats.completion_tokens += reply.completion_tokens
    return LineResult(SUCCEEDED, body=reply.body)


def advance(state: SimState, dialect: Dialect, b: SimBatch, now: float | None = None) -> SimBatch:
    """Bring the batch up to `now`: finish the lines that are due, then expire or end it."""
    if b.ended:
        return b
    now = now if now is not None else time.time()
    cfg = state.config
    n = len(b.lines)
    stop = now if b.cancelled_at is None else min(now, b.cancelled_at)
    turnaround = cfg.batch_turnaround_s
    if turnaround < 0:
        due = 0
    elif turnaround == 0:
        due = n
    else:
        due = min(n, int(n * (stop - b.created) / turnaround))
    bk = book(state)
    while len(b.results) < due:
        cid, body, model_name = b.lines[len(b.results)]
        r = _run_line(state, dialect, cid, body, model_name or b.model)
        b.results.append(r)
        bk.lines_done[r.kind] += 1
    if len(b.results) == n:
        b.ended_at = b.created + (turnaround if turnaround > 0 else 0)
        b.ended_at = min(max(b.ended_at, b.created), now)
        return b
    rest = None
    if b.cancelled_at is not None:
        rest = CANCELLED
    elif cfg.batch_expiry_s and now - b.created >= cfg.batch_expiry_s:
        rest, b.expired = EXPIRED, True
    if rest is not None:
        for _ in range(n - len(b.results)):
            b.results.append(LineResult(rest))
            bk.lines_done[rest] += 1
        b.ended_at = now
    return b


def cancel(state: SimState, b: SimBatch) -> None:
    if b.cancelled_at is None and not b.ended:
        b.cancelled_at = time.time()
        book(state).cancelled[b.api] += 1


def find(state: SimState, api: str, batch_id: str) -> SimBatch | None:
    b = book(state).batches.get(batch_id)
    return b if b is not None and b.api == api else None


def newest_first(state: SimState, api: str, after: str | None, *, inclusive: bool = False) -> list[SimBatch]:
    """The API's batches, newest first, from the cursor on (after it, or at it when `inclusive`)."""
    found = sorted((b for b in book(state).batches.values() if b.api == api), key=lambda b: b.created, reverse=True)
    ids = [b.id for b in found]
    if after in ids:
        found = found[ids.index(after) + (0 if inclusive else 1) :]
    return found
