"""Budget race, end to end: 4 real Celery workers (--concurrency 100 each) on a real Redis broker and a real
Postgres store race 1,000 simulated calls (0.1 s +- 0.05 s each) against a budget of ~20% of the job's cost.

The cap must hold (spent + reserved <= budget at every poll, spent <= budget at the end), the rest of the
tasks must end `skipped` (budget) with the job budget_exhausted (`status` exits 4), and the job must stop
close to the cap: less than one call's reservation away. `retry --budget` with enough money then finishes
every task, and job spent == ledger sum == report totals, to the micro-dollar.

The race runs once per module (it is the expensive part); each test checks one promise about it.
"""

from __future__ import annotations

from decimal import Decimal

import re
import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select

from llmbatch.money import usd_to_picos
from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.databases import flushed_redis_db, temp_database
from tests.support.procs import stop_process, WorkerProcs
from tests.support.cli import cli_env, run_cli, run_json, write_reviews

# 1,000 tasks (was 2,000): the budget then holds ~200 calls against 400 slots (4 x 100), so far more calls
# contend for the last dollars than fit; a longer job only lengthens the reference run and the retry.
N_TASKS = 1000
N_WORKERS = 4
WORKER_CONCURRENCY = 100
BUDGET_SHARE = 5  # budget = full cost / 5
REDIS_DB = 11
TERMINAL = ("succeeded", "failed", "budget_exhausted", "cancelled")
NEEDS = re.compile(r"needs \$([0-9.]+) reserved")


def private_redis(redis_url: str, db: int) -> str:
    """A Redis database of our own on the shared test server: other sessions' workers consume the default
    database's `llmbatch` queue (and FLUSHDB it), which would steal or drop this test's units."""
    return flushed_redis_db(redis_url, db)


def _usd(picos: int) -> str:
    return format(Decimal(picos) / 10**12, "f")  # exact


@dataclass
class Race:
    job_id: str
    env: dict[str, str]
    full_picos: int
    budget: int
    wall_s: float
    polls: int
    max_in_flight: int
    cap_violations: list[dict]  # polls where spent + reserved > budget
    capped_job: dict
    capped_ledger: int
    capped_counts: dict
    capped_not_done: set
    capped_status_exit: int
    max_reservation: int
    skipped_needs: list[int]  # the reservation each budget-skipped task was refused
    workers: int
    retry_exit: int = -1
    retry_status: dict = field(default_factory=dict)
    retry_wall_s: float = 0.0


@pytest.fixture(scope="module")
def race(request, tmp_path_factory, postgres_url, redis_url):

    tmp = tmp_path_factory.mktemp("budget_race")
    src = tmp / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    sim_cfg = SimulatorConfig(latency_s=0.1, latency_jitter_s=0.05, seed=11)

    # 1. The job's full cost: the same file, embedded on SQLite, against the same simulator settings.
    sim, url = start_subprocess(sim_cfg)
    try:
        p, full = run_json(
            ["run", str(src), "--simulate", "--concurrency", "200"],
            cli_env(f"sqlite:///{tmp}/full.db", LLMBATCH_SIMULATOR_URL=url),
            timeout=120,
        )
    finally:
        stop_process(sim)
    assert p.returncode == 0 and full["status"] == "succeeded", (p.stdout, p.stderr)
    full_picos = usd_to_picos(full["spent_usd"])
    budget = full_picos // BUDGET_SHARE

    # A database of our own on the test server (module scope: fresh_postgres_url is per test).
    with temp_database(postgres_url, "llmbatch_race") as db_url:
        workers = WorkerProcs(request=request, tmp_path=tmp)
        sim, url = start_subprocess(sim_cfg)
        try:
            env = cli_env(
                db_url,
                LLMBATCH_BROKER_URL=private_redis(redis_url, REDIS_DB),
                LLMBATCH_SIMULATOR_URL=url,
                LLMBATCH_CHUNK_SIZE="25",
            )
            race = _run_capped(env, db_url, src, full_picos, budget, workers)
            started = time.time()
            p, st = run_json(["retry", race.job_id, "--budget", _usd(full_picos * 3)], env, timeout=120)
            race.retry_wall_s = time.time() - started
            race.retry_exit, race.retry_status = p.returncode, st
            yield race
        finally:
            workers.stop_all()
            stop_process(sim)


