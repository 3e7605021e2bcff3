"""Task leases: the units a job's open tasks are dispatched in (seq ranges), a worker's claim on a unit's
tasks, renewing and handing back those leases, recording a task's outcome (only its lease holder can), and
finding the work a dead worker or a lost queue message left behind. Synchronous SQLAlchemy Core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import Connection, and_, bindparam, or_, select, update

from .. import job_counts, ledger
from ..ledger.budget import BudgetRows
from ..outcomes import TaskOutcome, finish_task
from ..prepared import Prepared
from ..schema import JobStatus, TaskStatus, jobs, tasks
from ..tx import Deferred, in_transaction
from .jobs import has_open_tasks, is_cancel_requested


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
