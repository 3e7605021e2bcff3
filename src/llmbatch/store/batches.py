"""The store side of the batch channel: provider batches, their lines' reservations, ownership.

A batch is written before it is sent: one transaction inserts its provider_batches row ("creating") and
reserves every line's upper bound at the batch price as an attempt (channel batch, status in_batch,
batch_ref = the row). Only then is it sent; the provider's id is recorded after. Whoever owns the row
(`owner` while `lease_until` lasts) polls it, and holds the leases of its lines' tasks; when the owner dies,
the next worker to claim one of those tasks takes the row over and finds the provider batch by its tag.

in_batch attempts are not "in flight" for claim_tasks and reconcile: their outcome is not unknown, the
batch's owner settles each of them from its own line.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from . import ledger
from .schema import TaskStatus, attempts, jobs, provider_batches, tasks
from .tx import Deferred, in_transaction

IN_BATCH = "in_batch"  # attempt status: reserved, part of a provider batch, not yet settled
CREATING, SUBMITTED, SETTLED, FAILED = "creating", "submitted", "settled", "failed"


def affordable(conn: Connection, job_id: str, amounts: list[int]) -> int:
    """How many of `amounts`, in order, fit the job's budget now."""
    job = conn.execute(
        select(jobs.c.budget_picos, jobs.c.spent_picos, jobs.c.reserved_picos).where(jobs.c.id == job_id)
    ).first()
    if job is None or job.budget_picos is None:
        return len(amounts)
    room = job.budget_picos - job.spent_picos - job.reserved_picos
    n = 0
    for a in amounts:
        if a > room:
            break
        room -= a
        n += 1
    return n


@in_transaction
def open_batch(
    conn: Connection,
    *,
    job_id: str,
    provider: str,
    model: str,
    tag: str,
    lines: list[tuple[int, str, int]],
    worker: str,
    lease_s: float,
    daily_cap_picos: int | None,
    deferred: Deferred,
) -> tuple[int, list[int]]:
    """Insert the batch row and reserve every line ((seq, task_id, upper bound) at the batch price) in one
    transaction. Raises BudgetExceeded, writing nothing, when the lines do not fit together."""
    now = time.time()
    row_id = conn.execute(
        insert(provider_batches)
        .values(
            job_id=job_id,
            provider=provider,
            model=model,
            tag=tag,
            state=CREATING,
            lines=len(lines),
            reserved_picos=sum(a for _, _, a in lines),
            owner=worker,
            lease_until=now + lease_s,
            created_at=now,
        )
        .returning(provider_batches.c.id)
    ).scalar_one()
    ids = ledger.reserve_many(
        conn,
        [
            ledger.Reservation(
                job_id=job_id,
                task_seq=seq,
                task_id=task_id,
                provider=provider,
                model=model,
                amount_picos=amount,
                purpose="first",
                worker=worker,
                daily_cap_picos=daily_cap_picos,
                channel="batch",
                now=now,
            )
            for seq, task_id, amount in lines
        ],
        deferred=deferred,
    )
    conn.execute(update(attempts).where(attempts.c.id.in_(ids)).values(batch_ref=row_id, status=IN_BATCH))
    return row_id, ids


def record_submitted(conn: Connection, row_id: int, provider_batch_id: str) -> None:
    now = time.time()
    conn.execute(
        update(provider_batches)
        .where(provider_batches.c.id == row_id)
        .values(provider_batch_id=provider_batch_id, state=SUBMITTED, submitted_at=now, polled_at=now)
    )
    conn.execute(update(attempts).where(attempts.c.batch_ref == row_id).values(provider_batch_id=provider_batch_id))


def mark(conn: Connection, row_id: int, state: str, *, error: str | None = None, ended: bool = False) -> None:
    values: dict = {"state": state, "owner": None, "lease_until": None}
    if error is not None:
        values["error"] = error[:2000]
    if ended:
        values["ended_at"] = time.time()
    conn.execute(update(provider_batches).where(provider_batches.c.id == row_id).values(**values))


def polled(conn: Connection, row_id: int) -> None:
    conn.execute(update(provider_batches).where(provider_batches.c.id == row_id).values(polled_at=time.time()))


