"""The hot statements on SQLite's driver cursor (store/prepared.py) write exactly what the same statements
write through SQLAlchemy, keep the ledger's guarantees (a hold within the cap, one settlement per attempt,
the charge on the task once), and fail the way SQLAlchemy's statements fail."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from llmbatch.cache import entries
from llmbatch.errors import BudgetExceeded
from llmbatch.models import Usage
from llmbatch.store import ledger, prepared, repo
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, jobs, response_cache, tasks
from llmbatch.store.tx import Deferred
from tests.support.cli import make_store_job

WORKER = "w1"
BUDGET = 2_000


def _reserve(store: AsyncStore, job: str, seq: int, amount: int):
    return store.call(
        ledger.reserve,
        job_id=job,
        task_seq=seq,
        task_id=f"t{seq}",
        provider="openai",
        model="gpt-4o-mini",
        amount_picos=amount,
        purpose="first",
        worker=WORKER,
        daily_cap_picos=10**9,
    )


def _settlement(attempt_id: int, cost: int) -> ledger.Settlement:
    return ledger.Settlement(
        attempt_id=attempt_id,
        status="succeeded",
        cost_picos=cost,
        cost_source="usage",
        usage=Usage(input_tokens=11, output_tokens=7, cached_tokens=2, reasoning_tokens=1),
        latency_ms=5,
        finish_reason="stop",
    )


def _outcome(job: str, seq: int, worker: str = WORKER) -> repo.TaskOutcome:
    return repo.TaskOutcome(
        job_id=job, seq=seq, worker=worker, status="succeeded", provider="openai", model="gpt-4o-mini", output=[seq]
    )


async def _scenario(store: AsyncStore, job: str) -> dict:
    """Concurrent reservations against a 2,000-picodollar cap, settlements (one of them twice, one after its
    lease was lost), a cache claim and answer: what one group-committed run of the hot path does."""
    got = await asyncio.gather(*(_reserve(store, job, seq, 500) for seq in range(5)), return_exceptions=True)
    ids = [a for a in got if isinstance(a, int)]
    refused = [e for e in got if isinstance(e, BudgetExceeded)]
    key = "k" * 64
    claim = await store.call(
        entries.claim_or_get,
        key,
        scope=None,
        provider="openai",
        model="gpt-4o-mini",
        worker=WORKER,
        ttl_s=60,
        claim_s=30,
    )
    seqs = await store.read(_seqs_of, ids)
    first = [await store.call(ledger.settle_and_record, _settlement(a, 100 + a), _outcome(job, s)) for a, s in seqs[:2]]
    again = await store.call(ledger.settle_and_record, _settlement(seqs[0][0], 999), _outcome(job, seqs[0][1]))
    lost = await store.call(ledger.settle_and_record, _settlement(seqs[2][0], 50), _outcome(job, seqs[2][1], "w2"))
    put = await store.call(
        entries.put_many,
        [
            {
                "key": key,
                "scope": None,
                "provider": "openai",
                "model": "gpt-4o-mini",
                "output": {"a": 1},
                "usage": None,
                "job_id": job,
                "attempt_id": seqs[0][0],
            }
        ],
    )
    return {
        "ids": len(ids),
        "refused": len(refused),
        "claim": claim,
        "first": first,
        "again": again,
        "lost": lost,
        "saved": put[0].cost_picos,
    }


def _seqs_of(conn, ids: list[int]) -> list[tuple[int, int]]:
    rows = conn.execute(select(attempts.c.id, attempts.c.task_seq).where(attempts.c.id.in_(ids))).all()
    return sorted((r.id, r.task_seq) for r in rows)


def _rows(engine, job: str) -> tuple:
    """What the run wrote, minus ids and clocks."""
    skip = {
        "id",
        "job_id",
        "started_at",
        "finished_at",
        "lease_expires_at",
        "created_at",
        "attempt_id",
        "last_activity_at",
    }
    with engine.connect() as c:

        def dump(q):
            return [{k: v for k, v in r.items() if k not in skip} for r in c.execute(q).mappings()]

        return (
            dump(select(attempts).where(attempts.c.job_id == job).order_by(attempts.c.task_seq)),
            dump(select(tasks).where(tasks.c.job_id == job).order_by(tasks.c.seq)),
            dump(select(jobs).where(jobs.c.id == job)),
            dump(select(response_cache)),
        )


def _run(url: str) -> tuple[dict, tuple]:
    engine = get_engine(url)
    job = make_store_job(engine, 5, BUDGET)
    repo.claim_tasks(engine, job, 0, 4, worker=WORKER, lease_s=300, max_deliveries=5)
    store = AsyncStore(url)
    try:
        result = asyncio.run(_scenario(store, job))
    finally:
        store.close()
    # Another worker claims the unit once the leases lapsed: the in-flight call is marked lost (an IN list on
    # the driver path), and the tasks delivered twice are poison.
    result["reclaim"] = repo.claim_tasks(
        engine, job, 0, 4, worker="w2", lease_s=300, max_deliveries=1, now=time.time() + 1000
    )
    return result, _rows(engine, job)


def test_driver_path_writes_what_sqlalchemy_writes_and_keeps_the_ledger_exact(tmp_path, monkeypatch):
    on_driver, rows_driver = _run(f"sqlite:///{tmp_path / 'driver.db'}")
    monkeypatch.setattr(prepared, "on_driver", lambda conn: False)  # the same statements through SQLAlchemy
    via_sqlalchemy, rows_sqlalchemy = _run(f"sqlite:///{tmp_path / 'sqlalchemy.db'}")
    assert on_driver == via_sqlalchemy
    assert rows_driver == rows_sqlalchemy

    # the guarantees, on the driver path
    assert on_driver["ids"] == 4 and on_driver["refused"] == 1  # 4 x 500 fit the 2,000 cap, the 5th does not
    assert on_driver["first"] == [(True, True), (True, True)]
    assert on_driver["again"] == (False, False)  # settled once; the late copy changes nothing
    assert on_driver["lost"] == (True, False)  # lease lost: charged, not recorded
    assert on_driver["claim"] == (entries.LEAD, None)
    a, t, (job,), _ = rows_driver
    assert len(a) == 4  # the refused reservation left no attempt row
    settled = [r for r in a if r["settled"]]
    assert sum(r["cost_picos"] for r in a) == job["spent_picos"] == sum(r["cost_picos"] for r in t)
    assert len(settled) == 3 and job["reserved_picos"] == 500  # one call still in flight holds its 500
    assert job["succeeded_tasks"] == 2 and sum(r["attempts"] for r in t) == 3
    assert on_driver["saved"] == settled[0]["cost_picos"]  # copied from the ledger row, not the 999 of the late copy
    assert on_driver["reclaim"] == ([], 3)  # the 3 tasks still running, delivered a second time: poison
    assert [(r["status"], r["error_class"]) for r in a if not r["settled"]] == [("unknown", "worker_lost")]
    assert job["failed_tasks"] == 3


def test_driver_errors_are_sqlalchemy_errors(tmp_path):
    """The group-commit store classifies SQLAlchemy's errors (retry, isolate, or name a full disk)."""
    engine = get_engine(f"sqlite:///{tmp_path / 'e.db'}")
    with engine.begin() as c, pytest.raises(IntegrityError):  # no such job: the foreign key refuses it
        ledger.reserve.on_conn(
            c,
            job_id="no-such-job",
            task_seq=0,
            task_id="t0",
            provider="openai",
            model="gpt-4o-mini",
            amount_picos=1,
            purpose="first",
            worker=WORKER,
            deferred=Deferred(),
        )


