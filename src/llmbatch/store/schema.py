"""SQLAlchemy 2 models: jobs, tasks, attempts (the ledger), budget windows and rejected input lines.

Times are float epoch seconds (UTC): lease arithmetic then compares plain numbers on SQLite and Postgres
alike. Money is BigInteger pico-dollars (money.py: exact, never rounded). Hot paths use the Core tables (`Job.__table__`) directly.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class JobStatus:
    queued = "queued"
    running = "running"
    succeeded = "succeeded"  # every task succeeded
    failed = "failed"  # finished; some tasks failed (exit 3)
    budget_exhausted = "budget_exhausted"  # finished; some tasks skipped for budget (exit 4)
    cancelled = "cancelled"  # exit 5
    # An embedded run was stopped (Ctrl-C, SIGTERM, a store that cannot be written) with work left; not terminal:
    # `llmbatch resume` (or re-running the same command) continues it.
    interrupted = "interrupted"
    terminal = frozenset({"succeeded", "failed", "budget_exhausted", "cancelled"})
    all = ("queued", "running", "interrupted", "succeeded", "failed", "budget_exhausted", "cancelled")


class TaskStatus:
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"
    all = ("queued", "running", "succeeded", "failed", "skipped", "cancelled")
    terminal = frozenset({"succeeded", "failed", "skipped", "cancelled"})


class AttemptStatus:
    in_flight = "in_flight"  # reserved, call under way (or the worker died: see reconcile)
    succeeded = "succeeded"
    invalid_output = "invalid_output"  # the call succeeded, the output failed validation (escalation)
    failed = "failed"
    unknown = "unknown"  # outcome unknown (timeout after send, worker death); reservation held until reconciled


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (  # migration 0003: re-run lookup, --name, `llmbatch jobs` newest first
        Index("ix_jobs_digests", "input_digest", "spec_digest"),
        Index("ix_jobs_name", "name"),
        Index("ix_jobs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), default=JobStatus.queued)
    input_path: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(Text, default="{}")  # JobSpec as JSON
    executor: Mapped[str] = mapped_column(String(16), default="local")
    simulate: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_picos: Mapped[int | None] = mapped_column(BigInteger)
    max_cost_per_task_picos: Mapped[int | None] = mapped_column(BigInteger)
    spent_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tasks: Mapped[int] = mapped_column(Integer, default=0)
    invalid_lines: Mapped[int] = mapped_column(Integer, default=0)
    # Finished tasks per status, moved with each task's status (job_counts.py; migration 0012).
    succeeded_tasks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    failed_tasks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    skipped_tasks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancelled_tasks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # Last claim or settlement: a running job with work left and no activity for a lease period has lost
    # its queue messages (every worker died); the sweeper re-publishes its units.
    last_activity_at: Mapped[float | None] = mapped_column(Float)
    # Why the job stopped dispatching before its tasks ran out (an overrun took spend past the cap).
    stop_reason: Mapped[str | None] = mapped_column(Text)
    # What the job was made from (sha256 of the input file's bytes, and of its effective spec): running the same
    # command again finds this job and resumes it instead of paying again (migration 0003).
    input_digest: Mapped[str | None] = mapped_column(String(64))
    spec_digest: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(40), index=True)  # the API token (service) that made it


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("job_id", "task_id", name="uq_tasks_job_task_id"),
        Index("ix_tasks_job_status", "job_id", "status"),
        # --- throughput (migration 0009): report reads at a million tasks ---
        Index("ix_tasks_job_cost", "job_id", "cost_picos"),
        Index(
            "ix_tasks_job_escalated",
            "job_id",
            "escalations",
            sqlite_where=text("escalations > 0"),
            postgresql_where=text("escalations > 0"),
        ),
    )

    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    task_id: Mapped[str] = mapped_column(String(512))
    line_no: Mapped[int] = mapped_column(Integer)
    task_type: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # the validated TaskLine as JSON (job defaults applied)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.queued)
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    output: Mapped[str | None] = mapped_column(Text)  # JSON-encoded
    error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(40))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class Attempt(Base):
    """The ledger: one row per provider call, written (with its reservation) before the call is made."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "task_seq", "attempt_no", name="uq_attempts_task_no"),
        Index("ix_attempts_job_status", "job_id", "status"),
        Index(
            "ix_attempts_job_overrun",
            "job_id",  # migration 0012: report's overruns
            sqlite_where=text("overrun IS 1"),
            postgresql_where=text("overrun IS true"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    task_seq: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(512))
    attempt_no: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(8), default="sync")  # sync | batch
    purpose: Mapped[str] = mapped_column(String(16), default="first")  # first | retry | fallback | escalation
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.in_flight)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_source: Mapped[str | None] = mapped_column(String(16))  # usage | none | reservation | unpriced
    error_class: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    pricing_error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    # A cache attempt (channel "cache", cost 0): the original attempt's cost it did not pay again.
    saved_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    # The daily window(s) holding the reservation, space-separated: "2026-11-30" and/or "2026-11-30/tok_..."
    budget_window: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    # Billed above its reservation (the provider counted more tokens than our bound allowed for).
    overrun: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40))  # the provider's, as it sent it
    served_model: Mapped[str | None] = mapped_column(String(200))  # the model the provider says answered
    worker: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # --- discount-channels: a batch-channel attempt's provider batch (provider_batches.id) and its provider id
    batch_ref: Mapped[int | None] = mapped_column(BigInteger)
    provider_batch_id: Mapped[str | None] = mapped_column(String(200))


