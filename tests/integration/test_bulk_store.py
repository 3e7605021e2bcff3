"""The set-based (bulk) forms of reserve and settle_and_record on real Postgres (ledger.reserve_many and
ledger.settle_and_record_many, and the group-commit store that runs them): they must leave exactly the rows
the single forms leave, refuse exactly what the single forms refuse, and fall back when a key repeats."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event, select

from llmbatch.models import Usage
from llmbatch.store import ledger, repo
from llmbatch.store.aio import AsyncStore, _Op
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, jobs, tasks
from llmbatch.store.tx import Deferred
from tests.support.cli import make_store_job

WORKER = "w1"


def _job(engine, n: int, budget: int | None) -> str:
    """n tasks, all claimed by WORKER (the settle path records only for the lease holder)."""
    job = make_store_job(engine, n, budget, executor="celery")
    repo.claim_tasks(engine, job, 0, n - 1, worker=WORKER, lease_s=300, max_deliveries=5)
    return job


def _reserve_kw(job: str, seq: int, amount: int, cap: int | None = None) -> dict:
    return dict(
        job_id=job,
        task_seq=seq,
        task_id=f"t{seq}",
        provider="openai",
        model="gpt-4o-mini",
        amount_picos=amount,
        purpose="first",
        worker=WORKER,
        daily_cap_picos=cap,
    )


def _settlement(attempt_id: int, i: int) -> ledger.Settlement:
    return ledger.Settlement(
        attempt_id=attempt_id,
        status="succeeded",
        cost_picos=10 + i,
        cost_source="usage",
        usage=Usage(input_tokens=100 + i, output_tokens=7 + i, cached_tokens=i % 3, reasoning_tokens=i % 2),
        latency_ms=5 + i,
        provider_request_id=f"req-{i}" if i % 2 else None,
        # text the bulk forms must carry unchanged (they send a batch as one json parameter)
        error_message=_TRICKY + str(i) if i % 4 == 1 else None,
        finish_reason="stop",
    )


_TRICKY = 'quote " apostrophe \' back\\slash {"json": [1]} tab\t newline\n é 日本 😀 \u2028 '
_PRICE = 10**17 + 3  # a bigint beyond a double's exact integers


def _outcome(job: str, seq: int, worker: str = WORKER) -> repo.TaskOutcome:
    return repo.TaskOutcome(
        job_id=job,
        seq=seq,
        worker=worker,
        status="succeeded",
        provider="openai",
        model="gpt-4o-mini",
        output={"answer": seq, "text": _TRICKY},
        error=_TRICKY if seq % 3 == 0 else None,
        escalations=seq % 2,
    )


def _state(engine, job: str):
    """Everything the operations wrote, minus ids and clocks, comparable across two jobs."""
    skip_a = {"id", "job_id", "started_at", "finished_at"}
    skip_t = {"job_id", "finished_at", "lease_expires_at"}
    with engine.connect() as c:
        a = [
            {k: v for k, v in r.items() if k not in skip_a}
            for r in c.execute(
                select(attempts).where(attempts.c.job_id == job).order_by(attempts.c.task_seq, attempts.c.attempt_no)
            ).mappings()
        ]
        t = [
            {k: v for k, v in r.items() if k not in skip_t}
            for r in c.execute(select(tasks).where(tasks.c.job_id == job).order_by(tasks.c.seq)).mappings()
        ]
        j = c.execute(select(jobs.c.spent_picos, jobs.c.reserved_picos).where(jobs.c.id == job)).one()
    return a, t, tuple(j)


def _single(engine, job: str, n: int, *, steal: set[int], dup: set[int]) -> list:
    ids = [ledger.reserve(engine, **_reserve_kw(job, i, 500 + i, cap=10**9)) for i in range(n)]
    for i in dup:  # settled before (reconcile got there first)
        ledger.settle(engine, _settlement(ids[i], i))
    _steal(engine, job, steal)
    return [ledger.settle_and_record(engine, _settlement(ids[i], i), _outcome(job, i)) for i in range(n)]


class _Statements:
    """Counts the statements sent to the server (the set forms send one per kind, whatever the batch size)."""

    def __init__(self, engine):
        self.n = 0
        event.listen(engine, "before_cursor_execute", self._count)
        self.engine = engine

    def _count(self, *_):
        self.n += 1

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self._count)


def _bulk(engine, job: str, n: int, *, steal: set[int], dup: set[int]) -> list:
    statements = _Statements(engine)
    try:
        with engine.begin() as c:
            d = Deferred()
            before = statements.n
            ids = ledger.reserve_many(
                c, [ledger.Reservation(**_reserve_kw(job, i, 500 + i, cap=10**9)) for i in range(n)], deferred=d
            )
            assert statements.n - before == 1  # one INSERT for all n
            assert not d.flush(c)
        for i in dup:
            ledger.settle(engine, _settlement(ids[i], i))
        _steal(engine, job, steal)
        with engine.begin() as c:
            d = Deferred()
            before = statements.n
            out = ledger.settle_and_record_many(
                c, [(_settlement(ids[i], i), _outcome(job, i)) for i in range(n)], deferred=d
            )
            # one UPDATE of the attempts, one of the tasks; then one statement per attempt already settled
            # (record only) and per task whose lease was lost (charge only)
            assert statements.n - before == 2 + len(dup) + len(steal - dup)
            d.flush(c)
    finally:
        statements.close()
    return out


def _steal(engine, job: str, seqs: set[int]) -> None:
    """Another worker took these tasks' leases (ours expired): our outcome must not be recorded."""
    with engine.begin() as c:
        for s in seqs:
            c.execute(tasks.update().where(tasks.c.job_id == job, tasks.c.seq == s).values(lease_owner="w2"))


