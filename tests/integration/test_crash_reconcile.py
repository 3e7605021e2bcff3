"""A worker dies mid-call (SIGKILL of its whole process group, calls in flight at the simulator): its
reservations stay counted, the cap holds, the survivor's sweeper re-queues the dead worker's units once their
leases lapse and reconciles its attempts, the restarted worker joins in, and the job completes with a
ledger that adds up: every task terminal, at most one succeeded attempt per task, spent == ledger sum,
nothing left reserved, spent <= budget.

Real Celery workers, a real Redis broker (a database of its own) and a real Postgres store.
"""

from __future__ import annotations

import re
import signal
import time

from sqlalchemy import func, select

from llmbatch.money import usd_to_picos
from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.procs import stop_process
from tests.support.cli import cli_env, run_cli, run_json, write_reviews
from tests.integration.test_budget_race import private_redis

N_TASKS = 60
LEASE_S = 6
BUDGET_USD = "0.01"  # ample for 60 classify tasks even with every lost call billed at its upper bound
REDIS_DB = 12
TERMINAL = ("succeeded", "failed", "budget_exhausted", "cancelled")


def _snapshot(engine, job_id: str, dead_pid: int) -> tuple[dict, list[dict]]:
    """One consistent read: the job row, and the attempts the dead worker started that are still unsettled."""
    with engine.connect() as c:
        job = repo.get_job(c, job_id)
        rows = (
            c.execute(
                select(attempts.c.id, attempts.c.status, attempts.c.reserved_picos, attempts.c.settled).where(
                    attempts.c.job_id == job_id,
                    attempts.c.worker.like(f"%:{dead_pid}:%"),
                    attempts.c.settled.is_(False),
                )
            )
            .mappings()
            .all()
        )
    return job, [dict(r) for r in rows]


