"""AsyncStore.call_first: an operation an in-flight slot waits on (a reservation) is not queued behind the
records that reached the store thread with it."""

from __future__ import annotations

import asyncio
import threading

from llmbatch.store.aio import AsyncStore


def test_a_reservation_commits_before_the_records_queued_with_it(tmp_path):
    store = AsyncStore(f"sqlite:///{tmp_path / 's.db'}")
    ran: list[str] = []
    gate = threading.Event()

    def busy(conn):  # keeps the store thread busy while the next batch queues up
        gate.wait(5)

    def op(conn, name):
        ran.append(name)
        return name

    async def main():
        first = asyncio.ensure_future(store.call(busy))
        await asyncio.sleep(0.05)
        records = [asyncio.ensure_future(store.call(op, f"record{i}")) for i in range(5)]
        await asyncio.sleep(0)
        reservation = asyncio.ensure_future(store.call_first(op, "reservation"))
        await asyncio.sleep(0.05)
        gate.set()
        await first
        assert await reservation == "reservation"
        assert [await r for r in records] == [f"record{i}" for i in range(5)]

    try:
        asyncio.run(main())
    finally:
        store.close()
    # Queued last, run first, in a transaction of its own; the records keep their order.
    assert ran == ["reservation"] + [f"record{i}" for i in range(5)]
