"""Worker presence: the store side of fast recovery. Owns the `worker_presence` table.

A task lease (`lease_seconds`, minutes) protects a task's record; it is too long to wait for when a worker
dies. So each worker process also keeps a presence row that lapses after `presence_ttl_s` (seconds) unless
its event loop renews it. Any live worker that finds a lapsed row hands the dead worker's running tasks back
to the queue at once. The lease check is still what guards recording: a worker that was only frozen and comes
back finds its leases gone (`lease_owner` cleared) and records nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from . import ledger
from .schema import AttemptStatus, JobStatus, TaskStatus, attempts, jobs, tasks, worker_presence
from .tx import Deferred, in_transaction

# A row lapsed this long ago is history, not a worker that may still come back: pruned by the sweep.
PRUNE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class Beat:
    lapsed: bool  # the row was missing or expired before this beat: sweepers may have taken our tasks


def beat(
    conn: Connection, *, worker_id: str, host: str, pid: int, started_at: float, ttl_s: float, now: float | None = None
) -> Beat:
    """Renew this worker's presence. Says whether it had lapsed (then the caller must treat every task it
    claimed before as lost: another worker may hold it now)."""
    now = now if now is not None else time.time()
    before = conn.execute(select(worker_presence.c.expires_at).where(worker_presence.c.worker_id == worker_id)).scalar()
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(worker_presence)
    conn.execute(
        ins.values(
            worker_id=worker_id, host=host, pid=pid, started_at=started_at, seen_at=now, expires_at=now + ttl_s
        ).on_conflict_do_update(index_elements=["worker_id"], set_={"seen_at": now, "expires_at": now + ttl_s})
    )
    return Beat(lapsed=before is not None and before < now)


@in_transaction
def leave(conn: Connection, worker_id: str, *, deferred: Deferred) -> list[tuple[str, int]]:
    """A worker stopping on purpose: its running tasks go back to the queue now (in-flight calls it could not
    finish are settled as unknown outcomes) and its row goes. Returns (job_id, seq) handed back."""
    released = _release(conn, tasks.c.lease_owner == worker_id, attempts.c.worker == worker_id, deferred)
    conn.execute(delete(worker_presence).where(worker_presence.c.worker_id == worker_id))
    return released


@in_transaction
def release_dead(
    conn: Connection, *, lease_s: float, ttl_s: float, now: float | None = None, deferred: Deferred
) -> list[tuple[str, int]]:
    """Hand the running tasks of dead workers back to the queue. Returns (job_id, seq) of each task released.

    Dead means: its presence row has lapsed; or it has no row at all (a worker of an older version, or one
    whose row was pruned) and has not renewed its lease for longer than a presence TTL. One conditional
    UPDATE per job with running tasks, so a worker that renews at the same moment keeps what it renewed
    (its row is read in the same statement)."""
    now = now if now is not None else time.time()
    lapsed = select(worker_presence.c.worker_id).where(worker_presence.c.expires_at < now)
    has_row = exists().where(worker_presence.c.worker_id == tasks.c.lease_owner)
    dead_owner = or_(tasks.c.lease_owner.in_(lapsed), and_(~has_row, tasks.c.lease_expires_at < now + lease_s - ttl_s))
    # A worker without a row leaves its in-flight attempts to claim_tasks/reconcile, as before presence.
    return _release(conn, dead_owner, attempts.c.worker.in_(lapsed), deferred)


def prune(conn: Connection, now: float | None = None) -> int:
    now = now if now is not None else time.time()
    return conn.execute(delete(worker_presence).where(worker_presence.c.expires_at < now - PRUNE_AFTER_S)).rowcount


def live_workers(conn: Connection, now: float | None = None) -> list[dict]:
    now = now if now is not None else time.time()
    rows = (
        conn.execute(
            select(worker_presence).where(worker_presence.c.expires_at >= now).order_by(worker_presence.c.started_at)
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


def _release(conn: Connection, task_held, attempt_held, deferred: Deferred) -> list[tuple[str, int]]:
    """Running tasks matching `task_held` back to queued, and the in-flight calls matching `attempt_held`
    settled as unknown outcomes (billed at their reservation), in one transaction.

    Attempt rows are settled before task rows are touched: the same lock order as a settlement (attempt, then
    task, then the job row at flush). A frozen worker that wakes up in the middle of its own settlement then
    either commits first (its result is recorded and its task is no longer running here) or finds its attempt
    settled (and records nothing, its lease gone): never a second success beside the new holder's.
    One statement per running job, each on the (job_id, status) index: not a scan of a million-row table."""
    job_ids = conn.execute(select(jobs.c.id).where(jobs.c.status == JobStatus.running)).scalars().all()
    released: list[tuple[str, int]] = []
    for job_id in job_ids:
        lost_calls = conn.execute(
            select(attempts.c.id, attempts.c.reserved_picos).where(
                attempts.c.job_id == job_id,
                attempts.c.status == AttemptStatus.in_flight,
                attempts.c.settled.is_(False),
                attempt_held,
                # A provider batch's lines are not lost with the worker: the batch runs on at the provider,
                # and whoever claims its tasks next takes it over and settles them (batch_channel/runner.py).
                attempts.c.channel != "batch",
            )
        ).all()
        for attempt_id, reserved in lost_calls:
            ledger.settle.on_conn(
                conn,
                ledger.unknown_outcome(
                    attempt_id,
                    reserved,
                    AttemptStatus.in_flight,
                    "worker_lost",
                    "the worker holding this call stopped before it answered",
                ),
                deferred=deferred,
            )
        released += conn.execute(
            update(tasks)
            .where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.running, task_held)
            .values(status=TaskStatus.queued, lease_owner=None, lease_expires_at=None)
            .returning(tasks.c.job_id, tasks.c.seq)
        ).all()
    return [(job_id, seq) for job_id, seq in released]
