"""The budget invariants at the store level, under real concurrency, on SQLite and on Postgres:
spent <= budget always, job totals == ledger sum exactly, no reservation left behind, exactly-once settle."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import func, select

from llmbatch.errors import BudgetExceeded
from llmbatch.models import Usage
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, budget_windows, tasks
from tests.support.cli import make_store_job


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _job(engine, n_tasks: int, budget: int | None) -> str:
    return make_store_job(engine, n_tasks, budget)


def test_concurrent_reservations_never_overspend(store_url):
    engine = get_engine(store_url)
    budget = 50_000
    job = _job(engine, 400, budget)
    charged: list[int] = []
    skipped: list[int] = []
    lock = threading.Lock()

    def work(seqs: list[int], seed: int):
        rng = random.Random(seed)
        for seq in seqs:
            upper = rng.randint(100, 900)
            try:
                attempt = ledger_api.reserve(
                    engine,
                    job_id=job,
                    task_seq=seq,
                    task_id=f"t{seq}",
                    provider="p",
                    model="m",
                    amount_picos=upper,
                    purpose="first",
                    worker=f"w{seed}",
                )
            except BudgetExceeded:
                with lock:
                    skipped.append(seq)
                continue
            actual = rng.randint(0, upper)  # the actual cost never exceeds the reserved upper bound
            assert ledger_api.settle(
                engine,
                ledger_api.Settlement(
                    attempt_id=attempt,
                    status="succeeded",
                    cost_picos=actual,
                    cost_source="usage",
                    usage=Usage(input_tokens=actual),
                ),
            )
            # A duplicate settle (a redelivered message) must change nothing.
            assert not ledger_api.settle(
                engine,
                ledger_api.Settlement(attempt_id=attempt, status="succeeded", cost_picos=actual, cost_source="usage"),
            )
            with lock:
                charged.append(actual)

    threads = [threading.Thread(target=work, args=(list(range(i, 400, 8)), i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as c:
        j = repo.get_job(c, job)
        ledger = ledger_api.ledger_sum(c, job)
    assert j["spent_picos"] <= budget
    assert j["spent_picos"] == ledger == sum(charged)
    assert j["reserved_picos"] == 0
    assert skipped, "the budget was sized to run out; some reservations must have been refused"
    # It stopped near the cap: no refused reservation could have fit (each upper bound <= 900).
    assert budget - j["spent_picos"] < budget  # sanity
    assert j["spent_picos"] > budget * 0.5


def test_daily_cap_spans_jobs(store_url):
    engine = get_engine(store_url)
    a, b = _job(engine, 3, None), _job(engine, 3, None)
    cap = 1000

    def reserve_600(job_id: str) -> int:
        return ledger_api.reserve(
            engine,
            job_id=job_id,
            task_seq=0,
            task_id="t0",
            provider="p",
            model="m",
            amount_picos=600,
            purpose="first",
            worker="w",
            daily_cap_picos=cap,
        )

    ids = [reserve_600(a)]
    with pytest.raises(BudgetExceeded) as ei:
        reserve_600(b)
    assert ei.value.scope == "daily"
    with engine.connect() as c:  # the refused daily reservation rolled back the job-level hold too
        assert repo.get_job(c, b)["reserved_picos"] == 0
    ledger_api.settle(
        engine, ledger_api.Settlement(attempt_id=ids[0], status="succeeded", cost_picos=100, cost_source="usage")
    )
    reserve_600(b)


def test_lost_lease_attempt_is_held_then_reconciled(store_url):
    engine = get_engine(store_url)
    job = _job(engine, 2, 10_000)
    claimed, _ = repo.claim_tasks(engine, job, 0, 1, worker="dead", lease_s=0.01, max_deliveries=5)
    assert len(claimed) == 2
    att = ledger_api.reserve(
        engine,
        job_id=job,
        task_seq=0,
        task_id="t0",
        provider="p",
        model="m",
        amount_picos=700,
        purpose="first",
        worker="dead",
    )
    import time

    time.sleep(0.05)
    claimed2, _ = repo.claim_tasks(engine, job, 0, 1, worker="alive", lease_s=30, max_deliveries=5)
    assert {c.seq for c in claimed2} == {0, 1}
    with engine.connect() as c:
        j = repo.get_job(c, job)
    assert j["reserved_picos"] == 700, "an unknown outcome keeps its reservation"
    assert ledger_api.reconcile(engine, job_id=job) == [att]
    with engine.connect() as c:
        j = repo.get_job(c, job)
        assert j["reserved_picos"] == 0 and j["spent_picos"] == 700 == ledger_api.ledger_sum(c, job)
    # The late worker's settle (if it ever comes back) changes nothing: reconcile already decided.
    assert not ledger_api.settle(
        engine, ledger_api.Settlement(attempt_id=att, status="succeeded", cost_picos=5, cost_source="usage")
    )
    # Only the lease holder records the task's outcome.
    assert not repo.record_outcome(engine, repo.TaskOutcome(job, 0, worker="dead", status="succeeded", output="x"))
    assert repo.record_outcome(engine, repo.TaskOutcome(job, 0, worker="alive", status="succeeded", output="x"))


def test_poison_task_fails_after_max_deliveries(store_url):
    engine = get_engine(store_url)
    job = _job(engine, 1, None)
    import time

    for i in range(3):
        claimed, poisoned = repo.claim_tasks(engine, job, 0, 0, worker=f"w{i}", lease_s=0.001, max_deliveries=2)
        time.sleep(0.01)
    assert claimed == [] and poisoned == 1
    with engine.connect() as c:
        counts = repo.task_counts(c, job)
    assert counts["failed"] == 1


def test_a_reservation_never_sent_is_released_exactly_once(store_url):
    """ledger.release_unsent (a call reserved ahead of its slot, then not sent): its row goes and its whole hold
    comes back, once; a settled attempt is never released, a released one never settled."""
    engine = get_engine(store_url)
    job = _job(engine, 2, 1000)

    def reserve(seq: int, amount: int) -> int:
        return ledger_api.reserve(
            engine,
            job_id=job,
            task_seq=seq,
            task_id=f"t{seq}",
            provider="p",
            model="m",
            amount_picos=amount,
            purpose="first",
            worker="w",
            daily_cap_picos=10_000,
        )

    sent, unsent = reserve(0, 600), reserve(1, 400)
    with pytest.raises(BudgetExceeded):  # both holds count against the cap
        reserve(1, 1)
    assert ledger_api.release_unsent(engine, unsent)
    assert not ledger_api.release_unsent(engine, unsent)  # exactly once
    assert not ledger_api.settle(
        engine, ledger_api.Settlement(attempt_id=unsent, status="succeeded", cost_picos=5, cost_source="usage")
    )
    assert ledger_api.settle(
        engine, ledger_api.Settlement(attempt_id=sent, status="succeeded", cost_picos=250, cost_source="usage")
    )
    assert not ledger_api.release_unsent(engine, sent)  # a settled call keeps its cost
    with engine.connect() as c:
        j = repo.get_job(c, job)
        assert (j["reserved_picos"], j["spent_picos"]) == (0, 250) and ledger_api.ledger_sum(c, job) == 250
        counted = c.execute(select(tasks.c.attempts).where(tasks.c.job_id == job).order_by(tasks.c.seq)).scalars()
        assert list(counted) == [1, 0]  # the task's attempts count calls made, not reservations given back
        window = c.execute(select(budget_windows.c.reserved_picos, budget_windows.c.spent_picos)).one()
        assert tuple(window) == (0, 250)  # the daily window's hold came back too
        assert c.execute(select(func.count()).select_from(attempts).where(attempts.c.job_id == job)).scalar() == 1
    late = reserve(1, 750)  # the released money is free again
    with engine.begin() as c:  # its claim taken over while it waited: the row is marked unknown, still unsent
        ledger_api.mark_lost(c, job, seqs=[1], error_class="lease_lost", error_message="taken over")
    assert ledger_api.release_unsent(engine, late)
    with engine.connect() as c:
        assert repo.get_job(c, job)["reserved_picos"] == 0 and ledger_api.ledger_sum(c, job) == 250
