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
   false -> true in a conditional UPDATE, _SETTLE_ATTEMPT), charge the task, and queue the release;
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
from typing import TYPE_CHECKING

from sqlalchemy import Connection, bindparam, case, delete, func, insert, select, update

from .. import job_counts
from ..outcomes import FINISH_TASK, TaskOutcome, finish_task
from ..prepared import Prepared
from ..schema import AttemptStatus, attempts, jobs, tasks
from ..tx import Deferred, in_transaction
from . import _bulk
from .budget import BudgetRows, PendingReservation, token_window, utc_day

if TYPE_CHECKING:  # the read paths (status) load the ledger but not the pydantic models
    from ...models import Usage

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


@dataclass(frozen=True)
class Settlement:
    attempt_id: int
    status: str
    cost_picos: int
    cost_source: str  # usage | none | unpriced | reservation
    usage: Usage | None = None
    error_class: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    pricing_error: str | None = None
    latency_ms: int | None = None
    provider_request_id: str | None = None
    finish_reason: str | None = None  # the provider's finish/stop reason, as sent
    served_model: str | None = None  # the model id the provider says answered


_SETTLE_ATTEMPT = Prepared(
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"), attempts.c.settled.is_(False))
    # overrun: billed above the reservation (the cost comes from the provider's usage; the hold was our bound)
    .values(
        settled=True,
        status=bindparam("b_status"),
        cost_picos=bindparam("b_cost"),
        overrun=case((attempts.c.reserved_picos < bindparam("b_cost"), True), else_=False),
        finish_reason=bindparam("b_finish"),
        served_model=bindparam("b_served"),
        cost_source=bindparam("b_source"),
        error_class=bindparam("b_eclass"),
        error_message=bindparam("b_emsg"),
        http_status=bindparam("b_http"),
        pricing_error=bindparam("b_perr"),
        latency_ms=bindparam("b_latency"),
        provider_request_id=bindparam("b_reqid"),
        input_tokens=bindparam("b_in"),
        cached_tokens=bindparam("b_cached"),
        cache_write_tokens=bindparam("b_cw"),
        output_tokens=bindparam("b_out"),
        reasoning_tokens=bindparam("b_reason"),
        finished_at=bindparam("b_now"),
    )
    .returning(attempts.c.job_id, attempts.c.task_seq, attempts.c.reserved_picos, attempts.c.budget_window)
)
_SETTLE_TASK = (
    update(tasks)
    .where(tasks.c.job_id == bindparam("b_job"), tasks.c.seq == bindparam("b_seq"))
    .values(
        cost_picos=tasks.c.cost_picos + bindparam("b_cost"),
        attempts=tasks.c.attempts + 1,
        input_tokens=tasks.c.input_tokens + bindparam("b_in"),
        cached_tokens=tasks.c.cached_tokens + bindparam("b_cached"),
        cache_write_tokens=tasks.c.cache_write_tokens + bindparam("b_cw"),
        output_tokens=tasks.c.output_tokens + bindparam("b_out"),
        reasoning_tokens=tasks.c.reasoning_tokens + bindparam("b_reason"),
    )
)


# The success path's task UPDATE: record the outcome (only the lease holder can) and charge the task, in one.
_FINISH_AND_CHARGE_TASK = Prepared(
    FINISH_TASK.stmt.values(
        {
            tasks.c.cost_picos: tasks.c.cost_picos + bindparam("b_cost"),
            tasks.c.attempts: tasks.c.attempts + 1,
            tasks.c.input_tokens: tasks.c.input_tokens + bindparam("b_in"),
            tasks.c.cached_tokens: tasks.c.cached_tokens + bindparam("b_cached"),
            tasks.c.cache_write_tokens: tasks.c.cache_write_tokens + bindparam("b_cw"),
            tasks.c.output_tokens: tasks.c.output_tokens + bindparam("b_out"),
            tasks.c.reasoning_tokens: tasks.c.reasoning_tokens + bindparam("b_reason"),
        }
    )
)


def _settle_attempt(conn: Connection, s: Settlement, tokens: dict):
    """Flip the attempt to settled (exactly once); returns its (job, seq, reservation, window), or None."""
    return _SETTLE_ATTEMPT.first(
        conn,
        {
            "b_id": s.attempt_id,
            "b_status": s.status,
            "b_cost": s.cost_picos,
            "b_source": s.cost_source,
            "b_eclass": s.error_class,
            "b_emsg": s.error_message,
            "b_http": s.http_status,
            "b_perr": s.pricing_error,
            "b_latency": s.latency_ms,
            "b_reqid": s.provider_request_id,
            "b_now": time.time(),
            "b_finish": s.finish_reason,
            "b_served": s.served_model,
            **tokens,
        },
    )


_NO_TOKENS = {"b_in": 0, "b_cached": 0, "b_cw": 0, "b_out": 0, "b_reason": 0}


def _tokens(s: Settlement) -> dict[str, int]:
    u = s.usage
    if u is None:
        return dict(_NO_TOKENS)
    return {
        "b_in": u.input_tokens,
        "b_cached": u.cached_tokens,
        "b_cw": u.cache_write_tokens,
        "b_out": u.output_tokens,
        "b_reason": u.reasoning_tokens,
    }


