"""What the response-cache modules share: the Entry an answer decodes to, the predicates that tell a claim
marker from a verdict, and the hot statements. The statements live here, once, because a claim (claims.py)
and an answer (answers.py) write the same row: claim_new and put are two upserts of one key, built together
per dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ...store.prepared import Prepared
from ...store.schema import attempts, response_cache


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
