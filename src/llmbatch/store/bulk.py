"""Set-based forms of the two hot ledger operations, for Postgres.

Under group commit a transaction carries dozens of reservations and settlements. Run one by one, each is a
statement: a round trip to the server and ~100 µs of driver and SQLAlchemy work in the worker, which made
the store threads a third of a Celery worker's CPU. Here each kind runs as ONE statement over arrays
(`unnest`), whatever the batch size. The semantics are the single forms' exactly (ledger.reserve,
ledger.settle_and_record): same rows, same conditions, same deferred job-row work; tests run both forms
against the same store and compare.

Rows come back from RETURNING in no guaranteed order, so they are matched to their calls by key: the task
(job_id, task_seq) for reservations, the attempt id for settlements. A batch in which a key repeats (never
in practice: a task runs one call at a time) falls back to the single forms.

SQLite keeps the single forms: its statements cost no round trip.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from sqlalchemy import Connection

from .ledger import _SETTLE_TASK, Settlement, _tokens, reserve, settle_and_record
from . import job_counts
from .repo import TaskOutcome, finish_task, utc_day
from .schema import AttemptStatus, TaskStatus
from .tx import Deferred, PendingReservation

Calls = list[tuple[tuple, dict]]  # (args, kwargs) of each call, as the group-commit store queued them

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


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list]:
    return {n: [r[n] for r in rows] for n in names}


def reserve_many(conn: Connection, calls: Calls, *, deferred: Deferred) -> list[int]:
    """ledger.reserve for every call, in one INSERT. Returns the attempt ids in call order."""
    kws = [kw for _, kw in calls]
    keys = [(kw["job_id"], kw["task_seq"]) for kw in kws]
    if len(set(keys)) < len(keys) or any(a for a, _ in calls):
        return [reserve.on_conn(conn, *a, deferred=deferred, **kw) for a, kw in calls]
    now = time.time()
    rows = []
    for kw in kws:
        started = kw.get("now") or now
        cap = kw.get("daily_cap_picos")
        rows.append({"job_id": kw["job_id"], "task_seq": kw["task_seq"], "task_id": kw["task_id"],
                     "provider": kw["provider"], "model": kw["model"], "channel": kw.get("channel", "sync"),
                     "purpose": kw["purpose"], "amount": kw["amount_picos"],
                     "budget_window": utc_day(started) if cap is not None else None, "worker": kw["worker"],
                     "started_at": started, "cap": cap})
    params = _columns(rows, ("job_id", "task_seq", "task_id", "provider", "model", "channel", "purpose", "amount",
                             "budget_window", "worker", "started_at"))
    params["status"] = AttemptStatus.in_flight
    ids = {(job_id, seq): attempt_id for attempt_id, job_id, seq in conn.exec_driver_sql(_RESERVE_SQL, params)}
    out = []
    for r, key in zip(rows, keys):
        attempt_id = ids[key]
        deferred.reservations.append(PendingReservation(r["job_id"], r["task_seq"], r["amount"], r["budget_window"],
                                                        r["cap"], attempt_id))
        out.append(attempt_id)
    return out


def settle_and_record_many(conn: Connection, calls: Calls, *, deferred: Deferred) -> list[tuple[bool, bool]]:
    """ledger.settle_and_record for every call: one UPDATE of the attempts, one of the tasks. Returns
    (settled, recorded) per call, in call order."""
    pairs: list[tuple[Settlement, TaskOutcome]] = [(a[0], a[1]) for a, _ in calls]
    tasks_keyed = [(o.job_id, o.seq) for _, o in pairs]
    ids = [s.attempt_id for s, _ in pairs]
    if len(set(ids)) < len(ids) or len(set(tasks_keyed)) < len(tasks_keyed) or any(kw for _, kw in calls):
        return [settle_and_record.on_conn(conn, *a, deferred=deferred, **kw) for a, kw in calls]
    now = time.time()
    toks = [_tokens(s) for s, _ in pairs]
    settled = {row.id: row for row in conn.exec_driver_sql(_SETTLE_SQL, {
        "now": now, "id": ids, "status": [s.status for s, _ in pairs], "cost": [s.cost_picos for s, _ in pairs],
        "source": [s.cost_source for s, _ in pairs], "eclass": [s.error_class for s, _ in pairs],
        "emsg": [s.error_message for s, _ in pairs], "http": [s.http_status for s, _ in pairs],
        "perr": [s.pricing_error for s, _ in pairs], "latency": [s.latency_ms for s, _ in pairs],
        "reqid": [s.provider_request_id for s, _ in pairs], "finish": [s.finish_reason for s, _ in pairs],
        "served": [s.served_model for s, _ in pairs], **_token_columns(toks),
    })}
    charge = [i for i, s in enumerate(ids) if s in settled]
    recorded: set[tuple[str, int]] = set()
    if charge:
        outs = [pairs[i][1].params() for i in charge]
        recorded = {(job_id, seq) for job_id, seq in conn.exec_driver_sql(_FINISH_AND_CHARGE_SQL, {
            "now": now, "running": TaskStatus.running,
            "job_id": [p["b_job"] for p in outs], "seq": [p["b_seq"] for p in outs],
            "worker": [p["b_worker"] for p in outs], "status": [p["b_status"] for p in outs],
            "provider": [p["b_provider"] for p in outs], "model": [p["b_model"] for p in outs],
            "output": [p["b_output"] for p in outs], "error": [p["b_error"] for p in outs],
            "skip": [p["b_skip"] for p in outs], "escalations": [p["b_escalations"] for p in outs],
            "cost": [pairs[i][0].cost_picos for i in charge], **_token_columns([toks[i] for i in charge]),
        })}
    results: list[tuple[bool, bool]] = []
    for i, (s, outcome) in enumerate(pairs):
        row = settled.get(s.attempt_id)
        if row is None:  # already settled (a late duplicate, or reconcile got there first): record only
            results.append((False, finish_task(conn, outcome, deferred)))
            continue
        deferred.add_settlement(row.job_id, row.budget_window, row.reserved_picos, s.cost_picos)
        if (outcome.job_id, outcome.seq) in recorded:
            job_counts.note(deferred, outcome.job_id, outcome.status)
            results.append((True, True))
        else:  # the lease was lost: the charge still lands on the task, the outcome is not recorded
            conn.execute(_SETTLE_TASK, {"b_job": row.job_id, "b_seq": row.task_seq, "b_cost": s.cost_picos,
                                        **toks[i]})
            results.append((True, False))
    return results


def _token_columns(toks: list[dict[str, int]]) -> dict[str, list[int]]:
    return {"tin": [t["b_in"] for t in toks], "tcached": [t["b_cached"] for t in toks],
            "tcw": [t["b_cw"] for t in toks], "tout": [t["b_out"] for t in toks],
            "treason": [t["b_reason"] for t in toks]}


# The group-commit store looks operations up here: the single form -> its set-based form.
MANY: dict[Callable, Callable] = {reserve: reserve_many, settle_and_record: settle_and_record_many}