def test_sigkill_mid_call_keeps_the_cap_and_reconciles(tmp_path, fresh_postgres_url, redis_url, worker_procs):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    budget = usd_to_picos(BUDGET_USD)
    engine = get_engine(fresh_postgres_url)
    sim, url = start_subprocess(SimulatorConfig(latency_s=2.5, latency_jitter_s=0.3, seed=5))
    cap_violations: list[dict] = []

    def poll(job_id: str, dead_pid: int) -> tuple[dict, list[dict]]:
        job, dead = _snapshot(engine, job_id, dead_pid)
        if job["spent_picos"] + job["reserved_picos"] > job["budget_picos"]:
            cap_violations.append({k: job[k] for k in ("spent_picos", "reserved_picos", "budget_picos")})
        return job, dead

    try:
        env = cli_env(
            fresh_postgres_url,
            LLMBATCH_BROKER_URL=private_redis(redis_url, REDIS_DB),
            LLMBATCH_SIMULATOR_URL=url,
            LLMBATCH_LEASE_SECONDS=str(LEASE_S),
            LLMBATCH_CHUNK_SIZE="10",
        )
        p = run_cli(["submit", str(src), "--simulate", "--budget", BUDGET_USD], env)
        assert p.returncode == 0, p.stderr
        job_id = p.stdout.strip().splitlines()[-1]
        t0 = time.time()
        worker_procs.start(2, env=env, args=["--concurrency", "20"])
        victim = worker_procs.procs[0].pid  # --pool threads: the engine runs in the main process

        # 1. Wait until the victim has calls in flight (each takes ~2.5 s at the simulator), then kill it.
        deadline = time.time() + 45
        while time.time() < deadline:
            job, dead = poll(job_id, victim)
            if len(dead) >= 5:
                break
            time.sleep(0.1)
        assert len(dead) >= 5, f"worker 0 never had calls in flight:\n{worker_procs.log(0)[-3000:]}"
        time.sleep(0.3)
        worker_procs.kill(0, signal.SIGKILL)
        worker_procs.procs[0].wait(10)
        killed_at = time.time() - t0

        # 2. While it is dead: its attempts are unsettled, their reservations still held in the job's total,
        #    and spent + reserved never exceeds the budget.
        job, dead = poll(job_id, victim)
        lost = {a["id"]: a for a in dead}  # every attempt the victim left unsettled
        assert lost and {a["status"] for a in dead} <= {"in_flight", "unknown"}
        assert sum(a["reserved_picos"] for a in dead) <= job["reserved_picos"]
        print(
            f"\ncrash: killed worker 0 (pid {victim}) at t={killed_at:.1f}s with {len(lost)} call(s) in flight "
            f"holding {sum(a['reserved_picos'] for a in dead)} picos; job reserved {job['reserved_picos']}, "
            f"spent {job['spent_picos']}, budget {budget}"
        )

        # 3. The survivor's sweeper re-queues the victim's units after their leases lapse, and settles its
        #    attempts (the reclaim marks them `unknown`, reconcile bills them at the reservation).
        statuses_seen: set[str] = set()
        deadline = time.time() + 40
        while time.time() < deadline:
            job, dead = poll(job_id, victim)
            statuses_seen |= {a["status"] for a in dead}
            for a in dead:
                assert a["id"] in lost, "a dead worker cannot start new attempts"
            if not dead:
                break
            held = sum(a["reserved_picos"] for a in dead)
            assert held <= job["reserved_picos"], "an unsettled attempt's reservation was released early"
            time.sleep(0.2)
        swept_at = time.time() - t0
        assert not dead, f"the sweeper did not settle the dead worker's attempts within 40 s: {dead}"

        # 4. Restart the dead worker; the job completes.
        worker_procs.restart(0)
        deadline = time.time() + 60
        while time.time() < deadline:
            job, _ = poll(job_id, victim)
            if job["status"] in TERMINAL:
                break
            time.sleep(0.2)
        assert job["status"] in TERMINAL, f"job not finished: {job['status']}"
        # Attempts orphaned by other causes are settled by the next sweep; `llmbatch reconcile` forces it.
        p = run_cli(["reconcile", job_id], env)
        assert p.returncode == 0, p.stderr
        late = int(re.search(r"reconciled (\d+)", p.stdout).group(1))
        done_at = time.time() - t0
    finally:
        stop_process(sim)

    assert cap_violations == [], "spent + reserved exceeded the budget"
    with engine.connect() as c:
        job = repo.get_job(c, job_id)
        counts = repo.task_counts(c, job_id)
        ledger = ledger_api.ledger_sum(c, job_id)
        task_sum = sum(r["cost_picos"] for r in repo.iter_task_rows(c, job_id))
        lost_rows = c.execute(select(attempts).where(attempts.c.id.in_(list(lost)))).mappings().all()
        doubles = c.execute(
            select(attempts.c.task_seq)
            .where(attempts.c.job_id == job_id, attempts.c.status == "succeeded")
            .group_by(attempts.c.task_seq)
            .having(func.count() > 1)
        ).all()
        succeeded_without_attempt = c.execute(
            select(func.count())
            .select_from(tasks)
            .where(
                tasks.c.job_id == job_id,
                tasks.c.status == "succeeded",
                ~select(attempts.c.id)
                .where(
                    attempts.c.job_id == job_id, attempts.c.task_seq == tasks.c.seq, attempts.c.status == "succeeded"
                )
                .exists(),
            )
        ).scalar()
        unsettled = c.execute(
            select(func.count()).select_from(attempts).where(attempts.c.job_id == job_id, attempts.c.settled.is_(False))
        ).scalar()
        redelivered = c.execute(
            select(func.count()).select_from(tasks).where(tasks.c.job_id == job_id, tasks.c.deliveries > 1)
        ).scalar()
    reconciled_billed = sum(a["cost_picos"] for a in lost_rows)
    print(
        f"crash: {len(lost)} lost attempt(s), seen as {sorted(statuses_seen)} while held; settled by the sweeper "
        f"by t={swept_at:.1f}s as {sorted({(a['status'], a['cost_source']) for a in lost_rows})} for "
        f"{reconciled_billed} picos; {redelivered} task(s) redelivered; `llmbatch reconcile` settled {late} more; "
        f"job {job['status']} at t={done_at:.1f}s, spent {job['spent_picos']} of {budget} picos"
    )

    assert job["status"] == "succeeded", counts
    assert counts["succeeded"] == N_TASKS and counts["queued"] == counts["running"] == 0
    assert unsettled == 0 and job["reserved_picos"] == 0
    assert job["spent_picos"] == ledger == task_sum
    assert job["spent_picos"] <= budget
    assert doubles == [], "a task has more than one succeeded attempt"
    assert succeeded_without_attempt == 0
    assert redelivered > 0, "the dead worker's tasks should have been claimed again"
    # The lost calls were reconciled the conservative way: charged at their reservation, not dropped.
    for a in lost_rows:
        assert a["settled"] and a["status"] == "unknown" and a["cost_source"] == "reservation", dict(a)
        assert a["cost_picos"] == a["reserved_picos"]

    p, rep = run_json(["report", job_id], env)
    assert p.returncode == 0, p.stderr
    assert rep["reconciled"] is True and rep["ledger_picos"] == job["spent_picos"]
    assert rep["unsettled_attempts"] == 0 and rep["reserved_usd"] == 0