class ProviderBatch(Base):
    """A batch sent (or about to be sent) to a provider's batch API: written before the send, so the provider
    id is never lost and any worker can poll, settle or cancel it (batch_channel.py)."""

    __tablename__ = "provider_batches"
    __table_args__ = (
        UniqueConstraint("tag", name="uq_provider_batches_tag"),
        Index("ix_provider_batches_job_state", "job_id", "state"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    tag: Mapped[str] = mapped_column(String(120))  # names the batch at the provider (metadata / display name)
    provider_batch_id: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))  # creating | submitted | settled | failed
    lines: Mapped[int] = mapped_column(Integer)
    reserved_picos: Mapped[int] = mapped_column(BigInteger)
    owner: Mapped[str | None] = mapped_column(String(120))  # the worker polling it, while lease_until lasts
    lease_until: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[float | None] = mapped_column(Float)
    polled_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)


class BudgetWindow(Base):
    """The global daily cap: one row per UTC day, reserved into atomically like a job's budget."""

    __tablename__ = "budget_windows"

    window: Mapped[str] = mapped_column(String(64), primary_key=True)  # a UTC day, or "day/token id"
    cap_picos: Mapped[int] = mapped_column(BigInteger)
    spent_picos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_picos: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerPresence(Base):
    """A worker process's liveness, separate from task leases: renewed every few seconds by the process's event
    loop. When it lapses, live workers hand the dead one's tasks to others at once instead of waiting for their
    leases (lease_seconds) to expire. The tasks a worker holds are the ones whose lease_owner is its id."""

    __tablename__ = "worker_presence"

    worker_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class InputError(Base):
    """A rejected input line: kept so `status`/`report` can show it long after submit."""

    __tablename__ = "input_errors"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str | None] = mapped_column(Text)


class ResponseCacheEntry(Base):
    """The response cache (cache/entries.py): per request digest, a validated answer, or an invalid verdict
    (invalid_error), or a claim marker (neither) while one worker makes the call that the others wait for."""

    __tablename__ = "response_cache"
    __table_args__ = (Index("ix_response_cache_created", "created_at"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of scope, provider, model, body
    scope: Mapped[str | None] = mapped_column(String(120))  # the API token's scope, once tokens exist
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    output: Mapped[str | None] = mapped_column(Text)  # the validated output as JSON; NULL = a claim marker
    # Set instead of output: this request's answer failed validation (tasks escalate without calling again).
    invalid_error: Mapped[str | None] = mapped_column(Text)
    usage: Mapped[str | None] = mapped_column(Text)  # the original call's usage as JSON
    cost_picos: Mapped[int] = mapped_column(BigInteger, default=0)  # copied from the original attempt's ledger row
    job_id: Mapped[str | None] = mapped_column(String(40))  # where the answer came from (no FK: outlives jobs)
    attempt_id: Mapped[int | None] = mapped_column(BigInteger)
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    claim_expires_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class ApiToken(Base):
    """A token of the HTTP service (llmbatch serve): stored as a SHA-256 hash, never in clear."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    daily_cap_picos: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class ServiceFile(Base):
    """A file uploaded to (or written by) the service: the bytes live on disk at `path`."""

    __tablename__ = "service_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(40), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class ServiceBatch(Base):
    """An OpenAI-style batch: its llmbatch job, its files and the lifecycle times OpenAI reports."""

    __tablename__ = "service_batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(40), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    input_file_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    batch_metadata: Mapped[str | None] = mapped_column("metadata", Text)  # JSON
    status: Mapped[str] = mapped_column(String(16))
    errors: Mapped[str | None] = mapped_column(Text)  # JSON list of {code, message, line}
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[float] = mapped_column(Float)
    in_progress_at: Mapped[float | None] = mapped_column(Float)
    finalizing_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    failed_at: Mapped[float | None] = mapped_column(Float)
    cancelling_at: Mapped[float | None] = mapped_column(Float)
    cancelled_at: Mapped[float | None] = mapped_column(Float)


# `__table__` is typed as a FromClause; these are Tables (insert/update/delete take them).
jobs = cast(Table, Job.__table__)
tasks = cast(Table, Task.__table__)
attempts = cast(Table, Attempt.__table__)
budget_windows = cast(Table, BudgetWindow.__table__)
input_errors = cast(Table, InputError.__table__)
worker_presence = cast(Table, WorkerPresence.__table__)
response_cache = cast(Table, ResponseCacheEntry.__table__)
provider_batches = cast(Table, ProviderBatch.__table__)
api_tokens = cast(Table, ApiToken.__table__)
service_files = cast(Table, ServiceFile.__table__)
service_batches = cast(Table, ServiceBatch.__table__)