def take_over(conn: Connection, row_id: int, worker: str, lease_s: float) -> dict | None:
    """Own the row if nobody else does (or the owner's lease lapsed); returns it, or None."""
    now = time.time()
    ok = conn.execute(
        update(provider_batches)
        .where(
            provider_batches.c.id == row_id,
            provider_batches.c.state.in_((CREATING, SUBMITTED)),
            or_(
                provider_batches.c.owner.is_(None),
                provider_batches.c.owner == worker,
                provider_batches.c.lease_until < now,
            ),
        )
        .values(owner=worker, lease_until=now + lease_s)
    ).rowcount
    if not ok:
        return None
    return dict(conn.execute(select(provider_batches).where(provider_batches.c.id == row_id)).mappings().one())


def renew(conn: Connection, row_ids: list[int], worker: str, lease_s: float) -> None:
    """Keep owning these rows, and hold the leases of their unsettled lines' tasks (taken over from any
    worker that claimed one of them meanwhile: only the batch's owner can settle and record them)."""
    if not row_ids:
        return
    until = time.time() + lease_s
    conn.execute(
        update(provider_batches)
        .where(provider_batches.c.id.in_(row_ids), provider_batches.c.owner == worker)
        .values(lease_until=until)
    )
    lines = select(attempts.c.task_seq).where(attempts.c.batch_ref.in_(row_ids), attempts.c.settled.is_(False))
    job_ids = select(provider_batches.c.job_id).where(provider_batches.c.id.in_(row_ids)).distinct()
    conn.execute(
        update(tasks)
        .where(tasks.c.job_id.in_(job_ids), tasks.c.seq.in_(lines), tasks.c.status == TaskStatus.running)
        .values(lease_owner=worker, lease_expires_at=until)
    )


def open_lines(conn: Connection, row_id: int) -> list[dict]:
    """The batch's unsettled lines: attempt id, task seq and id, reservation, and the task's payload."""
    q = (
        select(
            attempts.c.id.label("attempt_id"),
            attempts.c.task_seq.label("seq"),
            attempts.c.task_id,
            attempts.c.reserved_picos,
            tasks.c.payload,
            tasks.c.deliveries,
        )
        .join(tasks, and_(tasks.c.job_id == attempts.c.job_id, tasks.c.seq == attempts.c.task_seq))
        .where(attempts.c.batch_ref == row_id, attempts.c.settled.is_(False))
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def refs_of(conn: Connection, job_id: str, seqs: list[int]) -> dict[int, int]:
    """seq -> provider_batches.id for the tasks among `seqs` that have a line in a batch not yet settled."""
    if not seqs:
        return {}
    rows = conn.execute(
        select(attempts.c.task_seq, attempts.c.batch_ref).where(
            attempts.c.job_id == job_id,
            attempts.c.task_seq.in_(seqs),
            attempts.c.status == IN_BATCH,
            attempts.c.settled.is_(False),
        )
    ).all()
    return {seq: ref for seq, ref in rows}


def open_rows(conn: Connection, job_id: str) -> list[dict]:
    return [
        dict(r)
        for r in conn.execute(
            select(provider_batches).where(
                provider_batches.c.job_id == job_id, provider_batches.c.state.in_((CREATING, SUBMITTED))
            )
        ).mappings()
    ]


def job_rows(conn: Connection, job_id: str) -> list[dict]:
    return [
        dict(r)
        for r in conn.execute(
            select(provider_batches).where(provider_batches.c.job_id == job_id).order_by(provider_batches.c.id)
        ).mappings()
    ]


def measured_turnaround(conn: Connection, provider: str, sample: int = 20) -> float | None:
    """The slowest of the provider's last `sample` batches that ended on their own, in seconds; None until
    one has."""
    rows = (
        conn.execute(
            select(provider_batches.c.ended_at - provider_batches.c.submitted_at)
            .where(
                provider_batches.c.provider == provider,
                provider_batches.c.state == SETTLED,
                provider_batches.c.error.is_(None),
                provider_batches.c.submitted_at.is_not(None),
            )
            .order_by(provider_batches.c.id.desc())
            .limit(sample)
        )
        .scalars()
        .all()
    )
    return max(rows) if rows else None


def count_rows(conn: Connection, job_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(provider_batches).where(provider_batches.c.job_id == job_id)
        ).scalar_one()
    )


def set_channel(conn: Connection, attempt_id: int, channel: str) -> None:
    conn.execute(update(attempts).where(attempts.c.id == attempt_id).values(channel=channel))
