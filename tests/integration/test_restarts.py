"""Reliability, broker and store restarts: the shared test Redis is crashed (SIGKILL, AOF replay on start)
and the shared Postgres is stopped with `-m immediate` (crash recovery on start) while a Celery job runs.
The same worker processes must ride out the outage, and the job must complete with a consistent ledger.

These tests restart the session's shared servers (through scripts/services.sh, on the ports of the URLs
the fixtures hand out). They are self-contained: each waits, in a `finally`, until the server answers
again (and starts it if it did not come back), so tests that run after them see working services.
Set LLMBATCH_TEST_SERVICES_SH to use another copy of services.sh (e.g. one managing private servers).
"""

from __future__ import annotations

import os
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from llmbatch.simulator import SimulatorConfig, start_subprocess
from tests.support.procs import stop_process
from tests.support.services import SERVICES_SH, psycopg_dsn
from tests.support.cli import cli_env, run_json, write_reviews
from tests.support.jobs import check_ledger, reconcile, submit, wait_finished, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 800 tasks (was 1,200): the outages come at 1/5 and 1/2 of the job, so 400 tasks still run after the second
N_TASKS = 800
DOWN_S = 3.0  # the second outage: the server stays down this long


def _services_sh() -> str:
    return os.environ.get("LLMBATCH_TEST_SERVICES_SH") or str(SERVICES_SH)