def test_a_statement_left_to_python_side_defaults_is_refused(tmp_path):
    """SQLAlchemy computes a column's Python-side default when it runs a statement; the driver path does not,
    so a Prepared statement must give every column: refused at once rather than written without it."""
    engine = get_engine(f"sqlite:///{tmp_path / 'd.db'}")
    stmt = prepared.Prepared(insert(attempts).values(job_id=bindparam("b_job")))  # saved_picos etc. defaulted
    with engine.begin() as c, pytest.raises(ValueError, match="must give every column"):
        stmt.run(c, {"b_job": "x"})


def test_a_refusal_an_operation_cannot_report_fails_it_instead_of_passing_silently(tmp_path):
    """open_batch reserves its lines but is not refusable (its result is a batch, not an attempt id): run through
    the group-commit store with lines over the budget, it must fail and write nothing, never return success
    for lines whose reservations were refused (the batch would then be sent unpaid-for)."""
    from llmbatch.store import batches
    from llmbatch.store.aio import UnreportedRefusal
    from llmbatch.store.schema import provider_batches

    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = get_engine(url)
    job = make_store_job(engine, 3, BUDGET)
    store = AsyncStore(url)

    async def both():
        fits = _reserve(store, job, 0, 500)
        over = store.call(
            batches.open_batch,
            job_id=job,
            provider="openai",
            model="gpt-4o-mini",
            tag="t-1",
            lines=[(1, "t1", 1_000), (2, "t2", 1_000)],  # 500 + 2,000 > the 2,000 budget
            worker=WORKER,
            lease_s=60,
            daily_cap_picos=None,
        )
        return await asyncio.gather(fits, over, return_exceptions=True)

    try:
        fits, over = asyncio.run(both())
    finally:
        store.close()
    assert isinstance(fits, int)  # the operation that fits still commits (run alone after the rollback)
    assert isinstance(over, UnreportedRefusal), over
    with engine.connect() as c:
        assert c.execute(select(provider_batches)).all() == []
        held = c.execute(select(attempts.c.task_seq).where(attempts.c.job_id == job)).scalars().all()
        assert held == [0]


def test_an_in_list_runs_on_the_driver_as_through_sqlalchemy(tmp_path, monkeypatch):
    engine = get_engine(f"sqlite:///{tmp_path / 'in.db'}")
    job = make_store_job(engine, 5, None)
    stmt = prepared.Prepared(
        select(tasks.c.seq).where(
            tasks.c.job_id == bindparam("b_job"), tasks.c.seq.in_(bindparam("b_seqs", expanding=True))
        )
    )
    with engine.connect() as c:
        driver = [stmt.all(c, {"b_job": job, "b_seqs": seqs}) for seqs in ([3], [0, 2, 4], [1], [9])]
        with pytest.raises(ValueError, match="IN list"):
            stmt.all(c, {"b_job": job, "b_seqs": []})
        monkeypatch.setattr(prepared, "on_driver", lambda conn: False)
        via_sqlalchemy = [stmt.all(c, {"b_job": job, "b_seqs": seqs}) for seqs in ([3], [0, 2, 4], [1], [9])]
    assert driver == via_sqlalchemy == [[(3,)], [(0,), (2,), (4,)], [(1,)], []]
