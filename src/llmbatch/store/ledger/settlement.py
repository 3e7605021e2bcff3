"""Ending a hold: settle() turns an attempt's reservation into its actual cost exactly once, and
settle_and_record() does that and records the task's outcome together (the success path, one task UPDATE);
release_unsent() gives a hold back whole when its call was never sent. Each queues the release of what is no
longer held for the end of the transaction (budget.BudgetRows). Step 3 of the ledger's life
(ledger/__init__.py); split from it to keep the reserving and the settling sides each one module. Re-exported
as ledger.settle etc.: callers import the package, not this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, bindparam, case, delete, update

from .. import job_counts
from ..outcomes import FINISH_TASK, TaskOutcome, finish_task
from ..prepared import Prepared
from ..schema import attempts, tasks
from ..tx import Deferred, in_transaction
from . import _bulk
from .budget import BudgetRows

if TYPE_CHECKING:  # the read paths (status) load the ledger but not the pydantic models
    from ...models import Usage


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
