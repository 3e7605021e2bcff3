"""The group-commit store hands each batch's results back to the callers' event loop (store/aio.py): every
caller gets its own result or error, after the batch's commit; an operation whose caller was cancelled
before it started is not run; one cancelled while it runs still runs to its end."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import text

from llmbatch.errors import BudgetExceeded
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import get_engine


def _store(tmp_path) -> AsyncStore:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    get_engine(url)
    return AsyncStore(url)


def test_each_caller_gets_its_own_result_or_error(tmp_path):
    store = _store(tmp_path)

    def value(conn, i):
        return conn.execute(text("SELECT :i * 2"), {"i": i}).scalar()

    def refused(conn, i):
        raise BudgetExceeded(f"no room for {i}", scope="job")

    async def main():
        calls = [store.call(value if i % 3 else refused, i) for i in range(60)]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        out = asyncio.run(main())
    finally:
        store.close()
    for i, r in enumerate(out):
        if i % 3:
            assert r == 2 * i
        else:
            assert isinstance(r, BudgetExceeded) and str(r).startswith(f"no room for {i}")


def test_a_call_cancelled_before_it_starts_is_not_run(tmp_path):
    store = _store(tmp_path)
    gate, ran = threading.Event(), []

    def blocker(conn):
        gate.wait(10)
        return "done"

    def record(conn, i):
        ran.append(i)
        return i

    async def main():
        first = asyncio.ensure_future(store.call(blocker))
        await asyncio.sleep(0.2)  # the store thread is inside `blocker`'s batch
        waiting = [asyncio.ensure_future(store.call(record, i)) for i in range(5)]
        await asyncio.sleep(0.05)
        for t in waiting[:3]:
            t.cancel()
        gate.set()
        rest = await asyncio.gather(*waiting[3:])
        return await first, rest, [t.cancelled() for t in waiting]

    try:
        first, rest, cancelled = asyncio.run(main())
    finally:
        store.close()
    assert first == "done" and rest == [3, 4]
    assert cancelled == [True, True, True, False, False]
    assert sorted(ran) == [3, 4]


def test_a_call_cancelled_while_it_runs_still_finishes(tmp_path):
    store = _store(tmp_path)
    inside, gate, finished = threading.Event(), threading.Event(), []

    def slow(conn):
        inside.set()
        gate.wait(10)
        conn.execute(text("CREATE TABLE IF NOT EXISTS handover_mark (x INTEGER)"))
        finished.append(True)
        return 1

    async def main():
        t = asyncio.ensure_future(store.call(slow))
        while not inside.is_set():
            await asyncio.sleep(0.01)
        t.cancel()
        gate.set()
        try:
            await t
        except asyncio.CancelledError:
            pass
        return await store.call(lambda conn: conn.execute(text("SELECT count(*) FROM handover_mark")).scalar())

    try:
        assert asyncio.run(main()) == 0
    finally:
        store.close()
    assert finished == [True]
