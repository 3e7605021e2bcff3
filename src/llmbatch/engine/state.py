"""What the engine keeps about jobs and running tasks, and the outcomes an attempt can end in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ProviderError, ProviderTimeout, RateLimitedError, RetryableError
from ..models import JobSpec, TaskLine
from ..quality.policy import PolicyRouter
from ..store.repo import ClaimedTask
from ..store.schema import TaskStatus

if TYPE_CHECKING:
    from ..cache.hook import TaskCache

# What a candidate's attempts can end in besides a terminal task status.
NEXT_CANDIDATE = object()  # fall back to the next candidate
ESCALATE = object()  # the output failed validation: move up a tier
RETRY = object()  # one attempt failed: try the same model again (if its attempts allow)
TRUNCATED = object()  # the output stopped on the output cap: retry with a larger cap, else escalate

# Finish reasons that mean "stopped on the output cap" (OpenAI, Anthropic, Gemini): the output is cut off.
TRUNCATION_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS"})

# Not a task status: this process's presence lapsed after it claimed the task, so the task may be running
# elsewhere now. Nothing more is called or recorded for it here.
LOST = "lost"


class LeaseLost(Exception):
    """Raised out of _reserve when the task may now belong to another worker (see LOST)."""


@dataclass
class JobContext:
    """Per-job settings the engine needs on every task, read once and cached."""

    job_id: str
    spec: JobSpec
    max_cost_per_task_picos: int | None
    simulate: bool
    cancelled: bool = False
    checked_at: float = 0.0
    warned: set[str] = field(default_factory=set)
    deny: frozenset[str] = frozenset()  # the spec's deny-list, built once per job
    budget_picos: int | None = None
    stop_reason: str | None = None  # set when an overrun took spend past the cap: dispatch stops
    quality: PolicyRouter | None = None  # the job's quality policy (or calibration), None for most jobs
    owner: str | None = None  # the API token that submitted it (service): its response cache is its own


@dataclass
class Progress:
    """In-process counters for live display; the store stays the source of truth."""

    finished: dict[str, int] = field(default_factory=lambda: {s: 0 for s in TaskStatus.all})
    attempts: int = 0
    escalations: int = 0


@dataclass
class TaskRun:
    """One task while it runs: what it is (its job, its claim, its line, its deadline) and its mutable state.
    The engine's steps take it whole rather than each of its parts."""

    ctx: JobContext
    claimed: ClaimedTask
    task: TaskLine
    deadline: float  # time.time() past which no attempt starts
    attempts: int = 0
    escalations: int = 0
    last_error: str | None = None
    purpose: str = "first"
    reserved: int = 0  # the current attempt's reservation
    truncated: bool = False  # an output stopped on the output cap
    epoch: int = 0  # the presence epoch the task was claimed under (see liveness.Presence)
    cache: "TaskCache | None" = None  # the response cache's state on the current candidate


# Retryable failures after the request was sent whose charge we cannot know: the provider may have
# processed (and billed) the call. Connect errors (never sent) and HTTP error statuses are not among them.
UNKNOWN_OUTCOME_CLASSES = frozenset({"timeout", "connection_reset", "malformed_response"})


def outcome_unknown(e: RetryableError) -> bool:
    return e.request_sent and (isinstance(e, ProviderTimeout) or e.error_class in UNKNOWN_OUTCOME_CLASSES)


def provider_in_trouble(e: ProviderError) -> bool:
    """Failures that say the provider is in trouble, not this request: they count toward its breaker.
    429s have their own shared cooldown; 4xx and invalid outputs are about the request."""
    if not isinstance(e, RetryableError) or isinstance(e, RateLimitedError):
        return False
    return (
        (e.status_code is not None and e.status_code >= 500)
        or isinstance(e, ProviderTimeout)
        or e.error_class in ("connect", "connection_reset")
    )