@in_transaction
def settle(conn: Connection, s: Settlement, *, deferred: Deferred) -> bool:
    """Turn an attempt's reservation into its actual cost and release the difference. Exactly once per
    attempt: a second settle (a late worker, or reconcile racing it) changes nothing and returns False."""
    tokens = _tokens(s)
    row = _settle_attempt(conn, s, tokens)
    if row is None:
        return False
    job_id, seq, reserved, window = row
    conn.execute(_SETTLE_TASK, {"b_job": job_id, "b_seq": seq, "b_cost": s.cost_picos, **tokens})
    deferred.part(BudgetRows).add_settlement(job_id, window, reserved, s.cost_picos)
    return True


@in_transaction
def release_unsent(conn: Connection, attempt_id: int, *, deferred: Deferred) -> bool:
    """Give back a reservation whose call was never sent (the run stopped, the job was cancelled or the claim
    lost while the call waited for its slot): the attempt row goes, as a refused reservation's does, and its
    whole hold is released (cost 0). Only the caller knows the call was not sent: a claim taken over meanwhile
    may have marked the row unknown (mark_lost), and it is released all the same. Exactly once, and only while
    unsettled: a settle or a reconcile that came first wins and this changes nothing (False)."""
    row = conn.execute(
        delete(attempts)
        .where(attempts.c.id == attempt_id, attempts.c.settled.is_(False))
        .returning(attempts.c.job_id, attempts.c.reserved_picos, attempts.c.budget_window)
    ).first()
    if row is None:
        return False
    job_id, reserved, window = row
    deferred.part(BudgetRows).add_settlement(job_id, window, reserved, 0)
    return True


def settle_and_record_many(
    conn: Connection, pairs: list[tuple[Settlement, TaskOutcome]], *, deferred: Deferred
) -> list[tuple[bool, bool]]:
    """settle_and_record() for each (settlement, outcome), in order."""
    budget = deferred.part(BudgetRows)
    ids = {s.attempt_id for s, _ in pairs}
    task_keys = {(o.job_id, o.seq) for _, o in pairs}
    if len(pairs) == 1 or len(ids) < len(pairs) or len(task_keys) < len(pairs) or conn.dialect.name != "postgresql":
        return [_settle_and_record(conn, s, outcome, budget) for s, outcome in pairs]
    # Postgres: one UPDATE of the attempts, one of the tasks (the outcome and the charge), for all of them.
    now = time.time()
    settled = _bulk.settle_attempts(conn, [s for s, _ in pairs], now)
    recorded = _bulk.finish_and_charge_tasks(conn, [(s, o) for s, o in pairs if s.attempt_id in settled], now)
    results: list[tuple[bool, bool]] = []
    for s, outcome in pairs:
        row = settled.get(s.attempt_id)
        if row is None:  # already settled (a late duplicate, or reconcile got there first): record only
            results.append((False, finish_task(conn, outcome, budget)))
            continue
        budget.add_settlement(row.job_id, row.budget_window, row.reserved_picos, s.cost_picos)
        if (outcome.job_id, outcome.seq) in recorded:
            job_counts.note(budget, outcome.job_id, outcome.status)
            results.append((True, True))
        else:  # the lease was lost: the charge still lands on the task, the outcome is not recorded
            conn.execute(
                _SETTLE_TASK, {"b_job": row.job_id, "b_seq": row.task_seq, "b_cost": s.cost_picos, **_tokens(s)}
            )
            results.append((True, False))
    return results


def _settle_and_record(conn: Connection, s: Settlement, outcome: TaskOutcome, budget: BudgetRows) -> tuple[bool, bool]:
    tokens = _tokens(s)
    row = _settle_attempt(conn, s, tokens)
    if row is None:  # already settled: record only
        return False, finish_task(conn, outcome, budget)
    job_id, seq, reserved, window = row
    budget.add_settlement(job_id, window, reserved, s.cost_picos)
    params = {**outcome.params(), "b_cost": s.cost_picos, **tokens}
    if _FINISH_AND_CHARGE_TASK.run(conn, params) == 1:
        job_counts.note(budget, outcome.job_id, outcome.status)
        return True, True
    conn.execute(_SETTLE_TASK, {"b_job": job_id, "b_seq": seq, "b_cost": s.cost_picos, **tokens})
    return True, False


def _pair(s: Settlement, outcome: TaskOutcome) -> tuple[Settlement, TaskOutcome]:
    return s, outcome


@in_transaction(many=settle_and_record_many, item=_pair)
def settle_and_record(
    conn: Connection, s: Settlement, outcome: TaskOutcome, *, deferred: Deferred
) -> tuple[bool, bool]:
    """settle() and the task's outcome in one transaction and, usually, one task UPDATE. Returns
    (settled, recorded). The charge always lands on the task, even when the lease (and so the record) was lost."""
    return _settle_and_record(conn, s, outcome, deferred.part(BudgetRows))


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


# Unknown outcomes (after Settlement and settle, which they use; re-exported as ledger.reconcile etc.).
from .unknown import mark_lost, mark_unknown, reconcile, unknown_outcome  # noqa: F401
