"""Repository functions for jobs and tasks: creation, leased claims, outcomes and the read side.
Synchronous SQLAlchemy Core. The money-moving operations and the `attempts` table belong to the ledger
(ledger/); transaction helpers are in tx.py.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable

import orjson
from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from . import job_counts, ledger, reads
from .ledger.budget import BudgetRows
from .outcomes import TaskOutcome, finish_task
from .prepared import Prepared
from .schema import JobStatus, TaskStatus, attempts, input_errors, jobs, tasks
from .tx import Deferred, in_transaction


def new_job_id() -> str:
    # Sortable by creation time, unguessable enough to not collide across machines.
    return "job-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# ---------------------------------------------------------------------------------------------- jobs


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


def open_seq_ranges(conn: Connection, job_id: str, chunk_size: int) -> list[tuple[int, int]]:
    """Contiguous seq ranges (at most chunk_size wide) that still hold queued or running tasks."""
    seqs = conn.execute(
        select(tasks.c.seq)
        .where(tasks.c.job_id == job_id, tasks.c.status.in_([TaskStatus.queued, TaskStatus.running]))
        .order_by(tasks.c.seq)
    ).scalars()
    return seq_ranges(seqs, chunk_size)


def seq_ranges(seqs: Iterable[int], chunk_size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    lo: int | None = None
    prev = 0
    for s in seqs:
        if lo is None:
            lo = prev = s
        elif s == prev + 1 and s - lo < chunk_size:
            prev = s
        else:
            out.append((lo, prev))
            lo = prev = s
    if lo is not None:
        out.append((lo, prev))
    return out


# -------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class ClaimedTask:
    job_id: str
    seq: int
    task_id: str
    payload: str
    deliveries: int


# A claim: the unit's claimable tasks (queued, or running under a lapsed lease: their worker died) leased to
# the claiming worker. Built once and run on SQLite's driver (prepared.py): a claim runs once per unit.
_CLAIM = Prepared(
    update(tasks)
    .where(
        tasks.c.job_id == bindparam("b_job"),
        tasks.c.seq >= bindparam("b_lo"),
        tasks.c.seq <= bindparam("b_hi"),
        or_(
            tasks.c.status == TaskStatus.queued,
            and_(tasks.c.status == TaskStatus.running, tasks.c.lease_expires_at < bindparam("b_now")),
        ),
    )
    .values(
        status=TaskStatus.running,
        lease_owner=bindparam("b_worker"),
        lease_expires_at=bindparam("b_expires"),
        deliveries=tasks.c.deliveries + 1,
    )
    .returning(tasks.c.seq, tasks.c.task_id, tasks.c.payload, tasks.c.deliveries)
)


@in_transaction
def claim_tasks(
    conn: Connection,
    job_id: str,
    lo: int,
    hi: int,
    *,
    worker: str,
    lease_s: float,
    max_deliveries: int,
    now: float | None = None,
    deferred: Deferred,
) -> tuple[list[ClaimedTask], int]:
    """Lease the claimable tasks with lo <= seq <= hi: queued ones, and running ones whose lease expired
    (their worker died). Idempotent: a redelivered chunk claims only what is still unfinished.
    Returns (claimed tasks, number sent to `failed` as poison)."""
    now = now if now is not None else time.time()
    if is_cancel_requested(conn, job_id):
        return [], 0
    rows = _CLAIM.all(
        conn,
        {"b_job": job_id, "b_lo": lo, "b_hi": hi, "b_now": now, "b_worker": worker, "b_expires": now + lease_s},
    )
    if not rows:
        return [], 0
    # Attempts still in flight for these tasks belonged to a worker whose lease lapsed: their outcome
    # is unknown. They keep their reservation until reconcile (or a late settle) decides.
    ledger.mark_lost(
        conn,
        job_id,
        seqs=[seq for seq, _, _, _ in rows],
        error_class="worker_lost",
        error_message="the worker holding this call stopped renewing its lease",
    )
    poison = [seq for seq, _, _, deliveries in rows if deliveries > max_deliveries]
    if poison:
        conn.execute(
            update(tasks)
            .where(tasks.c.job_id == job_id, tasks.c.seq.in_(poison))
            .values(
                status=TaskStatus.failed,
                lease_owner=None,
                finished_at=now,
                error=f"delivered more than {max_deliveries} times without finishing; "
                f"treated as poison (raise max_deliveries to allow more)",
            )
        )
    rows_part = deferred.part(BudgetRows)
    job_counts.note(rows_part, job_id, TaskStatus.failed, len(poison))
    rows_part.started.add(job_id)  # queued -> running, and activity, at the end of the transaction
    if poison:
        poisoned = set(poison)
        rows = [r for r in rows if r[0] not in poisoned]
    claimed = [ClaimedTask(job_id, seq, task_id, payload, deliveries) for seq, task_id, payload, deliveries in rows]
    return claimed, len(poison)


@in_transaction
def renew_leases(conn: Connection, job_id: str, seqs: list[int], *, worker: str, lease_s: float) -> int:
    if not seqs:
        return 0
    return conn.execute(
        update(tasks)
        .where(
            tasks.c.job_id == job_id,
            tasks.c.seq.in_(seqs),
            tasks.c.lease_owner == worker,
            tasks.c.status == TaskStatus.running,
        )
        .values(lease_expires_at=time.time() + lease_s)
    ).rowcount


@in_transaction
def release_claims(
    conn: Connection, job_id: str, seqs: list[int], *, worker: str, unstarted: Iterable[int] = ()
) -> int:
    """Hand this worker's unfinished claims back to the queue (a stopping worker): queued again, lease
    cleared, so the next claim takes them at once. Only running tasks this worker still leases; a task
    whose outcome is already recorded is untouched, and a late record of a released task is refused.
    Tasks in `unstarted` never reached a slot: their delivery is not counted toward max_deliveries."""
    if not seqs:
        return 0
    mine = and_(tasks.c.job_id == job_id, tasks.c.lease_owner == worker, tasks.c.status == TaskStatus.running)
    values = {"status": TaskStatus.queued, "lease_owner": None, "lease_expires_at": None}
    unstarted = sorted(set(unstarted) & set(seqs))
    n = 0
    if unstarted:
        n += conn.execute(
            update(tasks).where(mine, tasks.c.seq.in_(unstarted)).values(deliveries=tasks.c.deliveries - 1, **values)
        ).rowcount
    rest = sorted(set(seqs) - set(unstarted))
    if rest:
        n += conn.execute(update(tasks).where(mine, tasks.c.seq.in_(rest)).values(**values)).rowcount
    return n


def stalled_jobs(conn: Connection, idle_s: float, now: float | None = None) -> list[str]:
    """Running jobs with work left and no claim or settlement for `idle_s`: their queue messages are gone
    (every worker holding them died, or the broker lost them). Cheap: reads the jobs table only, then
    checks each candidate with the (job_id, status) index."""
    now = now if now is not None else time.time()
    candidates = (
        conn.execute(
            select(jobs.c.id).where(
                jobs.c.status.in_([JobStatus.running, JobStatus.queued]),
                jobs.c.cancel_requested.is_(False),
                or_(jobs.c.last_activity_at.is_(None), jobs.c.last_activity_at < now - idle_s),
                jobs.c.created_at < now - idle_s,
            )
        )
        .scalars()
        .all()
    )
    return [job_id for job_id in candidates if has_open_tasks(conn, job_id)]


def expired_lease_ranges(conn: Connection, chunk_size: int, now: float | None = None) -> list[tuple[str, int, int]]:
    now = now if now is not None else time.time()
    rows = conn.execute(
        select(tasks.c.job_id, tasks.c.seq)
        .where(tasks.c.status == TaskStatus.running, tasks.c.lease_expires_at < now)
        .order_by(tasks.c.job_id, tasks.c.seq)
    ).all()
    out: list[tuple[str, int, int]] = []
    by_job: dict[str, list[int]] = {}
    for job_id, seq in rows:
        by_job.setdefault(job_id, []).append(seq)
    for job_id, seqs in by_job.items():
        out += [(job_id, lo, hi) for lo, hi in seq_ranges(seqs, chunk_size)]
    return out


@in_transaction
def record_outcome(conn: Connection, outcome: TaskOutcome, *, deferred: Deferred) -> bool:
    """Record the task's outcome once: only the lease holder of a running task can. A redelivered copy
    that lost its lease records nothing (its attempts are still in the ledger)."""
    return finish_task(conn, outcome, deferred.part(BudgetRows))


# ------------------------------------------------------------------------------------------- reading


def _pages(conn: Connection, table, key, job_id: str, batch: int, start):
    """Rows of one job in `key` order, fetched in keyset pages: memory stays flat at any job size."""
    last = start
    while True:
        rows = (
            conn.execute(select(table).where(table.c.job_id == job_id, key > last).order_by(key).limit(batch))
            .mappings()
            .all()
        )
        if not rows:
            return
        yield from rows
        last = rows[-1][key.name]


def iter_task_rows(conn: Connection, job_id: str, batch: int = 2000):
    """All tasks of a job in input order."""
    return _pages(conn, tasks, tasks.c.seq, job_id, batch, -1)


def iter_attempt_rows(conn: Connection, job_id: str, batch: int = 5000):
    """All ledger rows of a job in the order they were written."""
    return _pages(conn, attempts, attempts.c.id, job_id, batch, 0)


def input_error_rows(conn: Connection, job_id: str, limit: int | None = 1000) -> list[dict[str, Any]]:
    q = select(input_errors).where(input_errors.c.job_id == job_id).order_by(input_errors.c.line_no)
    rows = conn.execute(q.limit(limit) if limit is not None else q).mappings().all()
    return [dict(r) for r in rows]


def by_model(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    """Ledger aggregated per provider/model: attempts (failed ones included), tasks touched, tokens, cost; most
    expensive first. From the ledger groups (reads.py: one pass over the job's attempts, exact integers)."""
    return reads.by_model(reads.ledger_groups(conn, job_id))
