"""The ledger: reserve before every call, settle after it, reconcile what is unknown. Owns the `attempts`
table; the budget rows it holds and releases (job rows, daily windows) are budget.py.

Following one reservation:
1. reserve() / reserve_many() insert the attempt row holding `amount_picos` (_INSERT_ATTEMPT below; on
   Postgres, many at once as one INSERT over a json batch, _bulk.py) and queue the hold (budget.BudgetRows);
2. at the end of the transaction the hold is one conditional UPDATE per row that caps it,
   `spent + reserved + amount <= cap` (budget.py: the job, the global day, the token's day), so any number
   of concurrent workers can never overspend. A hold that does not fit is refused (BudgetExceeded): its
   attempt row goes and nothing else stays held;
3. settle() / settle_and_record() turn the hold into the actual cost exactly once (`settled` flips
   false -> true in a conditional UPDATE, _SETTLE_ATTEMPT), charge the task, and queue the release
   (settlement.py, as is release_unsent(), for a call never sent);
4. reconcile() settles the attempts whose outcome is unknown (unknown.py).
Job-row changes are deferred to the end of the transaction (tx.py), so a batch of operations locks each job
row once, briefly.

The `*_many` forms are what the group-commit store (aio.py) runs for all such calls of a batch. On Postgres,
where each statement is a round trip, they run as one statement per kind whatever the batch size (_bulk.py);
on SQLite, or when a key repeats in the batch (never in practice: a task runs one call at a time), they run
the single statements one by one. Tests run both forms against the same store and compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, select, update

from ..prepared import Prepared
from ..schema import AttemptStatus, attempts, jobs
from ..tx import Deferred, in_transaction
from . import _bulk
from .budget import BudgetRows, PendingReservation, token_window, utc_day

# Settling (settlement.py) and unknown outcomes (unknown.py, which settles through settlement.py), re-exported
# here: callers use ledger.settle, ledger.reconcile etc.
from .settlement import Settlement, release_unsent, settle, settle_and_record, settle_and_record_many
from .unknown import mark_lost, mark_unknown, reconcile, unknown_outcome

__all__ = [
    "Reservation",
    "Settlement",
    "could_fit_later",
    "ledger_sum",
    "mark_lost",
    "mark_unknown",
    "note_stop",
    "overruns_seen",
    "reconcile",
    "release_unsent",
    "reserve",
    "reserve_many",
    "settle",
    "settle_and_record",
    "settle_and_record_many",
    "token_window",
    "unknown_outcome",
    "utc_day",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reservation:
    """One call's reservation: reserve()'s parameters."""

    job_id: str
    task_seq: int
    task_id: str
    provider: str
    model: str
    amount_picos: int
    purpose: str
    worker: str
    daily_cap_picos: int | None = None
    channel: str = "sync"
    now: float | None = None


# The attempt's number is computed in the INSERT itself (the unique index on (job_id, task_seq, attempt_no)
# makes the MAX cheap), saving a round trip per call; tasks.attempts is counted when attempts settle. Every
# column is given (no Python-side default): a Prepared statement runs on SQLite's driver (prepared.py).
_INSERT_ATTEMPT = Prepared(
    insert(attempts)
    .values(
        job_id=bindparam("b_job"),
        task_seq=bindparam("b_seq"),
        task_id=bindparam("b_task"),
        attempt_no=select(func.coalesce(func.max(attempts.c.attempt_no), 0) + 1)
        .where(attempts.c.job_id == bindparam("b_job"), attempts.c.task_seq == bindparam("b_seq"))
        .scalar_subquery(),
        provider=bindparam("b_provider"),
        model=bindparam("b_model"),
        channel=bindparam("b_channel"),
        purpose=bindparam("b_purpose"),
        status=AttemptStatus.in_flight,
        settled=False,
        reserved_picos=bindparam("b_amount"),
        cost_picos=0,
        saved_picos=0,
        overrun=False,
        budget_window=bindparam("b_window"),
        worker=bindparam("b_worker"),
        started_at=bindparam("b_started"),
        input_tokens=0,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
    )
    .returning(attempts.c.id)
)


def reserve_many(conn: Connection, reservations: list[Reservation], *, deferred: Deferred) -> list[int]:
    """Write each reservation's attempt row and queue its hold for the end of the transaction. Returns the
    attempt ids, in order."""
    now = time.time()
    started = [r.now if r.now is not None else now for r in reservations]
    windows = [utc_day(t) if r.daily_cap_picos is not None else None for r, t in zip(reservations, started)]
    keys = {(r.job_id, r.task_seq) for r in reservations}
    if len(reservations) > 1 and len(keys) == len(reservations) and conn.dialect.name == "postgresql":
        ids = _bulk.insert_attempts(conn, reservations, started, windows)
    else:
        ids = [
            _INSERT_ATTEMPT.first(
                conn,
                {
                    "b_job": r.job_id,
                    "b_seq": r.task_seq,
                    "b_task": r.task_id,
                    "b_provider": r.provider,
                    "b_model": r.model,
                    "b_channel": r.channel,
                    "b_purpose": r.purpose,
                    "b_amount": r.amount_picos,
                    "b_window": w,
                    "b_worker": r.worker,
                    "b_started": t,
                },
            )[0]  # type: ignore[index]  # RETURNING id: always one row
            for r, t, w in zip(reservations, started, windows)
        ]
    deferred.part(BudgetRows).reservations.extend(
        PendingReservation(r.job_id, r.task_seq, r.amount_picos, w, r.daily_cap_picos, attempt_id)
        for r, w, attempt_id in zip(reservations, windows, ids)
    )
    return ids


@in_transaction(refusable=True, many=reserve_many, item=Reservation)
def reserve(
    conn: Connection,
    *,
    job_id: str,
    task_seq: int,
    task_id: str,
    provider: str,
    model: str,
    amount_picos: int,
    purpose: str,
    worker: str,
    daily_cap_picos: int | None = None,
    channel: str = "sync",
    now: float | None = None,
    deferred: Deferred,
) -> int:
    """Write the attempt's ledger row holding `amount_picos`, and queue the conditional hold on the job's
    budget (and the daily cap) for the end of the transaction. Returns the attempt id. Called as
    `reserve(engine, ...)` it raises BudgetExceeded (and writes nothing) when the hold does not fit."""
    return reserve_many(
        conn,
        [
            Reservation(
                job_id=job_id,
                task_seq=task_seq,
                task_id=task_id,
                provider=provider,
                model=model,
                amount_picos=amount_picos,
                purpose=purpose,
                worker=worker,
                daily_cap_picos=daily_cap_picos,
                channel=channel,
                now=now,
            )
        ],
        deferred=deferred,
    )[0]


def could_fit_later(conn: Connection, job_id: str, amount_picos: int) -> bool:
    """After a refused reservation: would `amount` fit once the calls now in flight settle (at the least,
    for nothing)? Holds of unknown outcomes are not counted as releasable: only reconcile frees them."""
    job = conn.execute(
        select(jobs.c.budget_picos, jobs.c.spent_picos, jobs.c.reserved_picos).where(jobs.c.id == job_id)
    ).first()
    if job is None or job.budget_picos is None:
        return False
    in_flight = conn.execute(
        select(func.coalesce(func.sum(attempts.c.reserved_picos), 0)).where(
            attempts.c.job_id == job_id, attempts.c.status == AttemptStatus.in_flight, attempts.c.settled.is_(False)
        )
    ).scalar()
    if not in_flight:
        return False
    held_for_good = job.reserved_picos - int(in_flight)
    return job.spent_picos + held_for_good + amount_picos <= job.budget_picos


def ledger_sum(conn: Connection, job_id: str) -> int:
    return int(
        conn.execute(
            select(func.coalesce(func.sum(attempts.c.cost_picos), 0)).where(attempts.c.job_id == job_id)
        ).scalar_one()
    )


def overruns_seen(conn: Connection, job_id: str, limit: int = 1000) -> list[tuple[str, int, int]]:
    """(provider/model, reserved, cost) of the job's overrun attempts: a worker joining the job learns the
    per-model reservation factors from them."""
    rows = conn.execute(
        select(attempts.c.provider, attempts.c.model, attempts.c.reserved_picos, attempts.c.cost_picos)
        .where(attempts.c.job_id == job_id, attempts.c.overrun.is_(True))
        .limit(limit)
    ).all()
    return [(f"{r.provider}/{r.model}", r.reserved_picos, r.cost_picos) for r in rows]


@in_transaction
def note_stop(conn: Connection, job_id: str, reason: str) -> None:
    """Record why the job stopped dispatching (the first reason wins)."""
    conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.stop_reason.is_(None)).values(stop_reason=reason))
