"""The ledger's set-based statements, for Postgres (private to the ledger package: ledger.reserve_many and
ledger.settle_and_record_many choose them).

Under group commit a transaction carries dozens of reservations and settlements. Run one by one, each is a
statement: a round trip to the server and ~100 µs of driver and SQLAlchemy work in the worker, which made
the store threads a third of a Celery worker's CPU. Here each kind runs as ONE statement over arrays
(`unnest`), whatever the batch size. Each writes the same rows, under the same conditions, as its single
form in ledger/__init__.py (_INSERT_ATTEMPT, _SETTLE_ATTEMPT, _FINISH_AND_CHARGE_TASK).

Rows come back from RETURNING in no guaranteed order, so they are matched to their items by key: the task
(job_id, task_seq) for reservations, the attempt id for settlements. The caller makes sure no key repeats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from ..schema import AttemptStatus, TaskStatus

if TYPE_CHECKING:
    from ..outcomes import TaskOutcome
    from . import Reservation, Settlement

_RESERVE_SQL = """
INSERT INTO attempts (job_id, task_seq, task_id, attempt_no, provider, model, channel, purpose, status, settled,
                      reserved_picos, cost_picos, budget_window, worker, started_at, input_tokens, cached_tokens,
                      cache_write_tokens, output_tokens, reasoning_tokens)
SELECT v.job_id, v.task_seq, v.task_id,
       COALESCE((SELECT MAX(a.attempt_no) FROM attempts a WHERE a.job_id = v.job_id AND a.task_seq = v.task_seq), 0) + 1,
       v.provider, v.model, v.channel, v.purpose, %(status)s, false, v.amount, 0, v.budget_window, v.worker,
       v.started_at, 0, 0, 0, 0, 0
FROM unnest(%(job_id)s::varchar[], %(task_seq)s::int[], %(task_id)s::varchar[], %(provider)s::varchar[],
            %(model)s::varchar[], %(channel)s::varchar[], %(purpose)s::varchar[], %(amount)s::bigint[],
            %(budget_window)s::varchar[], %(worker)s::varchar[], %(started_at)s::float8[])
     AS v(job_id, task_seq, task_id, provider, model, channel, purpose, amount, budget_window, worker, started_at)
RETURNING id, job_id, task_seq
"""

_SETTLE_SQL = """
UPDATE attempts a SET settled = true, status = v.status, cost_picos = v.cost, cost_source = v.source,
       overrun = v.cost > a.reserved_picos, finish_reason = v.finish, served_model = v.served,
       error_class = v.eclass, error_message = v.emsg, http_status = v.http, pricing_error = v.perr,
       latency_ms = v.latency, provider_request_id = v.reqid, input_tokens = v.tin, cached_tokens = v.tcached,
       cache_write_tokens = v.tcw, output_tokens = v.tout, reasoning_tokens = v.treason, finished_at = %(now)s
FROM unnest(%(id)s::bigint[], %(status)s::varchar[], %(cost)s::bigint[], %(source)s::varchar[],
            %(eclass)s::varchar[], %(emsg)s::text[], %(http)s::int[], %(perr)s::text[], %(latency)s::int[],
            %(reqid)s::varchar[], %(tin)s::bigint[], %(tcached)s::bigint[], %(tcw)s::bigint[], %(tout)s::bigint[],
            %(treason)s::bigint[], %(finish)s::varchar[], %(served)s::varchar[])
     AS v(id, status, cost, source, eclass, emsg, http, perr, latency, reqid, tin, tcached, tcw, tout, treason,
          finish, served)
WHERE a.id = v.id AND a.settled = false
RETURNING a.id, a.job_id, a.task_seq, a.reserved_picos, a.budget_window
"""

# The outcome and the charge of each settled task in one UPDATE; only the lease holder of a running task
# records (the single form's _FINISH_AND_CHARGE_TASK condition).
_FINISH_AND_CHARGE_SQL = """
UPDATE tasks t SET status = v.status, provider = v.provider, model = v.model, output = v.output, error = v.error,
       skip_reason = v.skip, escalations = t.escalations + v.escalations, lease_owner = NULL,
       lease_expires_at = NULL, finished_at = %(now)s, cost_picos = t.cost_picos + v.cost,
       attempts = t.attempts + 1, input_tokens = t.input_tokens + v.tin, cached_tokens = t.cached_tokens + v.tcached,
       cache_write_tokens = t.cache_write_tokens + v.tcw, output_tokens = t.output_tokens + v.tout,
       reasoning_tokens = t.reasoning_tokens + v.treason
