"""SQLAlchemy 2 models: jobs, tasks, attempts (the ledger), budget windows and rejected input lines.

Times are float epoch seconds (UTC): lease arithmetic then compares plain numbers on SQLite and Postgres
alike. Money is BigInteger micro-dollars. Hot paths use the Core tables (`Job.__table__`) directly.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
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
    terminal = frozenset({"succeeded", "failed", "budget_exhausted", "cancelled"})


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

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), default=JobStatus.queued)
    input_path: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(Text, default="{}")  # JobSpec as JSON
    executor: Mapped[str] = mapped_column(String(16), default="local")
    simulate: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_micros: Mapped[int | None] = mapped_column(BigInteger)
    max_cost_per_task_micros: Mapped[int | None] = mapped_column(BigInteger)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tasks: Mapped[int] = mapped_column(Integer, default=0)
    invalid_lines: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # Last claim or settlement: a running job with work left and no activity for a lease period has lost
    # its queue messages (every worker died); the sweeper re-publishes its units.
    last_activity_at: Mapped[float | None] = mapped_column(Float)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("job_id", "task_id", name="uq_tasks_job_task_id"),
        Index("ix_tasks_job_status", "job_id", "status"),
        # --- throughput (migration 0009): report reads at a million tasks ---
        Index("ix_tasks_job_cost", "job_id", "cost_micros"),
        Index("ix_tasks_job_escalated", "job_id", "escalations",
              sqlite_where=text("escalations > 0"), postgresql_where=text("escalations > 0")),
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
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
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
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    budget_window: Mapped[str | None] = mapped_column(String(16))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class BudgetWindow(Base):
    """The global daily cap: one row per UTC day, reserved into atomically like a job's budget."""

    __tablename__ = "budget_windows"

    window: Mapped[str] = mapped_column(String(16), primary_key=True)
    cap_micros: Mapped[int] = mapped_column(BigInteger)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class InputError(Base):
    """A rejected input line: kept so `status`/`report` can show it long after submit."""

    __tablename__ = "input_errors"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str | None] = mapped_column(Text)


jobs = Job.__table__
tasks = Task.__table__
attempts = Attempt.__table__
budget_windows = BudgetWindow.__table__
input_errors = InputError.__table__