def _services(redis_url: str, postgres_url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """scripts/services.sh on the servers behind the fixtures' URLs (their ports, not the defaults)."""
    env = dict(os.environ)
    env["LLMBATCH_REDIS_PORT"] = str(urlsplit(redis_url).port or 6379)
    env["LLMBATCH_PG_PORT"] = str(urlsplit(postgres_url).port or 5432)
    return subprocess.run(
        ["bash", _services_sh(), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return client.ping()
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - down or still loading the AOF
        return False


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(psycopg_dsn(url), connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except Exception:  # noqa: BLE001 - down or in recovery
        return False


def _ensure_back(probe, url: str, redis_url: str, postgres_url: str, service: str, timeout: float = 60) -> None:
    """Wait until the server answers; start it through services.sh if it does not come back by itself."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if probe(url):
            return
        time.sleep(0.5)
    p = _services(redis_url, postgres_url, "start", service)
    assert probe(url), f"{service} did not come back after the restart test: {p.stderr[-2000:]}"


def _down_for_a_while(service: str, probe, url: str, redis_url: str, postgres_url: str) -> float:
    """Stop `service` cleanly, keep it down for DOWN_S seconds, start it again. Returns the outage in seconds."""
    t = time.time()
    try:
        p = _services(redis_url, postgres_url, "stop", service)
        assert p.returncode == 0, p.stderr
        assert not probe(url)
        time.sleep(DOWN_S)
        p = _services(redis_url, postgres_url, "start", service)
        assert p.returncode == 0, p.stderr
    finally:
        _ensure_back(probe, url, redis_url, postgres_url, service)
    return time.time() - t


def _start_job(tmp_path, db_url, redis_url, worker_procs, sim_url, lease_s: str):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    env = cli_env(
        db_url,
        LLMBATCH_BROKER_URL=redis_url,
        LLMBATCH_SIMULATOR_URL=sim_url,
        LLMBATCH_LEASE_SECONDS=lease_s,
        LLMBATCH_CHUNK_SIZE="20",
    )
    job_id = submit(src, env)
    worker_procs.start(2, env=env, args=["--concurrency", "12"])
    return env, job_id


def _finish_and_check(db_url, job_id, env, worker_procs, started, outage_s, what):
    pids = [p.pid for p in worker_procs.procs]
    job = wait_terminal(db_url, job_id, timeout=120, every=0.5)
    elapsed = time.time() - started
    alive = worker_procs.alive()
    logs = [worker_procs.log(i) for i in range(len(worker_procs.procs))]
    worker_procs.stop_all()
    settled = reconcile(db_url, job_id)
    figures = check_ledger(db_url, job_id)
    p, st = run_json(["status", job_id], env)
    print(
        f"\n{what}: outage {outage_s:.1f}s; job {job['status']} in {elapsed:.1f}s; tasks {figures['tasks']}; "
        f"attempts {figures['attempt_status']}; reconciled {len(settled)}; workers alive throughout: {alive}"
    )
    if figures["errors"]:
        print(f"  non-success reasons: {figures['errors']}")
    assert all(alive), f"worker(s) {pids} died during the {what}:\n" + "\n".join(l[-3000:] for l in logs)
    assert job["status"] == "succeeded", figures
    assert st["counts"]["succeeded"] == N_TASKS and p.returncode == 0
    return logs


def test_redis_crash_mid_job_job_completes(
    tmp_path, fresh_postgres_url, postgres_url, redis_url, flush_redis, worker_procs
):
    sim, sim_url = start_subprocess(SimulatorConfig(latency_s=0.1, latency_jitter_s=0.05, seed=5))
    try:
        env, job_id = _start_job(tmp_path, fresh_postgres_url, redis_url, worker_procs, sim_url, lease_s="10")
        started = time.time()
        at = wait_finished(fresh_postgres_url, job_id, N_TASKS // 5)
        t0 = time.time()
        try:
            p = _services(redis_url, postgres_url, "restart-redis", "--kill")
            if p.returncode != 0 and "redis.pid" in p.stderr:  # a server services.sh did not start: SHUTDOWN it
                p = _services(redis_url, postgres_url, "restart-redis")
            assert p.returncode == 0, p.stderr
        finally:
            _ensure_back(_redis_answers, redis_url, redis_url, postgres_url, "redis")
        outage = time.time() - t0
        print(f"\nredis crashed and restarted with {at}/{N_TASKS} tasks done ({p.stderr.strip().splitlines()[0]})")
        # Second outage: a clean SHUTDOWN (AOF flushed), the broker down for DOWN_S seconds, then back.
        at2 = wait_finished(fresh_postgres_url, job_id, N_TASKS // 2)
        down = _down_for_a_while("redis", _redis_answers, redis_url, redis_url, postgres_url)
        outage += down
        print(f"redis shut down for {down:.1f}s with {at2}/{N_TASKS} tasks done")
        logs = _finish_and_check(fresh_postgres_url, job_id, env, worker_procs, started, outage, "Redis crash")
    finally:
        stop_process(sim)
    # The workers noticed the broker going away (otherwise the test proved nothing).
    assert any("redis" in l.lower() and ("connect" in l.lower() or "connection" in l.lower()) for l in logs)


def test_postgres_immediate_restart_mid_job_workers_survive(
    tmp_path, fresh_postgres_url, postgres_url, redis_url, flush_redis, worker_procs
):
    sim, sim_url = start_subprocess(SimulatorConfig(latency_s=0.1, latency_jitter_s=0.05, seed=6))
    try:
        env, job_id = _start_job(tmp_path, fresh_postgres_url, redis_url, worker_procs, sim_url, lease_s="10")
        started = time.time()
        at = wait_finished(fresh_postgres_url, job_id, N_TASKS // 5)
        t0 = time.time()
        try:
            p = _services(redis_url, postgres_url, "restart-postgres", "--immediate")
            assert p.returncode == 0, p.stderr
        finally:
            _ensure_back(_postgres_answers, postgres_url, redis_url, postgres_url, "postgres")
        outage = time.time() - t0
        print(f"\npostgres stopped (-m immediate) and restarted with {at}/{N_TASKS} tasks done")
        # Second outage: stopped (fast: every session is terminated) and kept down for DOWN_S seconds.
        at2 = wait_finished(fresh_postgres_url, job_id, N_TASKS // 2)
        down = _down_for_a_while("postgres", _postgres_answers, postgres_url, redis_url, postgres_url)
        outage += down
        print(f"postgres down for {down:.1f}s with {at2}/{N_TASKS} tasks done")
        _finish_and_check(fresh_postgres_url, job_id, env, worker_procs, started, outage, "Postgres restart")
    finally:
        stop_process(sim)