FROM unnest(%(job_id)s::varchar[], %(seq)s::int[], %(worker)s::varchar[], %(status)s::varchar[],
            %(provider)s::varchar[], %(model)s::varchar[], %(output)s::text[], %(error)s::text[],
            %(skip)s::varchar[], %(escalations)s::int[], %(cost)s::bigint[], %(tin)s::bigint[],
            %(tcached)s::bigint[], %(tcw)s::bigint[], %(tout)s::bigint[], %(treason)s::bigint[])
     AS v(job_id, seq, worker, status, provider, model, output, error, skip, escalations, cost, tin, tcached, tcw,
          tout, treason)
WHERE t.job_id = v.job_id AND t.seq = v.seq AND t.lease_owner = v.worker AND t.status = %(running)s
RETURNING t.job_id, t.seq
"""


def insert_attempts(
    conn: Connection, reservations: list[Reservation], started_at: list[float], windows: list[str | None]
) -> list[int]:
    """_INSERT_ATTEMPT for each reservation (started at `started_at`, in daily window `windows`), in one
    INSERT. Returns the attempt ids, in order."""
    rs = reservations
    rows = conn.exec_driver_sql(
        _RESERVE_SQL,
        {
            "status": AttemptStatus.in_flight,
            "job_id": [r.job_id for r in rs],
            "task_seq": [r.task_seq for r in rs],
            "task_id": [r.task_id for r in rs],
            "provider": [r.provider for r in rs],
            "model": [r.model for r in rs],
            "channel": [r.channel for r in rs],
            "purpose": [r.purpose for r in rs],
            "amount": [r.amount_picos for r in rs],
            "budget_window": windows,
            "worker": [r.worker for r in rs],
            "started_at": started_at,
        },
    )
    ids = {(job_id, seq): attempt_id for attempt_id, job_id, seq in rows}
    return [ids[(r.job_id, r.task_seq)] for r in rs]


def settle_attempts(conn: Connection, settlements: list[Settlement], now: float) -> dict[int, Any]:
    """_SETTLE_ATTEMPT for each settlement, in one UPDATE. Returns the rows settled by this call (job_id,
    task_seq, reserved_picos, budget_window), by attempt id; an attempt already settled is absent."""
    ss = settlements
    return {
        row.id: row
        for row in conn.exec_driver_sql(
            _SETTLE_SQL,
            {
                "now": now,
                "id": [s.attempt_id for s in ss],
                "status": [s.status for s in ss],
                "cost": [s.cost_picos for s in ss],
                "source": [s.cost_source for s in ss],
                "eclass": [s.error_class for s in ss],
                "emsg": [s.error_message for s in ss],
                "http": [s.http_status for s in ss],
                "perr": [s.pricing_error for s in ss],
                "latency": [s.latency_ms for s in ss],
                "reqid": [s.provider_request_id for s in ss],
                "finish": [s.finish_reason for s in ss],
                "served": [s.served_model for s in ss],
                **_usage_columns(ss),
            },
        )
    }


def finish_and_charge_tasks(
    conn: Connection, pairs: list[tuple[Settlement, TaskOutcome]], now: float
) -> set[tuple[str, int]]:
    """_FINISH_AND_CHARGE_TASK for each (settlement, outcome), in one UPDATE. Returns the (job_id, seq) of
    the tasks recorded (the others' lease was lost)."""
    if not pairs:
        return set()
    outs = [o.params() for _, o in pairs]
    return {
        (job_id, seq)
        for job_id, seq in conn.exec_driver_sql(
            _FINISH_AND_CHARGE_SQL,
            {
                "now": now,
                "running": TaskStatus.running,
                "job_id": [p["b_job"] for p in outs],
                "seq": [p["b_seq"] for p in outs],
                "worker": [p["b_worker"] for p in outs],
                "status": [p["b_status"] for p in outs],
                "provider": [p["b_provider"] for p in outs],
                "model": [p["b_model"] for p in outs],
                "output": [p["b_output"] for p in outs],
                "error": [p["b_error"] for p in outs],
                "skip": [p["b_skip"] for p in outs],
                "escalations": [p["b_escalations"] for p in outs],
                "cost": [s.cost_picos for s, _ in pairs],
                **_usage_columns([s for s, _ in pairs]),
            },
        )
    }


def _usage_columns(settlements: list[Settlement]) -> dict[str, list[int]]:
    from ...models import Usage  # here, not at the top: the read paths (status) load the ledger, not pydantic

    us = [s.usage or Usage() for s in settlements]
    return {
        "tin": [u.input_tokens for u in us],
        "tcached": [u.cached_tokens for u in us],
        "tcw": [u.cache_write_tokens for u in us],
        "tout": [u.output_tokens for u in us],
        "treason": [u.reasoning_tokens for u in us],
    }
