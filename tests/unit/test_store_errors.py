"""Store errors that waiting cannot fix (full disk, read-only, locked) get their own message at once; only a
genuine connection drop is retried."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import event, insert
from sqlalchemy.exc import OperationalError

from llmbatch.errors import StoreWriteError
from llmbatch.store.aio import AsyncStore, _is_disconnect
from llmbatch.store.db import classify_store_error, get_engine
from llmbatch.store.schema import input_errors
from tests.support.cli import make_store_job


def _op_error(msg: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception(msg))


@pytest.mark.parametrize(
    "msg, expected",
    [
        ("database or disk is full", "the disk holding the store is full"),
        ("attempt to write a readonly database", "the store is read-only"),
        ("database is locked", "the store is locked by another process"),
        ('could not extend file "base/16384/2619": No space left on device', "the disk holding the store is full"),
    ],
)
def test_write_failures_are_named_and_not_retried(msg, expected):
    e = _op_error(msg)
    known = classify_store_error(e, "postgresql://u:pw@h/db")
    assert isinstance(known, StoreWriteError) and str(known).startswith(expected)
    assert "pw" not in str(known) and "resume" in str(known)
    assert not _is_disconnect(e)


def test_a_connection_drop_is_still_retried():
    assert classify_store_error(_op_error("server closed the connection unexpectedly")) is None
    assert _is_disconnect(_op_error("server closed the connection unexpectedly"))


def test_full_sqlite_store_fails_the_operation_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'full.db'}"
    engine = get_engine(url)
    job = make_store_job(engine, 1, None)

    @event.listens_for(engine, "connect")
    def _tiny(dbapi_conn, _record):  # the "disk" holds what is there now and nothing more
        n = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count={n}")

    engine.dispose()
    store = AsyncStore(url)

    def grow(conn):
        conn.execute(insert(input_errors), [{"job_id": job, "line_no": i, "reason": "x" * 4000} for i in range(200)])

    t0 = time.monotonic()
    try:
        with pytest.raises(StoreWriteError, match="disk holding the store is full"):
            asyncio.run(store.write(grow))
    finally:
        store.close()
        event.remove(engine, "connect", _tiny)
        engine.dispose()
    assert time.monotonic() - t0 < 10, "a full disk must not be retried as an outage"


class _PgError(Exception):
    def __init__(self, sqlstate: str):
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def test_reconcile_runs_a_settle_again_after_a_deadlock_and_not_after_other_errors(monkeypatch):
    """A sweeper's settle and a worker's claim take an attempt's and its task's rows in opposite orders; Postgres
    aborts one (40P01). The sweep must settle that attempt on a second try, not give up on the whole sweep."""
    from llmbatch.store.ledger import Settlement, unknown

    calls: list[int] = []

    def settle(engine, s):
        calls.append(s.attempt_id)
        if len(calls) == 1:
            raise OperationalError("UPDATE tasks ...", {}, _PgError("40P01"))
        return True

    monkeypatch.setattr(unknown, "settle", settle)
    s = Settlement(attempt_id=7, status="unknown", cost_picos=1, cost_source="reservation")
    assert unknown._settle_retrying(None, s) is True
    assert calls == [7, 7]

    def broken(engine, s):
        calls.append(s.attempt_id)
        raise OperationalError("UPDATE tasks ...", {}, _PgError("23505"))  # not a lock conflict: raised at once

    monkeypatch.setattr(unknown, "settle", broken)
    calls.clear()
    with pytest.raises(OperationalError):
        unknown._settle_retrying(None, s)
    assert calls == [7]
