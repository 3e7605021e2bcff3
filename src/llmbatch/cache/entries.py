"""The response_cache table: one row per request key, which is either
- an answer: written only after a succeeded, validated attempt was recorded, with its cost copied from that
  attempt's ledger row in SQL (never recomputed): the amount a later hit saves;
- an invalid verdict (invalid_error set, no output): the answer to this request failed validation, so tasks
  with it escalate at once instead of paying for the same invalid answer again; never served as an answer;
- a claim marker (neither): one worker is making the call that the other workers wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..store import ledger
from ..store.prepared import Prepared, json_rows, on_driver
from ..store.repo import TaskOutcome
from ..store.schema import attempts, response_cache
from ..store.tx import Deferred, in_transaction

HIT, INVALID, LEAD, WAIT = "hit", "invalid", "lead", "wait"


@dataclass(frozen=True)
class Entry:
    key: str
    provider: str
    model: str
    output: Any  # the validated output, decoded
    cost_picos: int  # the original attempt's cost (what a hit saves)


def _insert(conn: Connection):
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(response_cache)


def _is_claim():
    return and_(response_cache.c.output.is_(None), response_cache.c.invalid_error.is_(None))


def _is_verdict():
    return or_(response_cache.c.output.is_not(None), response_cache.c.invalid_error.is_not(None))


def _entry(row) -> Entry:
    return Entry(row.key, row.provider, row.model, orjson.loads(row.output), int(row.cost_picos))


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


def claim_or_get(
    conn: Connection,
    key: str,
    *,
    scope: str | None,
    provider: str,
    model: str,
    worker: str,
    ttl_s: float,
    claim_s: float,
    now: float | None = None,
) -> tuple[str, Any]:
    """(HIT, entry) when a fresh answer exists; (INVALID, error) when a fresh verdict says the answer fails
    validation; (LEAD, None) when this worker now holds the key's claim and must make the call; (WAIT,
    claimant) when another worker's live claim says it is making the call."""
    now = now if now is not None else time.time()
    claim = {"claimed_by": worker, "claim_expires_at": now + claim_s, "created_at": now}
    # A new key (the common case: a miss) is claimed in one statement; only a key that exists is read.
    st = _statements(conn)
    if st.claim_new.first(conn, {"key": key, "scope": scope, "provider": provider, "model": model, **claim}):
        return LEAD, None
    row = conn.execute(st.get, {"key": key}).first()
    if row is None:  # evicted between the two statements: as good as new
        done = st.claim_new.first(conn, {"key": key, "scope": scope, "provider": provider, "model": model, **claim})
        return (LEAD, None) if done is not None else (WAIT, None)
    if row.created_at >= now - ttl_s:
        if row.output is not None:
            return HIT, _entry(row)
        if row.invalid_error is not None:
            return INVALID, row.invalid_error
    if (
        row.output is None
        and row.invalid_error is None
        and row.claimed_by != worker
        and row.claim_expires_at is not None
        and row.claim_expires_at >= now
    ):
        return WAIT, row.claimed_by
    # An expired answer or verdict, an expired claim, or this worker's own leftover claim: take the key over.
    takeover = conn.execute(
        update(response_cache)
        .where(
            response_cache.c.key == key,
            or_(
                and_(_is_verdict(), response_cache.c.created_at < now - ttl_s),
                and_(_is_claim(), or_(response_cache.c.claim_expires_at < now, response_cache.c.claimed_by == worker)),
            ),
        )
        .values(output=None, invalid_error=None, usage=None, **claim)
    ).rowcount
    return (LEAD, None) if takeover == 1 else (WAIT, None)


class ClaimItem(NamedTuple):
    """One claim_or_get call's arguments (its set form's item, see store/tx.in_transaction)."""

    key: str
    scope: str | None
    provider: str
    model: str
    worker: str
    ttl_s: float
    claim_s: float
    now: float | None = None


