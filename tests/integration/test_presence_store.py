"""Worker presence in the store (store/presence.py), on SQLite and Postgres: who counts as dead, what is handed
back, what a worker that comes back learns. The end-to-end behaviour with real workers is in
test_fast_recovery.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from llmbatch.store import ledger, presence, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import AttemptStatus, TaskStatus, attempts, tasks
from tests.support.cli import make_store_job

pytestmark = pytest.mark.integration

LEASE, TTL = 300.0, 10.0


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'presence.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    return get_engine(url)


def _claim(engine, job, lo, hi, worker, now):
    claimed, _ = repo.claim_tasks(engine, job, lo, hi, worker=worker, lease_s=LEASE, max_deliveries=5, now=now)
    return [c.seq for c in claimed]


def _beat(engine, worker, now):
    with engine.begin() as c:
        return presence.beat(c, worker_id=worker, host="h", pid=1, started_at=now, ttl_s=TTL, now=now)


def _statuses(engine, job):
    with engine.connect() as c:
        return {r.seq: (r.status, r.lease_owner) for r in c.execute(select(tasks).where(tasks.c.job_id == job))}


def test_lapsed_worker_tasks_go_back_and_live_ones_stay(engine):
    now = time.time()
    job = make_store_job(engine, 9, budget_picos=None)
    assert not _beat(engine, "A", now - 30).lapsed  # A: last seen 30 s ago, so lapsed 20 s ago
    assert not _beat(engine, "B", now).lapsed
    a_seqs = _claim(engine, job, 0, 2, "A", now - 30)
    b_seqs = _claim(engine, job, 3, 5, "B", now)
    attempt = ledger.reserve(
        engine,
        job_id=job,
        task_seq=a_seqs[0],
        task_id="t0",
        provider="p",
        model="m",
        amount_picos=500,
        purpose="first",
        worker="A",
        now=now - 29,
    )

    released = presence.release_dead(engine, lease_s=LEASE, ttl_s=TTL, now=now)
    assert sorted(released) == [(job, s) for s in a_seqs]
    st = _statuses(engine, job)
    assert all(st[s] == (TaskStatus.queued, None) for s in a_seqs)
    assert all(st[s] == (TaskStatus.running, "B") for s in b_seqs)
    with engine.connect() as c:
        row = c.execute(select(attempts).where(attempts.c.id == attempt)).mappings().one()
        job_row = repo.get_job(c, job)
    # The dead worker's call may have been billed: settled in the same transaction as an unknown outcome,
    # charged its reservation, so a late settle by a worker that was only frozen changes nothing.
    assert (row["status"], row["settled"], row["error_class"]) == (AttemptStatus.unknown, True, "worker_lost")
    assert row["cost_picos"] == 500 and job_row["spent_picos"] == 500 and job_row["reserved_picos"] == 0
    late = ledger.Settlement(attempt_id=attempt, status=AttemptStatus.succeeded, cost_picos=7, cost_source="usage")
    assert ledger.settle(engine, late) is False

    # A second sweep finds nothing: each task is handed back once.
    assert presence.release_dead(engine, lease_s=LEASE, ttl_s=TTL, now=now + 0.1) == []
    # A comes back: it learns it lapsed, so it must treat what it claimed before as lost.
    assert _beat(engine, "A", now + 1).lapsed
    assert not _beat(engine, "A", now + 2).lapsed
    # A task handed back cannot be recorded by its old holder (the lease check).
    outcome = repo.TaskOutcome(job_id=job, seq=a_seqs[1], worker="A", status=TaskStatus.succeeded, output="x")
    assert repo.record_outcome(engine, outcome) is False


def test_worker_without_presence_row_is_dead_only_once_its_lease_is_stale(engine):
    """A worker of an older version writes no presence row; it counts as dead once it has not renewed its lease
    for longer than a TTL, never while it keeps renewing."""
    now = time.time()
    job = make_store_job(engine, 4, budget_picos=None)
    old = _claim(engine, job, 0, 1, "legacy-stale", now - 60)
    fresh = _claim(engine, job, 2, 3, "legacy-renewing", now - 2)
    released = presence.release_dead(engine, lease_s=LEASE, ttl_s=TTL, now=now)
    assert sorted(released) == [(job, s) for s in old]
    assert all(_statuses(engine, job)[s][0] == TaskStatus.running for s in fresh)


def test_leave_hands_back_everything_the_worker_holds(engine):
    now = time.time()
    job = make_store_job(engine, 5, budget_picos=None)
    _beat(engine, "W", now)
    seqs = _claim(engine, job, 0, 4, "W", now)
    assert sorted(presence.leave(engine, "W")) == [(job, s) for s in seqs]
    with engine.connect() as c:
        assert presence.live_workers(c, now) == []
    assert all(v == (TaskStatus.queued, None) for v in _statuses(engine, job).values())
    # Handed back, they are claimable at once by anyone (no lease to wait for).
    assert _claim(engine, job, 0, 4, "other", now + 0.5) == seqs


def test_terminal_tasks_are_never_touched(engine):
    now = time.time()
    job = make_store_job(engine, 2, budget_picos=None)
    _beat(engine, "A", now - 60)
    seqs = _claim(engine, job, 0, 1, "A", now - 60)
    assert repo.record_outcome(
        engine, repo.TaskOutcome(job_id=job, seq=seqs[0], worker="A", status=TaskStatus.succeeded, output="ok")
    )
    assert presence.release_dead(engine, lease_s=LEASE, ttl_s=TTL, now=now) == [(job, seqs[1])]
    assert _statuses(engine, job)[seqs[0]] == (TaskStatus.succeeded, None)
