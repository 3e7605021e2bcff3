"""Issue 14, task-level flow: a free in-flight slot is refilled at once with the next claimed task, whatever
unit it belongs to. One task in each unit of 20 answers after 5 s, the other 19 at once. A unit-level flow
(a unit frees its claim window only when its slowest task ends) runs such a job in waves of 5 s: with 40 in
flight and 30 units, the embedded executor of 69ef583 (3 units at a time) needs 10 waves (~50 s) and a
Celery worker (4 units at a time) 8 (~40 s). Task by task, the slow tasks overlap and the job takes about
5 s more than the same job without slow tasks. That difference is what is checked (same test, same
simulator), so a loaded machine, which slows both runs alike, does not fail it.
"""

from __future__ import annotations

import json
import math
import urllib.request

import pytest

from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store import repo
from llmbatch.store.db import get_engine
from tests.support.procs import stop_process
from tests.support.cli import cli_env, run_cli, run_json
from tests.support.jobs import wait_terminal

N_TASKS, UNIT, IN_FLIGHT, SLOW_S = 600, 20, 40, 5.0
SLOW_MODEL = "openai/gpt-4.1-mini"  # the one task per unit pinned here answers after SLOW_S
# Well under the convoy: a unit-level flow adds at least 7 waves of SLOW_S to the run without slow tasks.
EXTRA_LIMIT_S = 2.5 * SLOW_S


def _write_job(path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(N_TASKS):
            line = {
                "id": f"t-{i}",
                "task": "summarize",
                "input": f"Quarterly revenue grew {i % 17}%.",
                "max_output_tokens": 16,
            }
            if i % UNIT == UNIT // 2:  # one per unit, in the middle of it
                line["model"] = SLOW_MODEL
            f.write(json.dumps(line) + "\n")


def _simulator():
    # mini_error_rate 0: no escalation (an escalated fast task would land on the slow model too).
    return start_subprocess(SimulatorConfig(mini_error_rate=0.0))


def _slow_model(url: str, seconds: float) -> None:
    body = json.dumps({"model_overrides": {SLOW_MODEL.split("/", 1)[1]: {"latency_s": seconds}}}).encode()
    req = urllib.request.Request(
        f"{url}/_sim/config", data=body, method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _run_seconds(db_url: str, job_id: str) -> float:
    """From the first claim to the final status, from the job row (worker start-up not counted)."""
    with get_engine(db_url).connect() as c:
        job = repo.get_job(c, job_id)
        counts = repo.task_counts(c, job_id)
    assert job["status"] == "succeeded" and counts["succeeded"] == N_TASKS, (job["status"], counts)
    return job["finished_at"] - job["started_at"]


def test_embedded_slow_task_per_unit_is_no_convoy(tmp_path, sqlite_url):
    src = tmp_path / "tasks.jsonl"
    _write_job(src)
    sim, url = _simulator()
    took = {}
    try:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=url, LLMBATCH_CHUNK_SIZE=str(UNIT))
        for name, latency in (("fast", 0.0), ("slow", SLOW_S)):
            _slow_model(url, latency)
            p, st = run_json(["run", str(src), "--simulate", "--concurrency", str(IN_FLIGHT)], env, timeout=300)
            assert p.returncode == 0, p.stderr
            took[name] = _run_seconds(sqlite_url, st["job_id"])
    finally:
        stop_process(sim)
    extra = took["slow"] - took["fast"]
    convoy = math.ceil(N_TASKS / UNIT / (math.ceil(IN_FLIGHT / UNIT) + 1)) * SLOW_S
    print(
        f"\nembedded: {N_TASKS} tasks, {IN_FLIGHT} in flight: {took['fast']:.1f}s; with one {SLOW_S:.0f}s task per "
        f"unit of {UNIT}: {took['slow']:.1f}s (+{extra:.1f}s; a unit-level convoy: ~{convoy:.0f}s in all)"
    )
    assert extra < EXTRA_LIMIT_S, f"+{extra:.1f}s: the slots waited for each unit's slowest task"


@pytest.mark.integration
def test_celery_worker_slow_task_per_unit_is_no_convoy(
    tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs
):
    src = tmp_path / "tasks.jsonl"
    _write_job(src)
    sim, url = _simulator()
    took = {}
    try:
        env = cli_env(
            fresh_postgres_url, LLMBATCH_BROKER_URL=redis_url, LLMBATCH_SIMULATOR_URL=url, LLMBATCH_CHUNK_SIZE=str(UNIT)
        )
        worker_procs.start(1, env=env, args=["--concurrency", str(IN_FLIGHT)])
        worker_procs.wait_for_log(0, " ready.", timeout=60)
        for name, latency in (("fast", 0.0), ("slow", SLOW_S)):
            _slow_model(url, latency)
            p = run_cli(["submit", str(src), "--simulate"], env)
            assert p.returncode == 0, p.stderr
            job_id = p.stdout.strip().splitlines()[-1]
            wait_terminal(fresh_postgres_url, job_id, timeout=180)
            took[name] = _run_seconds(fresh_postgres_url, job_id)
    finally:
        stop_process(sim)
    extra = took["slow"] - took["fast"]
    print(
        f"\ncelery, 1 worker: {N_TASKS} tasks, {IN_FLIGHT} in flight: {took['fast']:.1f}s; with one {SLOW_S:.0f}s "
        f"task per unit of {UNIT}: {took['slow']:.1f}s (+{extra:.1f}s; 69ef583's 4 thread slots: ~40s in all)"
    )
    assert extra < EXTRA_LIMIT_S, f"+{extra:.1f}s: the worker's slots waited for each unit's slowest task"