# The claim_new statement (_statements) for many keys at once: one statement, whatever the count, its rows
# in one json parameter (see store/ledger/_bulk.py: cheaper to send than one array per column).
_CLAIM_NEW_MANY_SQL = """
INSERT INTO response_cache (key, scope, provider, model, output, cost_picos, claimed_by, claim_expires_at, created_at)
SELECT v.key, v.scope, v.provider, v.model, NULL, 0, v.worker, v.expires, v.created
FROM json_to_recordset(%(rows)s::json)
     AS v(key varchar, scope varchar, provider varchar, model varchar, worker varchar, expires float8,
          created float8)
ON CONFLICT (key) DO NOTHING
RETURNING key
"""


def claim_or_get_many(
    conn: Connection, items: list[ClaimItem], *, deferred: Deferred | None = None
) -> list[tuple[str, Any]]:
    """claim_or_get for the calls of one group-commit transaction on Postgres, where a statement is a round
    trip: the new keys (the common case, a miss) are claimed by one insert over a json batch; each key that exists, or
    repeats in the batch after its first call, then goes through claim_or_get as it would alone, in order."""
    if len(items) < 2 or on_driver(conn):
        return [_claim_one(conn, i) for i in items]
    now = time.time()
    first: dict[str, int] = {}
    for n, i in enumerate(items):
        first.setdefault(i.key, n)
    firsts = [items[n] for n in first.values()]
    at = [i.now if i.now is not None else now for i in firsts]
    claimed = {
        key
        for (key,) in conn.exec_driver_sql(
            _CLAIM_NEW_MANY_SQL,
            {
                "rows": json_rows(
                    [
                        {
                            "key": i.key,
                            "scope": i.scope,
                            "provider": i.provider,
                            "model": i.model,
                            "worker": i.worker,
                            "expires": t + i.claim_s,
                            "created": t,
                        }
                        for t, i in zip(at, firsts)
                    ]
                )
            },
        )
    }
    return [
        (LEAD, None) if first[i.key] == n and i.key in claimed else _claim_one(conn, i) for n, i in enumerate(items)
    ]


def _claim_one(conn: Connection, i: ClaimItem) -> tuple[str, Any]:
    return claim_or_get(
        conn,
        i.key,
        scope=i.scope,
        provider=i.provider,
        model=i.model,
        worker=i.worker,
        ttl_s=i.ttl_s,
        claim_s=i.claim_s,
        now=i.now,
    )


# Its set form for the group-commit store (store/aio.py runs it where a statement is a round trip).
claim_or_get.many = (claim_or_get_many, ClaimItem)  # type: ignore[attr-defined]


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


@dataclass(frozen=True)
class _Statements:
    claim_new: Prepared  # insert a claim marker unless the key exists; returns the key when it did not
    get: Any
    put: Prepared  # upsert an answer, its cost read from the attempt's ledger row; returns that cost


_BUILT: dict[str, _Statements] = {}


