"""Store operations of the job lifecycle: find a job (id, name, input+spec digests), list jobs, hand back the
leases of a stopped or dead process, mark a job interrupted or running again. Synchronous SQLAlchemy Core."""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import Connection, case, select, update

from . import ledger
from .schema import JobStatus, TaskStatus, jobs, tasks


def find_job_by_name(conn: Connection, name: str) -> dict[str, Any] | None:
    row = (
        conn.execute(select(jobs).where(jobs.c.name == name).order_by(jobs.c.created_at.desc()).limit(1))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def find_job_by_digests(conn: Connection, input_digest: str, spec_digest: str) -> dict[str, Any] | None:
    """The newest job made from the same input bytes with the same effective spec."""
    row = (
        conn.execute(
            select(jobs)
            .where(jobs.c.input_digest == input_digest, jobs.c.spec_digest == spec_digest)
            .order_by(jobs.c.created_at.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def set_digests(conn: Connection, job_id: str, *, input_digest: str, spec_digest: str) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(input_digest=input_digest, spec_digest=spec_digest))


def list_jobs(conn: Connection, *, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    q = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if status is not None:
        q = q.where(jobs.c.status == status)
    return [dict(r) for r in conn.execute(q).mappings().all()]


def set_status(conn: Connection, job_id: str, status: str) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status, finished_at=None))


def release_leases(conn: Connection, job_id: str, owners: list[str], *, why: str) -> int:
    """Hand the running tasks leased to `owners` back to the queue at once (no wait for the lease), and mark
    their attempts still in flight `unknown` (error class `why`): the call may have been billed, so its
    reservation stays held until reconcile. The delivery is not counted against max_deliveries."""
    if not owners:
        return 0
    ledger.mark_lost(
        conn,
        job_id,
        workers=owners,
        error_class=why,
        error_message="the call was cut off before it answered; outcome unknown",
    )
    return conn.execute(
        update(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.running, tasks.c.lease_owner.in_(owners))
        .values(
            status=TaskStatus.queued,
            lease_owner=None,
            lease_expires_at=None,
            deliveries=case((tasks.c.deliveries > 0, tasks.c.deliveries - 1), else_=0),
        )
    ).rowcount


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    try:  # a zombie (killed, not yet reaped by its parent) answers kill(0) but runs nothing
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def dead_local_owners(conn: Connection, job_id: str) -> list[str]:
    """Lease holders of the job's running tasks that were processes on this host and no longer exist
    (worker ids are host:pid:rand, see runtime.worker_id). Their tasks need not wait for the lease to lapse."""
    host = socket.gethostname()
    owners = (
        conn.execute(
            select(tasks.c.lease_owner).distinct().where(tasks.c.job_id == job_id, tasks.c.status == TaskStatus.running)
        )
        .scalars()
        .all()
    )
    dead = []
    for owner in owners:
        parts = (owner or "").rsplit(":", 2)
        if (
            len(parts) == 3
            and parts[0] == host
            and parts[1].isdigit()
            and int(parts[1]) != os.getpid()
            and not _pid_alive(int(parts[1]))
        ):
            dead.append(owner)
    return dead


def unfinished(status: str) -> bool:
    return status in (JobStatus.queued, JobStatus.running, JobStatus.interrupted)
