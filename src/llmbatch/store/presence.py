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

from .schema import AttemptStatus, JobStatus, TaskStatus, attempts, jobs, tasks, worker_presence

# A row lapsed this long ago is history, not a worker that may still come back: pruned by the sweep.
PRUNE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class Beat:
    lapsed: bool  # the row was missing or expired before this beat: sweepers may have taken our tasks


def beat(conn: Connection, *, worker_id: str, host: str, pid: int, started_at: float, ttl_s: float,
         now: float | None = None) -> Beat:
    """Renew this worker's presence. Says whether it had lapsed (then the caller must treat every task it
    claimed before as lost: another worker may hold it now)."""
    now = now if now is not None else time.time()
    before = conn.execute(select(worker_presence.c.expires_at)
                          .where(worker_presence.c.worker_id == worker_id)).scalar()
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(worker_presence)
    conn.execute(ins.values(worker_id=worker_id, host=host, pid=pid, started_at=started_at, seen_at=now,
                            expires_at=now + ttl_s)
                 .on_conflict_do_update(index_elements=["worker_id"],
                                        set_={"seen_at": now, "expires_at": now + ttl_s}))
    return Beat(lapsed=before is not None and before < now)


def leave(conn: Connection, worker_id: str) -> list[tuple[str, int]]:
    """A worker stopping on purpose: its running tasks go back to the queue now (in-flight calls it could not
    finish become unknown outcomes, settled by reconcile) and its row goes. Returns (job_id, seq) handed back."""
    released = _release(conn, tasks.c.lease_owner == worker_id, time.time())
    conn.execute(delete(worker_presence).where(worker_presence.c.worker_id == worker_id))
    return released


def release_dead(conn: Connection, *, lease_s: float, ttl_s: float, now: float | None = None
                 ) -> list[tuple[str, int]]:
    """Hand the running tasks of dead workers back to the queue. Returns (job_id, seq) of each task released.

    Dead means: its presence row has lapsed; or it has no row at all (a worker of an older version, or one
    whose row was pruned) and has not renewed its lease for longer than a presence TTL. One conditional
    UPDATE per job with running tasks, so a worker that renews at the same moment keeps what it renewed
    (its row is read in the same statement)."""
    now = now if now is not None else time.time()
    lapsed = select(worker_presence.c.worker_id).where(worker_presence.c.expires_at < now)
    has_row = exists().where(worker_presence.c.worker_id == tasks.c.lease_owner)
    dead_owner = or_(tasks.c.lease_owner.in_(lapsed),
                     and_(~has_row, tasks.c.lease_expires_at < now + lease_s - ttl_s))
    return _release(conn, dead_owner, now)


def prune(conn: Connection, now: float | None = None) -> int:
    now = now if now is not None else time.time()
    return conn.execute(delete(worker_presence)
                        .where(worker_presence.c.expires_at < now - PRUNE_AFTER_S)).rowcount


def live_workers(conn: Connection, now: float | None = None) -> list[dict]:
    now = now if now is not None else time.time()
    rows = conn.execute(select(worker_presence).where(worker_presence.c.expires_at >= now)
                        .order_by(worker_presence.c.started_at)).mappings().all()
    return [dict(r) for r in rows]


def _release(conn: Connection, which, now: float) -> list[tuple[str, int]]:
    """Running tasks matching `which` back to queued. One UPDATE per running job: each uses the (job_id,
    status) index, where one over all tasks would scan a million-row table."""
    job_ids = conn.execute(select(jobs.c.id).where(jobs.c.status == JobStatus.running)).scalars().all()
    rows = []
    for job_id in job_ids:
        rows += conn.execute(
            update(tasks).where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.running, which)
            .values(status=TaskStatus.queued, lease_owner=None, lease_expires_at=None)
            .returning(tasks.c.job_id, tasks.c.seq)
        ).all()
    by_job: dict[str, list[int]] = {}
    for job_id, seq in rows:
        by_job.setdefault(job_id, []).append(seq)
    # The calls those tasks had in flight may have been billed: their reservations stay held, marked unknown
    # (finished_at unset, so the next reconcile settles them at once instead of after a grace period).
    for job_id, seqs in by_job.items():
        conn.execute(
            update(attempts).where(attempts.c.job_id == job_id, attempts.c.task_seq.in_(seqs),
                                   attempts.c.status == AttemptStatus.in_flight)
            .values(status=AttemptStatus.unknown, error_class="worker_lost",
                    error_message="the worker holding this call stopped before it answered")
        )
    return [(job_id, seq) for job_id, seq in rows]
