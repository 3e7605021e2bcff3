"""Attempts whose outcome cannot be known (a timeout, a reset after sending, a worker lost mid-call): marked
unknown, keeping their reservation (the call may have been billed), until reconcile() settles them billed at
the reservation or not at all."""

from __future__ import annotations

import time

from sqlalchemy import Connection, Engine, and_, bindparam, or_, select, update

from ..db import is_transient_conflict, reading
from ..prepared import Prepared
from ..schema import AttemptStatus, TaskStatus, attempts, tasks
from ..tx import in_transaction
from .settlement import Settlement, settle


@in_transaction
def mark_unknown(
    conn: Connection, attempt_id: int, *, error_class: str, error_message: str, latency_ms: int | None = None
) -> None:
    """The request may have reached the provider but we have no answer: keep the reservation (it might have
    been billed) until reconcile decides."""
    conn.execute(
        update(attempts)
        .where(attempts.c.id == attempt_id, attempts.c.settled.is_(False))
        .values(
            status=AttemptStatus.unknown,
            error_class=error_class,
            error_message=error_message,
            latency_ms=latency_ms,
            finished_at=time.time(),
        )
    )


def mark_lost(
    conn: Connection,
    job_id: str,
    *,
    seqs: list[int] | None = None,
    workers: list[str] | None = None,
    error_class: str,
    error_message: str,
) -> None:
    """The calls still in flight for these tasks (or made by these workers) lost their worker: their outcome
    is unknown. They keep their reservation (they might have been billed) until reconcile, or a late settle,
    decides."""
    if workers is None and seqs is not None:  # a claim's tasks (repo.claim_tasks): once per unit, prepared
        if seqs:
            _MARK_LOST_TASKS.run(
                conn, {"b_job": job_id, "b_seqs": seqs, "b_eclass": error_class, "b_emsg": error_message}
            )
        return
    lost = [attempts.c.job_id == job_id, attempts.c.status == AttemptStatus.in_flight, attempts.c.settled.is_(False)]
    if seqs is not None:
        lost.append(attempts.c.task_seq.in_(seqs))
    if workers is not None:
        lost.append(attempts.c.worker.in_(workers))
    conn.execute(
        update(attempts)
        .where(*lost)
        .values(status=AttemptStatus.unknown, error_class=error_class, error_message=error_message)
    )


_MARK_LOST_TASKS = Prepared(
    update(attempts)
    .where(
        attempts.c.job_id == bindparam("b_job"),
        attempts.c.status == AttemptStatus.in_flight,
        attempts.c.settled.is_(False),
        attempts.c.task_seq.in_(bindparam("b_seqs", expanding=True)),
    )
    .values(status=AttemptStatus.unknown, error_class=bindparam("b_eclass"), error_message=bindparam("b_emsg"))
)


def reconcile(
    engine: Engine, *, job_id: str | None = None, assume: str = "billed", grace_s: float = 0.0, now: float | None = None
) -> list[int]:
    """Settle attempts whose outcome is unknown: marked unknown, or still in flight with no live lease on
    their task. `assume="billed"` charges the reservation (the most the call could have cost: the cap stays
    true against the real invoice); `assume="unbilled"` releases it. Returns the attempt ids settled."""
    if assume not in ("billed", "unbilled"):
        raise ValueError("assume must be 'billed' or 'unbilled'")
    now = now if now is not None else time.time()
    lease_dead = or_(
        tasks.c.status != TaskStatus.running, tasks.c.lease_expires_at.is_(None), tasks.c.lease_expires_at < now
    )
    q = (
        select(
            attempts.c.id,
            attempts.c.reserved_picos,
            attempts.c.status,
            attempts.c.error_class,
            attempts.c.error_message,
        )
        .join(tasks, and_(tasks.c.job_id == attempts.c.job_id, tasks.c.seq == attempts.c.task_seq))
        .where(
            attempts.c.settled.is_(False),
            or_(
                and_(
                    attempts.c.status == AttemptStatus.unknown,
                    or_(attempts.c.finished_at.is_(None), attempts.c.finished_at < now - grace_s),
                ),
                and_(attempts.c.status == AttemptStatus.in_flight, lease_dead),
            ),
        )
    )
    if job_id is not None:
        q = q.where(attempts.c.job_id == job_id)
    done: list[int] = []
    with reading(engine) as conn:
        candidates = conn.execute(q).all()
    for attempt_id, reserved, status, error_class, error_message in candidates:
        settlement = unknown_outcome(
            attempt_id, reserved, status, error_class, error_message, billed=assume == "billed"
        )
        if _settle_retrying(engine, settlement):
            done.append(attempt_id)
    return done


def _settle_retrying(engine: Engine, settlement: Settlement, tries: int = 4) -> bool:
    """settle() in its own transaction, run again when Postgres aborted it for a lock conflict. A settle takes
    the attempt's row, then its task's; a worker's group commit claiming that task again takes them the other
    way round (the task, then its attempts in mark_lost), and one of the two is aborted. Giving up there left
    every later attempt of the sweep unsettled until the next sweep."""
    for n in range(tries - 1):
        try:
            return settle(engine, settlement)
        except Exception as e:
            if not is_transient_conflict(e):
                raise
            time.sleep(0.05 * (n + 1))
    return settle(engine, settlement)  # the last try: whatever it raises is the sweep's error


def unknown_outcome(
    attempt_id: int,
    reserved_picos: int,
    status: str,
    error_class: str | None,
    error_message: str | None,
    *,
    billed: bool = True,
) -> Settlement:
    """The settlement of a call whose outcome cannot be known: billed at its reservation (the most it can have
    cost, so the cap stays true against the invoice) or not at all."""
    # Keep why the outcome was unknown (timeout, reset, worker_lost...): the audit needs it.
    why = f"{error_class}: {error_message}; " if error_class else ""
    return Settlement(
        attempt_id=attempt_id,
        status=AttemptStatus.unknown,
        cost_picos=reserved_picos if billed else 0,
        cost_source="reservation" if billed else "none",
        error_class=error_class or "reconciled",
        error_message=why
        + (
            f"outcome unknown ({status}); reconciled as billed at the reserved upper bound"
            if billed
            else f"outcome unknown ({status}); reconciled as not billed"
        ),
    )
