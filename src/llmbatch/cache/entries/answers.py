"""Answers and verdicts in the response cache: storing a validated answer (put, put_many: replacing the
claim that led to it), storing an invalid verdict (put_invalid), finding which keys hold a fresh answer
(fresh_keys, for `estimate`), and settling a hit (record_hit: the $0 attempt that notes what it saved).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import Connection, select, update

from ...store import ledger
from ...store.prepared import json_rows, on_driver
from ...store.repo import TaskOutcome
from ...store.schema import attempts, response_cache
from ...store.tx import Deferred, in_transaction
from ._table import Entry, _insert, _statements


def fresh_keys(conn: Connection, keys: list[str], *, ttl_s: float, now: float | None = None) -> set[str]:
    """Which of `keys` have a fresh answer (estimate)."""
    now = now if now is not None else time.time()
    rows = conn.execute(
        select(response_cache.c.key).where(
            response_cache.c.key.in_(keys),
            response_cache.c.output.is_not(None),
            response_cache.c.created_at >= now - ttl_s,
        )
    ).all()
    return {r.key for r in rows}


def put(
    conn: Connection,
    key: str,
    *,
    scope: str | None,
    provider: str,
    model: str,
    output: Any,
    usage: dict[str, int] | None,
    job_id: str,
    attempt_id: int,
    now: float | None = None,
) -> Entry:
    """Store the validated answer of `attempt_id` under `key` (replacing a claim or an older answer), its cost
    copied from the attempt's ledger row."""
    now = now if now is not None else time.time()
    row = _statements(conn).put.first(
        conn,
        {
            "key": key,
            "scope": scope,
            "provider": provider,
            "model": model,
            "output": orjson.dumps(output).decode(),
            "usage": orjson.dumps(usage).decode() if usage is not None else None,
            "job_id": job_id,
            "attempt_id": attempt_id,
            "created_at": now,
        },
    )
    return Entry(key, provider, model, output, int(row[0] or 0) if row is not None else 0)


def put_many(conn: Connection, items: list[dict[str, Any]], *, now: float | None = None) -> list[Entry]:
    """`put` for several answers at once (each item: put's keyword arguments and the key). The response-cache
    hook writes the answers of a wave of tasks this way, one store operation instead of one each."""
    if not items:
        return []
    now = now if now is not None else time.time()
    st = _statements(conn)
    rows = [
        {
            "key": i["key"],
            "scope": i["scope"],
            "provider": i["provider"],
            "model": i["model"],
            "output": orjson.dumps(i["output"]).decode(),
            "usage": orjson.dumps(i["usage"]).decode() if i["usage"] is not None else None,
            "job_id": i["job_id"],
            "attempt_id": i["attempt_id"],
            "created_at": now,
        }
        for i in items
    ]
    saved: dict[str, Any] = {}
    if on_driver(conn):  # a statement costs microseconds here: each upsert returns its cost, no second read
        for r in rows:
            row = st.put.first(conn, r)
            saved[r["key"]] = row[0] if row is not None else 0
    else:  # a statement is a round trip: one upsert of them all, returning the costs
        # A key twice in the batch: its last answer is the one that stays (as when they are written in order),
        # and an upsert may not touch a row twice.
        last = {r["key"]: r for r in rows}
        saved = dict(conn.exec_driver_sql(_PUT_MANY_SQL, {"now": now, "rows": json_rows(list(last.values()))}).all())
    return [Entry(i["key"], i["provider"], i["model"], i["output"], int(saved.get(i["key"]) or 0)) for i in items]


# put_many on Postgres: the `put` upsert for a batch of answers in one statement, its rows in one json
# parameter (see store/ledger/_bulk.py); each answer's cost copied from its attempt's ledger row.
_PUT_MANY_SQL = """
INSERT INTO response_cache (key, scope, provider, model, output, invalid_error, usage, cost_picos, job_id, attempt_id,
                            claimed_by, claim_expires_at, created_at)
SELECT v.key, v.scope, v.provider, v.model, v.output, NULL, v.usage,
       COALESCE((SELECT a.cost_picos FROM attempts a WHERE a.id = v.attempt_id), 0), v.job_id, v.attempt_id,
       NULL, NULL, %(now)s
FROM json_to_recordset(%(rows)s::json)
     AS v(key varchar, scope varchar, provider varchar, model varchar, output text, usage text, job_id varchar,
          attempt_id bigint)
ON CONFLICT (key) DO UPDATE SET scope = excluded.scope, provider = excluded.provider, model = excluded.model,
       output = excluded.output, invalid_error = NULL, usage = excluded.usage, cost_picos = excluded.cost_picos,
       job_id = excluded.job_id, attempt_id = excluded.attempt_id, claimed_by = NULL, claim_expires_at = NULL,
       created_at = excluded.created_at
RETURNING key, cost_picos
"""


def put_invalid(
    conn: Connection,
    key: str,
    *,
    scope: str | None,
    provider: str,
    model: str,
    error: str,
    job_id: str,
    now: float | None = None,
) -> None:
    """Remember that this request's answer failed validation (replacing a claim; never an answer)."""
    now = now if now is not None else time.time()
    values = {
        "scope": scope,
        "provider": provider,
        "model": model,
        "output": None,
        "invalid_error": error,
        "usage": None,
        "cost_picos": 0,
        "job_id": job_id,
        "attempt_id": None,
        "claimed_by": None,
        "claim_expires_at": None,
        "created_at": now,
    }
    stmt = _insert(conn).values(key=key, **values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["key"], set_={k: stmt.excluded[k] for k in values}, where=response_cache.c.output.is_(None)
        )
    )


@in_transaction
def record_hit(
    conn: Connection, settlement: ledger.Settlement, outcome: TaskOutcome, saved_picos: int, *, deferred: Deferred
) -> tuple[bool, bool]:
    """Settle the $0 cache attempt and record the task's outcome (ledger.settle_and_record), and note on the
    attempt the original cost it did not pay again."""
    result = ledger.settle_and_record.on_conn(conn, settlement, outcome, deferred=deferred)
    conn.execute(update(attempts).where(attempts.c.id == settlement.attempt_id).values(saved_picos=saved_picos))
    return result
