"""The store's tables (SQLAlchemy Core): jobs, tasks, attempts (the ledger), budget windows and rejected input lines.

Times are float epoch seconds (UTC): lease arithmetic then compares plain numbers on SQLite and Postgres
alike. Money is BigInteger pico-dollars (money.py: exact, never rounded).
"""

from __future__ import annotations

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
    Column("id", String(40), primary_key=True),
    Column("name", String(200)),
    Column("status", String(24), default=JobStatus.queued, nullable=False),
    Column("input_path", Text),
    Column("spec", Text, default="{}", nullable=False),  # JobSpec as JSON
    Column("executor", String(16), default="local", nullable=False),
    Column("simulate", Boolean, default=False, nullable=False),
    Column("budget_picos", BigInteger),
    Column("max_cost_per_task_picos", BigInteger),
    Column("spent_picos", BigInteger, default=0, nullable=False),
    Column("reserved_picos", BigInteger, default=0, nullable=False),
    Column("total_tasks", Integer, default=0, nullable=False),
    Column("invalid_lines", Integer, default=0, nullable=False),
    # Finished tasks per status, moved with each task's status (job_counts.py; migration 0012).
    Column("succeeded_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    Column("failed_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    Column("skipped_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    Column("cancelled_tasks", Integer, default=0, server_default=text("0"), nullable=False),
    Column("cancel_requested", Boolean, default=False, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    # Last claim or settlement: a running job with work left and no activity for a lease period has lost
    # its queue messages (every worker died); the sweeper re-publishes its units.
    Column("last_activity_at", Float),
    # Why the job stopped dispatching before its tasks ran out (an overrun took spend past the cap).
    Column("stop_reason", Text),
    # What the job was made from (sha256 of the input file's bytes, and of its effective spec): running the same
    # command again finds this job and resumes it instead of paying again (migration 0003).
    Column("input_digest", String(64)),
    Column("spec_digest", String(64)),
    Column("owner", String(40), index=True),  # the API token (service) that made it
    # migration 0003: re-run lookup, --name, `llmbatch jobs` newest first
    Index("ix_jobs_digests", "input_digest", "spec_digest"),
    Index("ix_jobs_name", "name"),
    Index("ix_jobs_created_at", "created_at"),
)


tasks = Table(
    "tasks",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("task_id", String(512), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("task_type", String(16), nullable=False),
    Column("payload", Text, nullable=False),  # the validated TaskLine as JSON (job defaults applied)
    Column("status", String(16), default=TaskStatus.queued, nullable=False),
    Column("provider", String(64)),
    Column("model", String(200)),
    Column("output", Text),  # JSON-encoded
    Column("error", Text),
    Column("skip_reason", String(40)),
    Column("input_tokens", BigInteger, default=0, nullable=False),
    Column("cached_tokens", BigInteger, default=0, nullable=False),
    Column("cache_write_tokens", BigInteger, default=0, nullable=False),
    Column("output_tokens", BigInteger, default=0, nullable=False),
    Column("reasoning_tokens", BigInteger, default=0, nullable=False),
    Column("cost_picos", BigInteger, default=0, nullable=False),
    Column("attempts", Integer, default=0, nullable=False),
    Column("escalations", Integer, default=0, nullable=False),
    Column("deliveries", Integer, default=0, nullable=False),
    Column("lease_owner", String(120)),
    Column("lease_expires_at", Float),
    Column("finished_at", Float),
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
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_seq", Integer, nullable=False),
    Column("task_id", String(512), nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("channel", String(8), default="sync", nullable=False),  # sync | batch
    Column("purpose", String(16), default="first", nullable=False),  # first | retry | fallback | escalation
    Column("status", String(16), default=AttemptStatus.in_flight, nullable=False),
    Column("settled", Boolean, default=False, nullable=False),
    Column("cost_source", String(16)),  # usage | none | reservation | unpriced
    Column("error_class", String(40)),
    Column("error_message", Text),
    Column("http_status", Integer),
    Column("pricing_error", Text),
    Column("input_tokens", BigInteger, default=0, nullable=False),
    Column("cached_tokens", BigInteger, default=0, nullable=False),
    Column("cache_write_tokens", BigInteger, default=0, nullable=False),
    Column("output_tokens", BigInteger, default=0, nullable=False),
    Column("reasoning_tokens", BigInteger, default=0, nullable=False),
    Column("reserved_picos", BigInteger, default=0, nullable=False),
    Column("cost_picos", BigInteger, default=0, nullable=False),
    # A cache attempt (channel "cache", cost 0): the original attempt's cost it did not pay again.
    Column("saved_picos", BigInteger, default=0, nullable=False),
    # The daily window(s) holding the reservation, space-separated: "2026-11-30" and/or "2026-11-30/tok_..."
    Column("budget_window", String(64)),
    Column("latency_ms", Integer),
    Column("provider_request_id", String(200)),
    # Billed above its reservation (the provider counted more tokens than our bound allowed for).
    Column("overrun", Boolean, default=False, nullable=False),
    Column("finish_reason", String(40)),  # the provider's, as it sent it
    Column("served_model", String(200)),  # the model the provider says answered
    Column("worker", String(120)),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    # --- discount-channels: a batch-channel attempt's provider batch (provider_batches.id) and its provider id
    Column("batch_ref", BigInteger),
    Column("provider_batch_id", String(200)),
    UniqueConstraint("job_id", "task_seq", "attempt_no", name="uq_attempts_task_no"),
    Index("ix_attempts_job_status", "job_id", "status"),
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
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("tag", String(120), nullable=False),  # names the batch at the provider (metadata / display name)
    Column("provider_batch_id", String(200)),
    Column("state", String(16), nullable=False),  # creating | submitted | settled | failed
    Column("lines", Integer, nullable=False),
    Column("reserved_picos", BigInteger, nullable=False),
    Column("owner", String(120)),  # the worker polling it, while lease_until lasts
    Column("lease_until", Float),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("submitted_at", Float),
    Column("polled_at", Float),
    Column("ended_at", Float),
    UniqueConstraint("tag", name="uq_provider_batches_tag"),
    Index("ix_provider_batches_job_state", "job_id", "state"),
)


# The global daily cap: one row per UTC day, reserved into atomically like a job's budget.
budget_windows = Table(
    "budget_windows",
    metadata,
    Column("window", String(64), primary_key=True),  # a UTC day, or "day/token id"
    Column("cap_picos", BigInteger, nullable=False),
    Column("spent_picos", BigInteger, default=0, nullable=False),
    Column("reserved_picos", BigInteger, default=0, nullable=False),
)


# A worker process's liveness, separate from task leases: renewed every few seconds by the process's event loop.
# When it lapses, live workers hand the dead one's tasks to others at once instead of waiting for their leases
# (lease_seconds) to expire. The tasks a worker holds are the ones whose lease_owner is its id.
worker_presence = Table(
    "worker_presence",
    metadata,
    Column("worker_id", String(120), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("expires_at", Float, index=True, nullable=False),
)


# A rejected input line: kept so `status`/`report` can show it long after submit.
input_errors = Table(
    "input_errors",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("task_id", String(512)),
    Column("reason", Text, nullable=False),
    Column("excerpt", Text),
)


# The response cache (cache/entries.py): per request digest, a validated answer, or an invalid verdict
# (invalid_error), or a claim marker (neither) while one worker makes the call that the others wait for.
response_cache = Table(
    "response_cache",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256 hex of scope, provider, model, body
    Column("scope", String(120)),  # the API token's scope, once tokens exist
    Column("provider", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("output", Text),  # the validated output as JSON; NULL = a claim marker
    # Set instead of output: this request's answer failed validation (tasks escalate without calling again).
    Column("invalid_error", Text),
    Column("usage", Text),  # the original call's usage as JSON
    Column("cost_picos", BigInteger, default=0, nullable=False),  # copied from the original attempt's ledger row
    Column("job_id", String(40)),  # where the answer came from (no FK: outlives jobs)
    Column("attempt_id", BigInteger),
    Column("claimed_by", String(120)),
    Column("claim_expires_at", Float),
    Column("created_at", Float, nullable=False),
    Index("ix_response_cache_created", "created_at"),
)


# A token of the HTTP service (llmbatch serve): stored as a SHA-256 hash, never in clear.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), unique=True, nullable=False),
    Column("token_hash", String(64), unique=True, nullable=False),
    Column("daily_cap_picos", BigInteger),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)


# A file uploaded to (or written by) the service: the bytes live on disk at `path`.
service_files = Table(
    "service_files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(40), index=True),
    Column("filename", String(300), nullable=False),
    Column("purpose", String(32), nullable=False),  # batch | batch_output
    Column("bytes", BigInteger, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)


# An OpenAI-style batch: its llmbatch job, its files and the lifecycle times OpenAI reports.
service_batches = Table(
    "service_batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(40), index=True),
    Column("job_id", String(40), index=True),
    Column("input_file_id", String(40), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("metadata", Text),  # JSON
    Column("status", String(16), nullable=False),
    Column("errors", Text),  # JSON list of {code, message, line}
    Column("output_file_id", String(40)),
    Column("error_file_id", String(40)),
    Column("created_at", Float, nullable=False),
    Column("in_progress_at", Float),
    Column("finalizing_at", Float),
    Column("completed_at", Float),
    Column("failed_at", Float),
    Column("cancelling_at", Float),
    Column("cancelled_at", Float),
)
