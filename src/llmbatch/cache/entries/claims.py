"""Claims on the response cache: the lookup that either finds a key's answer or verdict, or makes this
worker the one that calls for it (claim_or_get, and its set form for group commit), and the claim's life
after: taken over from a dead worker, renewed while the call runs, released when it ends without an answer.
A claim marker is a response_cache row with neither an output nor an invalid verdict (see __init__.py).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, delete, or_, update

from ...store.prepared import json_rows, on_driver
from ...store.schema import response_cache
from ...store.tx import Deferred
from ._table import _entry, _is_claim, _is_verdict, _statements

# claim_or_get's verdicts
HIT, INVALID, LEAD, WAIT = "hit", "invalid", "lead", "wait"


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