def _statements(conn: Connection) -> _Statements:
    """The hot statements, built once per dialect with bind parameters: building a statement (and its
    upsert's `excluded` columns) on every call cost more than running it."""
    dialect = conn.dialect.name
    st = _BUILT.get(dialect)
    if st is None:
        c = response_cache.c
        claim_new = (
            _insert(conn)
            .values(
                key=bindparam("key"),
                scope=bindparam("scope"),
                provider=bindparam("provider"),
                model=bindparam("model"),
                output=None,
                cost_picos=0,
                claimed_by=bindparam("claimed_by"),
                claim_expires_at=bindparam("claim_expires_at"),
                created_at=bindparam("created_at"),
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(c.key)
        )
        cost = func.coalesce(
            select(attempts.c.cost_picos).where(attempts.c.id == bindparam("attempt_id")).scalar_subquery(), 0
        )
        values: dict[str, Any] = {
            "scope": bindparam("scope"),
            "provider": bindparam("provider"),
            "model": bindparam("model"),
            "output": bindparam("output"),
            "invalid_error": None,
            "usage": bindparam("usage"),
            "cost_picos": cost,
            "job_id": bindparam("job_id"),
            "attempt_id": bindparam("attempt_id"),
            "claimed_by": None,
            "claim_expires_at": None,
            "created_at": bindparam("created_at"),
        }
        upsert = _insert(conn).values(key=bindparam("key"), **values)
        upsert = upsert.on_conflict_do_update(index_elements=["key"], set_={k: upsert.excluded[k] for k in values})
        st = _BUILT[dialect] = _Statements(
            Prepared(claim_new),
            select(response_cache).where(c.key == bindparam("key")),
            Prepared(upsert.returning(c.cost_picos)),
        )
    return st


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


def take_over(conn: Connection, key: str, *, dead: str, worker: str, claim_s: float, now: float | None = None) -> bool:
    """Take the claim of a worker known to be dead (its process is gone)."""
    now = now if now is not None else time.time()
    return (
        conn.execute(
            update(response_cache)
            .where(response_cache.c.key == key, _is_claim(), response_cache.c.claimed_by == dead)
            .values(claimed_by=worker, claim_expires_at=now + claim_s)
        ).rowcount
        == 1
    )


def renew(conn: Connection, keys: list[str], *, worker: str, claim_s: float, now: float | None = None) -> int:
    """Extend this worker's live claims (a call with retries can outlast one claim period)."""
    now = now if now is not None else time.time()
    return conn.execute(
        update(response_cache)
        .where(response_cache.c.key.in_(keys), _is_claim(), response_cache.c.claimed_by == worker)
        .values(claim_expires_at=now + claim_s)
    ).rowcount


def release(conn: Connection, key: str, *, worker: str) -> None:
    """Drop this worker's claim (its call did not end in a validated answer): another worker may now lead."""
    conn.execute(
        delete(response_cache).where(response_cache.c.key == key, _is_claim(), response_cache.c.claimed_by == worker)
    )


def low_water(max_entries: int) -> int:
    """The size an over-full cache is cut back to: 90 % of its bound, so the next exact count (a full scan of
    the table or an index) is needed only after a tenth of the bound has been stored again."""
    return max_entries - max_entries // 10


def evict(
    conn: Connection, *, max_entries: int, ttl_s: float, now: float | None = None, known_count: int | None = None
) -> tuple[int, int]:
    """Drop answers past the TTL; then, when the cache holds more than `max_entries`, the oldest down to
    low_water(max_entries). Returns (entries removed, entries left).

    `known_count` is the caller's upper bound of the cache's size (its last exact count plus what it stored
    since). While that is within the bound, neither the count nor the sweep of stale claims runs: each is a
    full scan, ~0.3 s at a million entries on SQLite, and every EVICT_EVERY answers would pay it (the hook
    runs them every RECOUNT_EVERY passes instead, see hook.py). None: count now and sweep."""
    now = now if now is not None else time.time()
    # created_at is indexed: a range delete. A claim's created_at is its claim time, so stale claims older
    # than the TTL go here too; the younger ones a dead worker left go with the sweep below.
    gone = conn.execute(delete(response_cache).where(response_cache.c.created_at < now - ttl_s)).rowcount
    if known_count is not None and known_count - gone <= max_entries:
        return gone, max(0, known_count - gone)
    gone_claims = conn.execute(
        delete(response_cache).where(_is_claim(), response_cache.c.claim_expires_at < now - 3600)
    ).rowcount
    gone += gone_claims
    count = int(conn.execute(select(func.count()).select_from(response_cache)).scalar() or 0)
    if count > max_entries:
        over = count - low_water(max_entries)
        oldest = select(response_cache.c.key).order_by(response_cache.c.created_at).limit(over).scalar_subquery()
        cut = conn.execute(delete(response_cache).where(response_cache.c.key.in_(oldest))).rowcount
        gone, count = gone + cut, count - cut
    return gone, count


@in_transaction
def record_hit(
    conn: Connection, settlement: ledger.Settlement, outcome: TaskOutcome, saved_picos: int, *, deferred: Deferred
) -> tuple[bool, bool]:
    """Settle the $0 cache attempt and record the task's outcome (ledger.settle_and_record), and note on the
    attempt the original cost it did not pay again."""
    result = ledger.settle_and_record.on_conn(conn, settlement, outcome, deferred=deferred)
    conn.execute(update(attempts).where(attempts.c.id == settlement.attempt_id).values(saved_picos=saved_picos))
    return result
