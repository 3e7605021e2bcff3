"""A token's daily cap is held by the ledger's own conditional reservation (store/ledger/budget.py), on SQLite
and Postgres: concurrent reservations across the token's jobs never pass it, others' jobs are untouched,
and settlement releases the token's window exactly like the global one."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import select, update

from llmbatch.errors import BudgetExceeded
from llmbatch.store import ledger, repo
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import get_engine
from llmbatch.store.schema import budget_windows, jobs
from llmbatch.service.tokens import create_token, list_tokens
from tests.support.cli import make_store_job

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _owned_job(engine, n: int, owner: str | None) -> str:
    job = make_store_job(engine, n, None)
    with engine.begin() as c:
        c.execute(update(jobs).where(jobs.c.id == job).values(owner=owner))
    return job


def _window(engine, key: str):
    with engine.connect() as c:
        return c.execute(
            select(budget_windows.c.spent_picos, budget_windows.c.reserved_picos).where(budget_windows.c.window == key)
        ).first()


def test_token_cap_across_jobs_under_concurrency(store_url):
    engine = get_engine(store_url)
    create_token(engine, "alice", daily_cap_picos=20_000)
    create_token(engine, "bob")
    alice, bob = (t["id"] for t in list_tokens(engine))
    a_jobs = [_owned_job(engine, 100, alice) for _ in range(2)]
    b_job = _owned_job(engine, 100, bob)
    granted, refused = [], []
    lock = threading.Lock()

    def work(job: str, seqs: range, daily_cap: int | None):
        for seq in seqs:
            try:
                att = ledger.reserve(
                    engine,
                    job_id=job,
                    task_seq=seq,
                    task_id=f"t{seq}",
                    provider="p",
                    model="m",
                    amount_picos=700,
                    purpose="first",
                    worker="w",
                    daily_cap_picos=daily_cap,
                )
            except BudgetExceeded as e:
                assert e.scope == "daily" and "token" in str(e)
                with lock:
                    refused.append(job)
                continue
            ledger.settle(
                engine, ledger.Settlement(attempt_id=att, status="succeeded", cost_picos=500, cost_source="usage")
            )
            with lock:
                granted.append(job)

    # The global daily cap is on too (large): both windows are held and released together.
    threads = [threading.Thread(target=work, args=(j, range(i, 100, 2), 10**9)) for j in a_jobs for i in range(2)]
    threads.append(threading.Thread(target=work, args=(b_job, range(40), 10**9)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, reserved = _window(engine, ledger.token_window(alice))
    assert reserved == 0 and spent <= 20_000 and spent + 700 > 20_000 - 500  # filled up to the cap, never over
    assert refused and all(j in a_jobs for j in refused)
    assert granted.count(b_job) == 40  # bob has no cap and is never stopped by alice's
    with engine.connect() as c:
        a_spent = sum(repo.get_job(c, j)["spent_picos"] for j in a_jobs)
    assert a_spent == spent
    day_spent, day_reserved = _window(engine, ledger.token_window(alice).split("/")[0])
    assert day_reserved == 0 and day_spent == a_spent + 40 * 500


def test_token_cap_through_the_group_commit_store(store_url):
    """The engine's path: AsyncStore batches reservations into one transaction (bulk INSERT on Postgres)."""
    engine = get_engine(store_url)
    create_token(engine, "carol", daily_cap_picos=3_000)
    carol = list_tokens(engine)[0]["id"]
    job = _owned_job(engine, 10, carol)
    store = AsyncStore(store_url)

    async def main():
        return await asyncio.gather(
            *(
                store.call(
                    ledger.reserve,
                    job_id=job,
                    task_seq=i,
                    task_id=f"t{i}",
                    provider="p",
                    model="m",
                    amount_picos=1_000,
                    purpose="first",
                    worker="w",
                )
                for i in range(10)
            ),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(main())
    finally:
        store.close()
    ok = [r for r in results if isinstance(r, int)]
    assert len(ok) == 3 and all(isinstance(r, BudgetExceeded) for r in results if not isinstance(r, int))
    assert _window(engine, ledger.token_window(carol)) == (0, 3_000)
    with engine.connect() as c:
        assert repo.get_job(c, job)["reserved_picos"] == 3_000
    for att in ok:  # settling releases the token window too
        ledger.settle(engine, ledger.Settlement(attempt_id=att, status="failed", cost_picos=0, cost_source="none"))
    assert _window(engine, ledger.token_window(carol)) == (0, 0)
