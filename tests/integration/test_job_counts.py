"""The job row's task counts (store/job_counts.py) equal a recount of the tasks after every kind of status
change a job goes through: succeeded, failed, skipped, lease lost, released, poison, cancelled, retried, and
the group-commit and set-based (Postgres) forms; on SQLite and Postgres. Migration 0012 backfills them."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import text

from llmbatch.models import Usage
from llmbatch.reporting import status_dict
from llmbatch.store import job_counts, ledger, repo
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import _alembic_config, get_engine, make_engine, upgrade
from llmbatch.store.tx import Deferred
from tests.support.cli import make_store_job

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _check(engine, job: str, **expect: int) -> None:
    with engine.connect() as c:
        exact = job_counts.exact_counts(c, job)
        exact["total"] = sum(exact.values())
        fast = job_counts.counts(c, job)
        assert fast == exact
        assert status_dict(c, repo.get_job(c, job))["counts"] == {
            k: exact[k] for k in ("total", "queued", "running", "succeeded", "failed", "skipped", "cancelled")
        }
        assert {k: exact[k] for k in expect} == expect


def _charge(engine, job: str, seq: int, worker: str) -> ledger.Settlement:
    attempt = ledger.reserve(
        engine,
        job_id=job,
        task_seq=seq,
        task_id=f"t{seq}",
        provider="p",
        model="m",
        amount_picos=100,
        purpose="first",
        worker=worker,
    )
    return ledger.Settlement(
        attempt_id=attempt,
        status="succeeded",
        cost_picos=7,
        cost_source="usage",
        usage=Usage(input_tokens=3, output_tokens=2),
    )


def _done(job: str, seq: int, worker: str, status: str = "succeeded", **kw) -> repo.TaskOutcome:
    return repo.TaskOutcome(job_id=job, seq=seq, worker=worker, status=status, output="x", **kw)


def test_counts_on_the_job_row_equal_a_recount(store_url):
    engine = get_engine(store_url)
    pg = engine.dialect.name == "postgresql"
    job = make_store_job(engine, 60, None)
    _check(engine, job, total=60, queued=60)
    claimed, poison = repo.claim_tasks(engine, job, 0, 39, worker="A", lease_s=60, max_deliveries=5)
    assert len(claimed) == 40 and poison == 0
    _check(engine, job, queued=20, running=40)

    for seq in range(0, 5):  # settle and record, one transaction each
        assert ledger.settle_and_record(engine, _charge(engine, job, seq, "A"), _done(job, seq, "A")) == (True, True)
    assert ledger.settle_and_record(engine, _charge(engine, job, 0, "A"), _done(job, 0, "A")) == (True, False)
    assert not repo.record_outcome(engine, _done(job, 1, "A", "failed"))  # recorded already: counts nothing
    assert not repo.record_outcome(engine, _done(job, 5, "B"))  # not the lease holder
    for seq in range(5, 10):
        assert repo.record_outcome(engine, _done(job, seq, "A", "failed", error="bad"))
    for seq in range(10, 13):
        assert repo.record_outcome(engine, _done(job, seq, "A", "skipped", skip_reason="budget"))
    _check(engine, job, running=27, succeeded=5, failed=5, skipped=3)

    # Many in one transaction: the group-commit store (AsyncStore), and the set-based form on Postgres.
    async def grouped():
        store = AsyncStore(store_url)
        try:
            pairs = [(_charge(engine, job, seq, "A"), _done(job, seq, "A")) for seq in range(13, 19)]
            got = await asyncio.gather(
                *[store.call(ledger.settle_and_record, s, o) for s, o in pairs],
                *[store.call(repo.record_outcome, _done(job, seq, "A", "cancelled")) for seq in (19, 20)],
            )
            assert got == [(True, True)] * 6 + [True, True]
        finally:
            store.close()

    asyncio.run(grouped())
    _check(engine, job, succeeded=11, cancelled=2)
    if pg:
        pairs = [(_charge(engine, job, seq, "A"), _done(job, seq, "A")) for seq in range(21, 25)]
        pairs.append((_charge(engine, job, 25, "A"), _done(job, 25, "B")))  # lease not held: charge only
        with engine.begin() as conn:
            d = Deferred()
            assert ledger.settle_and_record_many(conn, pairs, deferred=d) == [(True, True)] * 4 + [(True, False)]
            d.flush(conn)
        _check(engine, job, succeeded=15)

    # Released claims go back to the queue; poison (too many deliveries) fails; cancel; then retry.
    still_running = 5 if pg else 9  # 25..29 (Postgres: 21..24 finished in the set-based form), else 21..29
    assert repo.release_claims(engine, job, list(range(30, 40)), worker="A") == 10
    _check(engine, job, running=still_running, queued=10 + 20)
    _, poison = repo.claim_tasks(engine, job, 40, 44, worker="C", lease_s=60, max_deliveries=0)
    assert poison == 5
    with engine.begin() as c:
        assert repo.request_cancel(c, job) == 25
    _check(engine, job, queued=0, failed=10, cancelled=27)
    with engine.begin() as c:
        repo.requeue_for_retry(c, job, include_failed=True)
    _check(engine, job, queued=10 + 3 + 27, failed=0, skipped=0, cancelled=0)
    claimed, _ = repo.claim_tasks(engine, job, 0, 59, worker="D", lease_s=60, max_deliveries=5)
    assert len(claimed) == 40
    for t in claimed:
        assert repo.record_outcome(engine, _done(job, t.seq, "D"))
    _check(engine, job, queued=0, running=still_running, succeeded=60 - still_running)
    for seq in range(30 - still_running, 30):
        assert repo.record_outcome(engine, _done(job, seq, "A"))
    _check(engine, job, running=0, succeeded=60)
    with engine.begin() as c:
        assert repo.finish_job_if_done(c, job) == "succeeded"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store_url(request):
    return request.getfixturevalue("empty_sqlite_url" if request.param == "sqlite" else "empty_postgres_url")


def test_migration_backfills_the_counts_of_existing_jobs(empty_store_url):
    engine = make_engine(empty_store_url)
    if engine.dialect.name == "sqlite":
        command.upgrade(_alembic_config(engine), "0009")
    else:
        with engine.connect() as conn:
            cfg = _alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0009")
            conn.commit()
    statuses = ["succeeded"] * 4 + ["failed"] * 3 + ["skipped"] * 2 + ["cancelled", "queued", "running"]
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO jobs (id, status, spec, executor, simulate, spent_picos, reserved_picos, "
                "total_tasks, invalid_lines, cancel_requested, created_at) VALUES "
                f"('j', 'running', '{{}}', 'local', true, 0, 0, {len(statuses)}, 0, false, 0)"
            )
        )
        for i, s in enumerate(statuses):
            c.execute(
                text(
                    "INSERT INTO tasks (job_id, seq, task_id, line_no, task_type, payload, status, input_tokens, "
                    "cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_picos, attempts, "
                    f"escalations, deliveries) VALUES ('j', {i}, 't{i}', {i + 1}, 'chat', '{{}}', '{s}', 0, 0, "
                    "0, 0, 0, 0, 0, 0, 0)"
                )
            )
    upgrade(engine)
    with engine.connect() as c:
        want = {"queued": 1, "running": 1, "succeeded": 4, "failed": 3, "skipped": 2, "cancelled": 1}
        assert job_counts.exact_counts(c, "j") == want  # the tasks are still there (no table rebuild)
        assert job_counts.counts(c, "j") == {"total": 12, **want}
    engine.dispose()
