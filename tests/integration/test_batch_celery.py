"""Discount channels on Celery (real Redis, Postgres and worker processes): a worker SIGKILLed while its
provider batch is in flight. Another worker takes the batch over (polls it, settles it): the job completes,
exactly one provider batch exists per group (the simulator's counters), nothing is charged twice."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from sqlalchemy import select

from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, provider_batches
from tests.support.procs import stop_process
from tests.support.cli import cli_env, run_cli, write_reviews
from tests.support.jobs import check_ledger, wait_terminal

pytestmark = [pytest.mark.integration]

N = 100


def _rows(db_url: str, job_id: str) -> list:
    with get_engine(db_url).connect() as c:
        return c.execute(select(provider_batches).where(provider_batches.c.job_id == job_id)).all()


def test_worker_killed_with_a_batch_in_flight(tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    sim, sim_url = start_subprocess(SimulatorConfig(mini_error_rate=0.0, batch_turnaround_s=8.0, seed=3))
    try:
        src = tmp_path / "in.jsonl"
        write_reviews(src, N)
        env = cli_env(
            fresh_postgres_url,
            LLMBATCH_BROKER_URL=redis_url,
            LLMBATCH_SIMULATOR_URL=sim_url,
            LLMBATCH_LEASE_SECONDS="4",
            LLMBATCH_CHUNK_SIZE="20",
            LLMBATCH_BATCH_POLL_S="0.3",
            LLMBATCH_BATCH_POLL_MAX_S="1",
            LLMBATCH_BATCH_LINGER_S="0.5",
        )
        p = run_cli(["submit", str(src), "--simulate", "--model", "openai/gpt-4o-mini", "--channel", "batch"], env)
        assert p.returncode == 0, p.stderr
        job_id = p.stdout.strip().splitlines()[-1]
        worker_procs.start(1, env=env, args=["--concurrency", "8"])
        deadline = time.time() + 60
        while time.time() < deadline and not any(r.provider_batch_id for r in _rows(fresh_postgres_url, job_id)):
            time.sleep(0.2)
        time.sleep(1.0)  # let every unit's lines reach a batch
        assert _rows(fresh_postgres_url, job_id), "no provider batch was recorded"
        worker_procs.kill(0, signal.SIGKILL)
        worker_procs.start(1, env=env, args=["--concurrency", "8"])
        job = wait_terminal(fresh_postgres_url, job_id, timeout=120, every=0.5)
        assert job["status"] == "succeeded", worker_procs.log(1)[-3000:]
        logs = worker_procs.log(1)
        worker_procs.stop_all()
        assert "took over" in logs
        rows = _rows(fresh_postgres_url, job_id)
        created = httpx.get(f"{sim_url}/_sim/batches").json()["created"].get("openai", 0)
        assert created == len(rows) == len({r.provider_batch_id for r in rows})  # one provider batch per group
        assert {r.state for r in rows} == {"settled"}
        figures = check_ledger(fresh_postgres_url, job_id)
        assert figures["tasks"].get("succeeded") == N
        with get_engine(fresh_postgres_url).connect() as c:
            charged = (
                c.execute(select(attempts.c.task_seq).where(attempts.c.job_id == job_id, attempts.c.cost_picos > 0))
                .scalars()
                .all()
            )
            channels = set(c.execute(select(attempts.c.channel).where(attempts.c.job_id == job_id)).scalars())
        assert len(charged) == len(set(charged)) == N  # each task charged once
        assert channels == {"batch"}
    finally:
        stop_process(sim)
