"""Issue 2, scale-out: the same job on Celery with a real Redis broker, a real Postgres store and two real
worker processes reaches the same final counts and the same total cost as the embedded run."""

from __future__ import annotations

import time

from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from tests.support.procs import stop_process
from tests.support.cli import cli_env, results, run_cli, run_json, write_reviews
from tests.support.jobs import wait_terminal


def test_two_workers_match_embedded(tmp_path, sqlite_url, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    src = tmp_path / "reviews.jsonl"
    ids = write_reviews(src, 200)

    # One simulator process per run: its prompt-cache state starts empty for both, so usage is identical.
    sim, url = start_subprocess(SimulatorConfig(seed=3))
    try:
        p, embedded = run_json(["run", str(src), "--simulate"], cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=url))
        assert p.returncode == 0, p.stderr
    finally:
        stop_process(sim)

    sim, url = start_subprocess(SimulatorConfig(seed=3))
    try:
        env = cli_env(
            fresh_postgres_url, LLMBATCH_BROKER_URL=redis_url, LLMBATCH_SIMULATOR_URL=url, LLMBATCH_CHUNK_SIZE="20"
        )
        # Both workers ready before the job exists: otherwise the first one up can take every unit of a job this
        # small (each worker claims up to its concurrency plus a unit ahead) and the check below sees one worker.
        worker_procs.start(2, env=env, args=["--concurrency", "50"])
        for i in range(2):
            worker_procs.wait_for_log(i, "ready", timeout=90)
        started = time.time()
        p = run_cli(["submit", str(src), "--simulate"], env)
        assert p.returncode == 0, p.stderr
        job_id = p.stdout.strip().splitlines()[-1]
        job = wait_terminal(fresh_postgres_url, job_id, timeout=120)
        elapsed = time.time() - started
        print(f"celery scale-out: 200 tasks in {elapsed:.1f}s ({200 / elapsed:.0f} tasks/s, workers already up)")
    finally:
        stop_process(sim)

    p, scaled = run_json(["status", job_id], env)
    assert scaled["status"] == embedded["status"] == "succeeded"
    assert scaled["counts"] == embedded["counts"]
    assert scaled["spent_usd"] == embedded["spent_usd"]
    engine = get_engine(fresh_postgres_url)
    with engine.connect() as c:
        assert job["spent_picos"] == ledger_api.ledger_sum(c, job_id)
        workers = {a["worker"].rsplit(":", 1)[0] for a in repo.iter_attempt_rows(c, job_id)}
    assert len(workers) == 2, f"both worker processes should have done work, saw {workers}"
    assert [r["id"] for r in results(job_id, env)] == ids