def _run_capped(env, db_url, src, full_picos: int, budget: int, workers: WorkerProcs) -> Race:
    # Every worker is up before the units are queued: the budget lasts only ~200 calls, and a worker still
    # starting when it runs out would have no attempt in the ledger (`race.workers == N_WORKERS`).
    workers.start(N_WORKERS, env=env, args=["--concurrency", str(WORKER_CONCURRENCY)], ready_timeout=90)
    p = run_cli(["submit", str(src), "--simulate", "--budget", _usd(budget)], env)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().splitlines()[-1]
    started = time.time()

    engine = get_engine(db_url)
    polls, max_in_flight, violations, job = 0, 0, [], None
    deadline = time.time() + 90
    while time.time() < deadline:
        with engine.connect() as c:  # one snapshot: the job row and its open attempts
            job = repo.get_job(c, job_id)
            in_flight = c.execute(
                select(func.count())
                .select_from(attempts)
                .where(attempts.c.job_id == job_id, attempts.c.settled.is_(False))
            ).scalar()
        polls += 1
        max_in_flight = max(max_in_flight, in_flight)
        if job["spent_picos"] + job["reserved_picos"] > budget:
            violations.append({k: job[k] for k in ("spent_picos", "reserved_picos", "budget_picos")})
        if job["status"] in TERMINAL:
            break
        time.sleep(0.05)
    wall = time.time() - started
    assert job["status"] in TERMINAL, f"job not finished after 90 s: {job['status']}"

    with engine.connect() as c:
        job = repo.get_job(c, job_id)
        ledger = ledger_api.ledger_sum(c, job_id)
        counts = repo.task_counts(c, job_id)
        max_reservation = c.execute(
            select(func.max(attempts.c.reserved_picos)).where(attempts.c.job_id == job_id)
        ).scalar()
        n_workers = c.execute(
            select(func.count(func.distinct(attempts.c.worker))).where(attempts.c.job_id == job_id)
        ).scalar()
        not_done = {
            (s, r)
            for s, r in c.execute(
                select(tasks.c.status, tasks.c.skip_reason)
                .distinct()
                .where(tasks.c.job_id == job_id, tasks.c.status != "succeeded")
            )
        }
        errors = (
            c.execute(select(tasks.c.error).where(tasks.c.job_id == job_id, tasks.c.status == "skipped"))
            .scalars()
            .all()
        )
    needs = [usd_to_picos(m.group(1)) for m in (NEEDS.search(e or "") for e in errors) if m]
    status_exit = run_cli(["status", job_id], env).returncode
    print(
        f"\nbudget race: full cost {full_picos} picos, budget {budget} picos (${_usd(budget)}); "
        f"spent {job['spent_picos']} picos, {budget - job['spent_picos']} left "
        f"(largest reservation {max_reservation}, smallest refused {min(needs, default=None)}); "
        f"succeeded {counts['succeeded']}, skipped {counts['skipped']}; up to {max_in_flight} calls in flight "
        f"over {polls} polls from {n_workers} workers; wall {wall:.1f}s"
    )
    return Race(
        job_id=job_id,
        env=env,
        full_picos=full_picos,
        budget=budget,
        wall_s=wall,
        polls=polls,
        max_in_flight=max_in_flight,
        cap_violations=violations,
        capped_job=job,
        capped_ledger=ledger,
        capped_counts=counts,
        capped_not_done=not_done,
        capped_status_exit=status_exit,
        max_reservation=max_reservation,
        skipped_needs=needs,
        workers=n_workers,
    )


def test_the_cap_holds_at_every_instant_and_the_rest_is_skipped(race):
    job, counts = race.capped_job, race.capped_counts
    assert race.cap_violations == [], "spent + reserved exceeded the budget while calls were in flight"
    assert job["spent_picos"] <= race.budget
    assert job["spent_picos"] == race.capped_ledger
    assert job["reserved_picos"] == 0
    assert job["status"] == "budget_exhausted"
    assert race.capped_status_exit == 4
    assert counts["queued"] == counts["running"] == 0
    assert counts["succeeded"] + counts["skipped"] == N_TASKS
    assert counts["succeeded"] > 0 and counts["skipped"] > 0
    assert race.capped_not_done == {("skipped", "budget")}
    # It was a race: many calls in flight at once, from every worker.
    assert race.max_in_flight > 2 * N_WORKERS
    assert race.workers == N_WORKERS


def test_it_stops_within_one_call_of_the_cap(race):
    left = race.budget - race.capped_job["spent_picos"]
    assert left < race.max_reservation, (
        f"{left} picos of budget left unspent; the largest single reservation was {race.max_reservation}"
    )
    # Stricter, and the real promise: no task was skipped whose call would have fit in what was left.
    if race.skipped_needs:
        assert left < min(race.skipped_needs), (
            f"{left} picos left, yet tasks needing only {min(race.skipped_needs)} were skipped for budget"
        )


def test_retry_with_enough_budget_finishes_and_every_total_agrees(race):
    assert race.retry_exit == 0, race.retry_status
    assert race.retry_status["status"] == "succeeded"
    assert race.retry_status["counts"]["succeeded"] == N_TASKS
    engine = get_engine(race.env["LLMBATCH_DATABASE_URL"])
    with engine.connect() as c:
        job = repo.get_job(c, race.job_id)
        ledger = ledger_api.ledger_sum(c, race.job_id)
        task_sum = sum(r["cost_picos"] for r in repo.iter_task_rows(c, race.job_id))
        doubles = c.execute(
            select(attempts.c.task_seq)
            .where(attempts.c.job_id == race.job_id, attempts.c.status == "succeeded")
            .group_by(attempts.c.task_seq)
            .having(func.count() > 1)
        ).all()
    p, rep = run_json(["report", race.job_id], race.env)
    assert p.returncode == 0, p.stderr
    print(
        f"\nbudget race retry: {N_TASKS} succeeded in {race.retry_wall_s:.1f}s; spent {job['spent_picos']} "
        f"picos in all (ledger {ledger}, report {rep['ledger_picos']}); budget {job['budget_picos']}"
    )
    assert job["reserved_picos"] == 0
    assert job["spent_picos"] == ledger == task_sum == rep["spent_picos"] == rep["ledger_picos"]
    assert rep["reconciled"] is True and rep["unsettled_attempts"] == 0
    # int(): on Postgres by_model's SUMs come back as Decimal and `report --json` prints them as strings
    # (test_report_audit checks the JSON types); the amounts themselves must still agree exactly.
    assert sum(int(m["cost_picos"]) for m in rep["by_model"]) == ledger
    assert job["spent_picos"] > race.capped_job["spent_picos"]  # the first run's spend is kept, not reset
    assert job["spent_picos"] <= job["budget_picos"]
    assert doubles == [], "a task was recorded as succeeded by more than one attempt"
    assert run_cli(["status", race.job_id], race.env).returncode == 0
