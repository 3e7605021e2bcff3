"""The job rows: creating a job, reading it and its task counts, deciding its terminal status, and the
user's cancel and retry. Synchronous SQLAlchemy Core.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, insert, select, update

from .. import job_counts
from ..prepared import Prepared
from ..schema import JobStatus, TaskStatus, jobs, tasks


def new_job_id() -> str:
    # Sortable by creation time, unguessable enough to not collide across machines.
    return "job-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def create_job(
    conn: Connection,
    *,
    job_id: str | None = None,
    name: str | None,
    spec: dict[str, Any],
    input_path: str | None,
    executor: str,
    simulate: bool,
    budget_picos: int | None,
    max_cost_per_task_picos: int | None,
    owner: str | None = None,
) -> str:
    job_id = job_id or new_job_id()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            name=name,
            status=JobStatus.queued,
            input_path=input_path,
            spec=orjson.dumps(spec).decode(),
            executor=executor,
            simulate=simulate,
            budget_picos=budget_picos,
            max_cost_per_task_picos=max_cost_per_task_picos,
            spent_picos=0,
            reserved_picos=0,
            total_tasks=0,
            invalid_lines=0,
            cancel_requested=False,
            created_at=time.time(),
            owner=owner,
        )
    )
    return job_id


def set_job_counts(conn: Connection, job_id: str, *, total: int, invalid: int) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(total_tasks=total, invalid_lines=invalid))


def get_job(conn: Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    return dict(row) if row else None


def latest_job_id(conn: Connection) -> str | None:
    return conn.execute(select(jobs.c.id).order_by(jobs.c.created_at.desc()).limit(1)).scalar()


def list_jobs(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def task_counts(conn: Connection, job_id: str) -> dict[str, int]:
    """Counted from the tasks (a GROUP BY over every task of the job): exact, for finish_job_if_done.
    Reads use job_counts.counts (the job row)."""
    counts = job_counts.exact_counts(conn, job_id)
    counts["total"] = sum(counts[s] for s in TaskStatus.all)
    return counts


def has_open_tasks(conn: Connection, job_id: str) -> bool:
    return (
        conn.execute(
            select(tasks.c.seq)
            .where(tasks.c.job_id == job_id, tasks.c.status.in_([TaskStatus.queued, TaskStatus.running]))
            .limit(1)
        ).first()
        is not None
    )


def skip_reason_counts(conn: Connection, job_id: str) -> dict[str, int]:
    rows = conn.execute(
        select(tasks.c.skip_reason, func.count())
        .where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.skipped)
        .group_by(tasks.c.skip_reason)
    )
    return {reason or "unknown": n for reason, n in rows}


def finish_job_if_done(conn: Connection, job_id: str) -> str | None:
    """Set the job's terminal status once no task is queued or running. Returns the status, or None if not done.
    Called after every unit of a Celery job: the not-done answer must be one index probe, not a count over
    every task of a million-task job."""
    if has_open_tasks(conn, job_id):
        return None
    counts = task_counts(conn, job_id)
    job = get_job(conn, job_id)
    if job is None:
        return None
    skips = set(skip_reason_counts(conn, job_id))
    if job["cancel_requested"]:
        status = JobStatus.cancelled
    elif counts["total"] == 0:  # every input line was rejected: nothing ran, so nothing succeeded
        status = JobStatus.failed
    elif counts["failed"] == 0 and skips and skips <= {"budget", "daily_cap", "max_cost_per_task"}:
        # Tasks left out by a money limit the user set (job budget, daily cap, per-task cap): not a failure.
        status = JobStatus.budget_exhausted
    elif {"budget", "daily_cap"} & skips:
        status = JobStatus.budget_exhausted
    elif counts["failed"] or counts["skipped"] or counts["cancelled"]:
        status = JobStatus.failed
    else:
        status = JobStatus.succeeded
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status, finished_at=time.time()))
    return status


def request_cancel(conn: Connection, job_id: str) -> int:
    """Flag the job and cancel every task not yet started. Running tasks stop before their next call."""
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
    res = conn.execute(
        update(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.queued)
        .values(
            status=TaskStatus.cancelled, skip_reason="cancelled", error="cancelled by user", finished_at=time.time()
        )
    )
    job_counts.add(conn, job_id, TaskStatus.cancelled, res.rowcount)
    return res.rowcount


_CANCEL_REQUESTED = Prepared(select(jobs.c.cancel_requested).where(jobs.c.id == bindparam("b_job")))


def is_cancel_requested(conn: Connection, job_id: str) -> bool:
    row = _CANCEL_REQUESTED.first(conn, {"b_job": job_id})
    return bool(row[0]) if row is not None else False


def requeue_for_retry(
    conn: Connection, job_id: str, *, budget_picos: int | None = None, include_failed: bool = True
) -> int:
    """`llmbatch retry`: skipped (and failed, and cancelled) tasks go back to queued; optionally a new budget.
    Their earlier attempts stay in the ledger; the task keeps its accumulated cost."""
    values: dict[str, Any] = {"status": JobStatus.running, "finished_at": None, "cancel_requested": False}
    if budget_picos is not None:
        values["budget_picos"] = budget_picos
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
    statuses = [TaskStatus.skipped, TaskStatus.cancelled] + ([TaskStatus.failed] if include_failed else [])
    res = conn.execute(
        update(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.status.in_(statuses))
        .values(
            status=TaskStatus.queued,
            skip_reason=None,
            error=None,
            lease_owner=None,
            lease_expires_at=None,
            deliveries=0,
            finished_at=None,
        )
    )
    job_counts.recount(conn, job_id)
    return res.rowcount
