"""SQLite: reads through store.db.reading() take no write lock, so `status --watch` beside a running job
neither waits for the writer's batches nor holds them up. Writers still take the lock up front."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from llmbatch.store import repo
from llmbatch.store.db import get_engine, reading
from llmbatch.store.schema import jobs
from tests.support.cli import make_store_job


def test_a_reader_neither_waits_for_nor_blocks_the_writer(sqlite_url):
    engine = get_engine(sqlite_url)
    job = make_store_job(engine, 10, 1_000)
    # A writer mid-transaction (holding the write lock): a reader gets the last committed state at once.
    with engine.begin() as w:
        w.execute(jobs.update().where(jobs.c.id == job).values(spent_picos=7))
        t0 = time.perf_counter()
        with reading(engine) as r:
            assert repo.task_counts(r, job)["queued"] == 10
            assert r.execute(select(jobs.c.spent_picos).where(jobs.c.id == job)).scalar() == 0
        assert time.perf_counter() - t0 < 1.0
    # A reader mid-transaction: a writer (in another thread, as the store thread is) commits at once.
    with reading(engine) as r:
        assert r.execute(select(jobs.c.spent_picos).where(jobs.c.id == job)).scalar() == 7
        took: list[float] = []

        def write():
            t = time.perf_counter()
            with engine.begin() as w:
                w.execute(jobs.update().where(jobs.c.id == job).values(spent_picos=9))
            took.append(time.perf_counter() - t)

        th = threading.Thread(target=write)
        th.start()
        th.join(10)
        assert took and took[0] < 1.0, took
        # The reader's snapshot is stable within its transaction.
        assert r.execute(select(jobs.c.spent_picos).where(jobs.c.id == job)).scalar() == 7
    with reading(engine) as r:
        assert r.execute(select(jobs.c.spent_picos).where(jobs.c.id == job)).scalar() == 9