def test_bulk_forms_write_what_single_forms_write(fresh_postgres_url):
    engine = get_engine(fresh_postgres_url)
    n, steal, dup = 12, {3, 7}, {5}
    a, b = _job(engine, n, 10**6), _job(engine, n, 10**6)
    single = _single(engine, a, n, steal=steal, dup=dup)
    many = _bulk(engine, b, n, steal=steal, dup=dup)
    assert single == many
    assert many[3] == (True, False) and many[5] == (False, True) and many[0] == (True, True)
    sa, sb = _state(engine, a), _state(engine, b)
    assert sa == sb
    attempts_rows, task_rows, (spent, reserved) = sb
    assert reserved == 0 and spent == sum(r["cost_picos"] for r in attempts_rows)
    assert [t["status"] for t in task_rows if t["seq"] in steal] == ["running", "running"]  # not recorded...
    assert all(t["cost_picos"] > 0 for t in task_rows)  # ...but every charge landed on its task


def test_bulk_reserve_refuses_what_does_not_fit(fresh_postgres_url):
    """A batch of reservations near the cap: the summed hold does not fit, so they are taken one by one and
    the rest are refused (their ledger rows removed), as with the single forms."""
    engine = get_engine(fresh_postgres_url)
    job = _job(engine, 10, 2_500)
    store = AsyncStore(fresh_postgres_url, threads=1)
    try:
        batch = [_Op(ledger.reserve, (), _reserve_kw(job, i, 1_000), group=True) for i in range(10)]
        results = store._in_one_transaction(batch)
    finally:
        store.close()
    ok = [v for good, v in results if good]
    refused = [v for good, v in results if not good]
    assert len(ok) == 2 and len(refused) == 8
    assert all(type(e).__name__ == "BudgetExceeded" for e in refused)
    with engine.connect() as c:
        assert sorted(c.execute(select(attempts.c.id).where(attempts.c.job_id == job)).scalars()) == sorted(ok)
        assert c.execute(select(jobs.c.reserved_picos).where(jobs.c.id == job)).scalar() == 2_000


def test_bulk_reserve_falls_back_when_a_task_repeats(fresh_postgres_url):
    engine = get_engine(fresh_postgres_url)
    job = _job(engine, 2, None)
    with engine.begin() as c:
        d = Deferred()
        ids = ledger.reserve_many(
            c,
            [
                ledger.Reservation(**_reserve_kw(job, 0, 10)),
                ledger.Reservation(**_reserve_kw(job, 0, 20)),
                ledger.Reservation(**_reserve_kw(job, 1, 30)),
            ],
            deferred=d,
        )
        d.flush(c)
    with engine.connect() as c:
        rows = c.execute(
            select(attempts.c.id, attempts.c.task_seq, attempts.c.attempt_no, attempts.c.reserved_picos)
            .where(attempts.c.job_id == job)
            .order_by(attempts.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [(ids[0], 0, 1, 10), (ids[1], 0, 2, 20), (ids[2], 1, 1, 30)]


@pytest.mark.parametrize("n", [2, 64])
def test_store_batches_use_the_bulk_forms(fresh_postgres_url, n):
    """Through the group-commit store: n concurrent tasks reserve and settle; totals are exact."""
    import asyncio

    engine = get_engine(fresh_postgres_url)
    job = _job(engine, n, 10**6)
    store = AsyncStore(fresh_postgres_url)
    assert store.grouped

    async def one(i: int):
        attempt = await store.call(ledger.reserve, **_reserve_kw(job, i, 900))
        return await store.call(ledger.settle_and_record, _settlement(attempt, i), _outcome(job, i))

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    try:
        out = asyncio.run(main())
    finally:
        store.close()
    assert out == [(True, True)] * n
    _, task_rows, (spent, reserved) = _state(engine, job)
    assert reserved == 0 and spent == sum(10 + i for i in range(n))
    assert all(t["status"] == "succeeded" and t["attempts"] == 1 for t in task_rows)


def test_bulk_forms_keep_big_integers_and_clocks_exact(fresh_postgres_url):
    """Money beyond a double's exact integers and a clock's every digit survive the bulk forms' json."""
    engine = get_engine(fresh_postgres_url)
    job = _job(engine, 2, None)
    started = 1764553600.1234567
    with engine.begin() as c:
        d = Deferred()
        reservations = [ledger.Reservation(**_reserve_kw(job, i, _PRICE), now=started) for i in range(2)]
        ids = ledger.reserve_many(c, reservations, deferred=d)
        assert not d.flush(c)
    with engine.begin() as c:
        d = Deferred()
        pairs = [(replace(_settlement(ids[i], i), cost_picos=_PRICE - 1), _outcome(job, i)) for i in range(2)]
        assert ledger.settle_and_record_many(c, pairs, deferred=d) == [(True, True)] * 2
        d.flush(c)
    with engine.connect() as c:
        rows = c.execute(
            select(attempts.c.reserved_picos, attempts.c.cost_picos, attempts.c.overrun, attempts.c.started_at).where(
                attempts.c.job_id == job
            )
        ).all()
        costs = c.execute(select(tasks.c.cost_picos).where(tasks.c.job_id == job)).scalars().all()
        spent = c.execute(select(jobs.c.spent_picos).where(jobs.c.id == job)).scalar()
    assert [tuple(r) for r in rows] == [(_PRICE, _PRICE - 1, False, started)] * 2
    assert costs == [_PRICE - 1] * 2 and spent == 2 * (_PRICE - 1)
