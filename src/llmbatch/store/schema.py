"""The store's tables (SQLAlchemy Core): jobs, tasks, attempts (the ledger), budget windows and rejected input lines.

Times are float epoch seconds (UTC): lease arithmetic then compares plain numbers on SQLite and Postgres
alike. Money is BigInteger pico-dollars (money.py: exact, never rounded).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


# Core tables, not ORM classes: nothing maps rows to objects, and `status` and `--help` start faster without
# importing sqlalchemy.orm. Migrations (alembic) compare against this metadata.
metadata = MetaData()


def _col(name: str, *args: Any, **kwargs: Any) -> Column:
    """A column named by a plain str. Given to Column(), a name becomes a quoted_name (a str subclass) that row
    mappings then carry as their keys, and orjson refuses str subclasses as dict keys (`report --attempts`
    dumps ledger rows as they come). The declarative classes this replaced named columns this same way."""
    col = Column(*args, **kwargs)
    col.name = col.key = name
    return col


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


jobs = Table(
    "jobs",
    metadata,
    _col("id", String(40), primary_key=True),
    _col("name", String(200)),
    _col("status", String(24), default=JobStatus.queued, nullable=False),
    _col("input_path", Text),
    _col("spec", Text, default="{}", nullable=False),  # JobSpec as JSON
    _col("executor", String(16), default="local", nullable=False),
    _col("simulate", Boolean, default=False, nullable=False),
    _col("budget_picos", BigInteger),
    _col("max_cost_per_task_picos", BigInteger),
    _col("spent_picos", BigInteger, default=0, nullable=False),
    _col("reserved_picos", BigInteger, default=0, nullable=False),
    _col("total_tasks", Integer, default=0, nullable=False),
    _col("invalid_lines", Integer, default=0, nullable=False),
    # Finished tasks per status, moved with each task's status (job_counts.py; migration 0012).
    _col("succeeded_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    _col("failed_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    _col("skipped_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    _col("cancelled_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    _col("cancel_requested", Boolean, default=False, nullable=False),
    _col("created_at", Float, nullable=False),
    _col("started_at", Float),
    _col("finished_at", Float),
    # Last claim or settlement: a running job with work left and no activity for a lease period has lost
    # its queue messages (every worker died); the sweeper re-publishes its units.
    _col("last_activity_at", Float),
    # Why the job stopped dispatching before its tasks ran out (an overrun took spend past the cap).
    _col("stop_reason", Text),
    # What the job was made from (sha256 of the input file's bytes, and of its effective spec): running the same
    # command again finds this job and resumes it instead of paying again (migration 0003).
    _col("input_digest", String(64)),
    _col("spec_digest", String(64)),
    _col("owner", String(40), index=True),  # the API token (service) that made it
    # migration 0003: re-run lookup, --name, `llmbatch jobs` newest first
    Index("ix_jobs_digests", "input_digest", "spec_digest"),
    Index("ix_jobs_name", "name"),
    Index("ix_jobs_created_at", "created_at"),
)


tasks = Table(
    "tasks",
    metadata,
    _col("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    _col("seq", Integer, primary_key=True, autoincrement=False),
    _col("task_id", String(512), nullable=False),
    _col("line_no", Integer, nullable=False),
    _col("task_type", String(16), nullable=False),
    _col("payload", Text, nullable=False),  # the validated TaskLine as JSON (job defaults applied)
    _col("status", String(16), default=TaskStatus.queued, nullable=False),
    _col("provider", String(64)),
    _col("model", String(200)),
    _col("output", Text),  # JSON-encoded
    _col("error", Text),
    _col("skip_reason", String(40)),
    _col("input_tokens", BigInteger, default=0, nullable=False),
    _col("cached_tokens", BigInteger, default=0, nullable=False),
    _col("cache_write_tokens", BigInteger, default=0, nullable=False),
    _col("output_tokens", BigInteger, default=0, nullable=False),
    _col("reasoning_tokens", BigInteger, default=0, nullable=False),
    _col("cost_picos", BigInteger, default=0, nullable=False),
    _col("attempts", Integer, default=0, nullable=False),
    _col("escalations", Integer, default=0, nullable=False),
    _col("deliveries", Integer, default=0, nullable=False),
    _col("lease_owner", String(120)),
    _col("lease_expires_at", Float),
    _col("finished_at", Float),
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


# The ledger: one row per provider call, written (with its reservation) before the call is made.
attempts = Table(
    "attempts",
    metadata,
    _col("id", BigIntPK, primary_key=True, autoincrement=True),
    _col("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    _col("task_seq", Integer, nullable=False),
    _col("task_id", String(512), nullable=False),
    _col("attempt_no", Integer, nullable=False),
    _col("provider", String(64), nullable=False),
    _col("model", String(200), nullable=False),
    _col("channel", String(8), default="sync", nullable=False),  # sync | batch
    _col("purpose", String(16), default="first", nullable=False),  # first | retry | fallback | escalation
    _col("status", String(16), default=AttemptStatus.in_flight, nullable=False),
    _col("settled", Boolean, default=False, nullable=False),
    _col("cost_source", String(16)),  # usage | none | reservation | unpriced
    _col("error_class", String(40)),
    _col("error_message", Text),
    _col("http_status", Integer),
    _col("pricing_error", Text),
    _col("input_tokens", BigInteger, default=0, nullable=False),
    _col("cached_tokens", BigInteger, default=0, nullable=False),
    _col("cache_write_tokens", BigInteger, default=0, nullable=False),
    _col("output_tokens", BigInteger, default=0, nullable=False),
    _col("reasoning_tokens", BigInteger, default=0, nullable=False),
    _col("reserved_picos", BigInteger, default=0, nullable=False),
    _col("cost_picos", BigInteger, default=0, nullable=False),
    # A cache attempt (channel "cache", cost 0): the original attempt's cost it did not pay again.
    _col("saved_picos", BigInteger, default=0, nullable=False),
    # The daily window(s) holding the reservation, space-separated: "2026-11-30" and/or "2026-11-30/tok_..."
    _col("budget_window", String(64)),
    _col("latency_ms", Integer),
    _col("provider_request_id", String(200)),
    # Billed above its reservation (the provider counted more tokens than our bound allowed for).
    _col("overrun", Boolean, default=False, nullable=False),
    _col("finish_reason", String(40)),  # the provider's, as it sent it
    _col("served_model", String(200)),  # the model the provider says answered
    _col("worker", String(120)),
    _col("started_at", Float, nullable=False),
    _col("finished_at", Float),
    # --- discount-channels: a batch-channel attempt's provider batch (provider_batches.id) and its provider id
    _col("batch_ref", BigInteger),
    _col("provider_batch_id", String(200)),
    UniqueConstraint("job_id", "task_seq", "attempt_no", name="uq_attempts_task_no"),
    # migration 0013: report's one pass over the ledger, grouped by (status, provider, model, channel)
    Index("ix_attempts_job_status_model", "job_id", "status", "provider", "model", "channel"),
    Index(
        "ix_attempts_job_overrun",
        "job_id",  # migration 0012: report's overruns
        sqlite_where=text("overrun IS 1"),
        postgresql_where=text("overrun IS true"),
    ),
)


# A batch sent (or about to be sent) to a provider's batch API: written before the send, so the provider id is never
# lost and any worker can poll, settle or cancel it (batch_channel.py).
provider_batches = Table(
    "provider_batches",
    metadata,
    _col("id", BigIntPK, primary_key=True, autoincrement=True),
    _col("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    _col("provider", String(64), nullable=False),
    _col("model", String(200), nullable=False),
    _col("tag", String(120), nullable=False),  # names the batch at the provider (metadata / display name)
    _col("provider_batch_id", String(200)),
    _col("state", String(16), nullable=False),  # creating | submitted | settled | failed
    _col("lines", Integer, nullable=False),
    _col("reserved_picos", BigInteger, nullable=False),
    _col("owner", String(120)),  # the worker polling it, while lease_until lasts
    _col("lease_until", Float),
    _col("error", Text),
    _col("created_at", Float, nullable=False),
    _col("submitted_at", Float),
    _col("polled_at", Float),
    _col("ended_at", Float),
    UniqueConstraint("tag", name="uq_provider_batches_tag"),
    Index("ix_provider_batches_job_state", "job_id", "state"),
)


# The global daily cap: one row per UTC day, reserved into atomically like a job's budget.
budget_windows = Table(
    "budget_windows",
    metadata,
    _col("window", String(64), primary_key=True),  # a UTC day, or "day/token id"
    _col("cap_picos", BigInteger, nullable=False),
    _col("spent_picos", BigInteger, default=0, nullable=False),
    _col("reserved_picos", BigInteger, default=0, nullable=False),
)


# A worker process's liveness, separate from task leases: renewed every few seconds by the process's event loop.
# When it lapses, live workers hand the dead one's tasks to others at once instead of waiting for their leases
# (lease_seconds) to expire. The tasks a worker holds are the ones whose lease_owner is its id.
worker_presence = Table(
    "worker_presence",
    metadata,
    _col("worker_id", String(120), primary_key=True),
    _col("host", String(255), nullable=False),
    _col("pid", Integer, nullable=False),
    _col("started_at", Float, nullable=False),
    _col("seen_at", Float, nullable=False),
    _col("expires_at", Float, index=True, nullable=False),
)


# A rejected input line: kept so `status`/`report` can show it long after submit.
input_errors = Table(
    "input_errors",
    metadata,
    _col("id", BigIntPK, primary_key=True, autoincrement=True),
    _col("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False),
    _col("line_no", Integer, nullable=False),
    _col("task_id", String(512)),
    _col("reason", Text, nullable=False),
    _col("excerpt", Text),
)


# The response cache (cache/entries/): per request digest, a validated answer, or an invalid verdict
# (invalid_error), or a claim marker (neither) while one worker makes the call that the others wait for.
response_cache = Table(
    "response_cache",
    metadata,
    _col("key", String(64), primary_key=True),  # sha256 hex of scope, provider, model, body
    _col("scope", String(120)),  # the API token's scope, once tokens exist
    _col("provider", String(64), nullable=False),
    _col("model", String(200), nullable=False),
    _col("output", Text),  # the validated output as JSON; NULL = a claim marker
    # Set instead of output: this request's answer failed validation (tasks escalate without calling again).
    _col("invalid_error", Text),
    _col("usage", Text),  # the original call's usage as JSON
    _col("cost_picos", BigInteger, default=0, nullable=False),  # copied from the original attempt's ledger row
    _col("job_id", String(40)),  # where the answer came from (no FK: outlives jobs)
    _col("attempt_id", BigInteger),
    _col("claimed_by", String(120)),
    _col("claim_expires_at", Float),
    _col("created_at", Float, nullable=False),
    Index("ix_response_cache_created", "created_at"),
)


# A token of the HTTP service (llmbatch serve): stored as a SHA-256 hash, never in clear.
api_tokens = Table(
    "api_tokens",
    metadata,
    _col("id", String(40), primary_key=True),
    _col("name", String(100), unique=True, nullable=False),
    _col("token_hash", String(64), unique=True, nullable=False),
    _col("daily_cap_picos", BigInteger),
    _col("created_at", Float, nullable=False),
    _col("revoked_at", Float),
)


# A file uploaded to (or written by) the service: the bytes live on disk at `path`.
service_files = Table(
    "service_files",
    metadata,
    _col("id", String(40), primary_key=True),
    _col("owner", String(40), index=True),
    _col("filename", String(300), nullable=False),
    _col("purpose", String(32), nullable=False),  # batch | batch_output
    _col("bytes", BigInteger, nullable=False),
    _col("path", Text, nullable=False),
    _col("created_at", Float, nullable=False),
)


# An OpenAI-style batch: its llmbatch job, its files and the lifecycle times OpenAI reports.
service_batches = Table(
    "service_batches",
    metadata,
    _col("id", String(40), primary_key=True),
    _col("owner", String(40), index=True),
    _col("job_id", String(40), index=True),
    _col("input_file_id", String(40), nullable=False),
    _col("endpoint", String(64), nullable=False),
    _col("completion_window", String(16), nullable=False),
    _col("metadata", Text),  # JSON
    _col("status", String(16), nullable=False),
    _col("errors", Text),  # JSON list of {code, message, line}
    _col("output_file_id", String(40)),
    _col("error_file_id", String(40)),
    _col("created_at", Float, nullable=False),
    _col("in_progress_at", Float),
    _col("finalizing_at", Float),
    _col("completed_at", Float),
    _col("failed_at", Float),
    _col("cancelling_at", Float),
    _col("cancelled_at", Float),
)
