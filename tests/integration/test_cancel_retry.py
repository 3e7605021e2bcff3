"""Reliability, control: `llmbatch cancel` stops new provider calls within seconds and the calls in flight
are still recorded; `llmbatch retry` requeues cancelled, failed and skipped tasks and runs them; a job whose
workers all died resumes when new workers come up, and completes.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest
from sqlalchemy import select

from llmbatch.simulator import SimulatorConfig, SimulatorThread, start_subprocess
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.procs import stop_process
from tests.support.cli import cli_env, results, run_cli, run_json, write_reviews
from tests.support.jobs import check_ledger, finished, reconcile, submit, wait_finished, wait_terminal

pytestmark = pytest.mark.integration

CANCEL_STOP_S = 3.0  # after `cancel` returns, the provider sees no new call after this long


def _sim_configure(url: str, **changes) -> None:
    """POST /_sim/config: a partial update of the running simulator's settings."""
    req = urllib.request.Request(f"{url}/_sim/config", data=json.dumps(changes).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def _sim_total(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url}/_sim/stats", timeout=5) as r:
        s = json.loads(r.read())
    return s["total"], s["in_flight"]


def test_cancel_stops_calls_within_seconds_then_retry_resumes(
    tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs
):
    # 800 tasks (was 1,000). From the cancel on, calls take 1 s (at most 40 tasks/s): the 650 left cannot
    # finish before a slow `cancel` command lands on a loaded machine (25 s seen at load 10); the retry then
    # runs them at a short latency (what it shows does not depend on it).
    n = 800
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, n)
    sim, sim_url = start_subprocess(SimulatorConfig(latency_s=0.5, latency_jitter_s=0.1, seed=21))
    try:
        env = cli_env(
            fresh_postgres_url,
            LLMBATCH_BROKER_URL=redis_url,
            LLMBATCH_SIMULATOR_URL=sim_url,
            LLMBATCH_CHUNK_SIZE="20",
            LLMBATCH_LEASE_SECONDS="10",
        )
        job_id = submit(src, env)
        worker_procs.start(2, env=env, args=["--concurrency", "20"])
        at = wait_finished(fresh_postgres_url, job_id, 150)

        _sim_configure(sim_url, latency_s=1.0, latency_jitter_s=0.1)
        before_total, before_inflight = _sim_total(sim_url)
        t_invoke = time.time()
        p = run_cli(["cancel", job_id], env)
        t_cancel = time.time()
        assert p.returncode == 0, p.stderr
        assert "cancel requested" in p.stdout

        # Watch the provider: when did its request counter last move?
        samples = []
        last_total, last_change = _sim_total(sim_url)[0], t_cancel
        while time.time() - max(last_change, t_cancel) < CANCEL_STOP_S + 3 and time.time() - t_cancel < 30:
            total, inflight = _sim_total(sim_url)
            samples.append((round(time.time() - t_cancel, 2), total, inflight))
            if total != last_total:
                last_total, last_change = total, time.time()
            time.sleep(0.1)
        stopped_after = last_change - t_cancel
        job = wait_terminal(fresh_postgres_url, job_id, timeout=60)
        final_total, final_inflight = _sim_total(sim_url)

        p_status = run_cli(["status", job_id], env)
        _, st = run_json(["status", job_id], env)
        counts = st["counts"]
        with get_engine(fresh_postgres_url).connect() as c:
            rows = c.execute(select(attempts).where(attempts.c.job_id == job_id)).mappings().all()
        print(
            f"\ncancel: requested with {at}/{n} finished and {before_inflight} calls in flight "
            f"(cancel command took {t_cancel - t_invoke:.1f}s); provider calls stopped "
            f"{max(0.0, stopped_after):.2f}s after it returned ({final_total - before_total} calls after the request); "
            f"job {job['status']}: {counts}"
        )
        print(f"  samples (s after cancel, total, in flight): {samples[:40]}")

        assert job["status"] == "cancelled"
        assert p_status.returncode == 5, (p_status.returncode, p_status.stdout, p_status.stderr)
        assert st["status"] == "cancelled"
        assert stopped_after <= CANCEL_STOP_S, f"calls continued {stopped_after:.1f}s after cancel: {samples}"
        assert final_inflight == 0 and final_total == last_total
        assert counts["queued"] == counts["running"] == 0
        assert counts["cancelled"] > 0 and counts["succeeded"] >= at
        # In-flight results were recorded: every call the provider served is one settled ledger row (nothing
        # left in flight or unknown, without any reconcile), and each answer reached its task.
        assert len(rows) == final_total, (len(rows), final_total)
        assert all(r["settled"] for r in rows), [dict(r) for r in rows if not r["settled"]][:3]
        assert {r["status"] for r in rows} <= {"succeeded", "invalid_output"}
        check_ledger(fresh_postgres_url, job_id, reconciled=True)

        # retry requeues the cancelled tasks and they run to the end. On fresh worker processes: the ones that
        # saw the cancel may serve a stale cached flag (engine bug, see test_retry_after_cancel_on_the_same_workers).
        worker_procs.stop_all()
        _sim_configure(sim_url, latency_s=0.05, latency_jitter_s=0.02)
        worker_procs.start(2, env=env, args=["--concurrency", "20"])
        cancelled = counts["cancelled"]
        p, st2 = run_json(["retry", job_id], env, timeout=180)
        bad = [(r["id"], r["status"], r["error"]) for r in results(job_id, env) if r["status"] != "succeeded"]
        assert p.returncode == 0, (p.returncode, st2, bad[:10], p.stderr[-3000:])
        assert st2["status"] == "succeeded" and st2["counts"]["succeeded"] == n, st2
        assert all(worker_procs.alive()[2:])
        figures = check_ledger(fresh_postgres_url, job_id)
        print(f"  retry: {cancelled} cancelled task(s) requeued; job {st2['status']}; {figures['attempts']} attempts")
    finally:
        stop_process(sim)


def test_retry_requeues_failed_and_skipped_tasks(tmp_path, sqlite_url):
    pinned = "groq/llama-3.1-8b-instant"
    src = tmp_path / "mixed.jsonl"
    ids = write_reviews(src, 60)
    with open(src, "a", encoding="utf-8") as f:  # 10 lines pinned to a model that answers 5xx/429 only
        for i in range(10):
            ids.append(f"pin-{i}")
            f.write(
                json.dumps(
                    {
                        "id": f"pin-{i}",
                        "task": "classify",
                        "model": pinned,
                        "input": f"Fine. {i}",
                        "labels": ["positive", "negative", "neutral"],
                    }
                )
                + "\n"
            )
    cfg = tmp_path / "llmbatch.toml"
    cfg.write_text(
        "[retry]\nbase_delay_s = 0.01\nmax_delay_s = 0.05\nmax_attempts_per_model = 3\nmax_attempts_per_task = 4\n"
    )
    broken = {"llama-3.1-8b-instant": {"error_rate": 1.0}}
    with SimulatorThread(SimulatorConfig(seed=4, mini_error_rate=0.0, model_overrides=broken)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_CONFIG=str(cfg))
        # A budget that holds only part of the job: the rest ends skipped (budget).
        p, st = run_json(["run", str(src), "--simulate", "--budget", "0.0004", "--concurrency", "4"], env)
        assert p.returncode == 4, (p.returncode, p.stderr[-2000:])
        job_id = st["job_id"]
        assert st["status"] == "budget_exhausted"
        first = {r["id"]: r for r in results(job_id, env)}
        failed = {i for i, r in first.items() if r["status"] == "failed"}
        skipped = {i for i, r in first.items() if r["status"] == "skipped"}
        assert failed and skipped, {s: sum(r["status"] == s for r in first.values()) for s in ("failed", "skipped")}
        assert all("budget" in first[i]["error"] for i in skipped)
        assert all(first[i]["error"] for i in failed)
        check_ledger(sqlite_url, job_id)

        sim.configure(model_overrides={})  # the provider recovers
        calls_before = sim.stats()["total"]
        p, st2 = run_json(["retry", job_id, "--budget", "5"], env)
        calls = sim.stats()["total"] - calls_before
    assert p.returncode == 0, p.stderr[-3000:]
    assert st2["status"] == "succeeded" and st2["counts"]["succeeded"] == len(ids)
    after = {r["id"]: r for r in results(job_id, env)}
    assert list(after) == ids
    for i in failed | skipped:
        assert after[i]["status"] == "succeeded" and after[i]["error"] is None
        assert after[i]["attempts"] > first[i]["attempts"] or first[i]["attempts"] == 0
    for i in set(ids) - failed - skipped:  # what had succeeded was not run again
        assert after[i]["attempts"] == first[i]["attempts"] and after[i]["cost_usd"] == first[i]["cost_usd"]
    assert calls >= len(failed) + len(skipped)
    figures = check_ledger(sqlite_url, job_id)
    print(
        f"\nretry: first run {len(failed)} failed + {len(skipped)} skipped (budget) of {len(ids)}; "
        f"retry --budget 5 made {calls} calls; now {figures['tasks']}, spent ${figures['spent_picos'] / 1e12:.6f}"
    )


def test_job_resumes_after_all_workers_die(tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    # 480 tasks (was 1,200): the workers are killed with a quarter done and units still held; the size of
    # the rest only lengthens the run of the new workers.
    n = 480
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, n)
    sim, sim_url = start_subprocess(SimulatorConfig(latency_s=0.15, latency_jitter_s=0.05, seed=8))
    try:
        env = cli_env(
            fresh_postgres_url,
            LLMBATCH_BROKER_URL=redis_url,
            LLMBATCH_SIMULATOR_URL=sim_url,
            LLMBATCH_CHUNK_SIZE="20",
            LLMBATCH_LEASE_SECONDS="5",
        )
        job_id = submit(src, env)
        worker_procs.start(3, env=env, args=["--concurrency", "12"])
        at = wait_finished(fresh_postgres_url, job_id, n // 4)
        for i in range(3):
            worker_procs.kill(i, signal.SIGKILL)
        t_kill = time.time()
        for proc in worker_procs.procs:
            proc.wait(10)
        assert not any(worker_procs.alive())
        with get_engine(fresh_postgres_url).connect() as c:
            held = c.execute(select(tasks.c.seq).where(tasks.c.job_id == job_id, tasks.c.status == "running")).all()
        # Nobody works on it now: the job stands still.
        frozen = finished(fresh_postgres_url, job_id)
        time.sleep(3)
        assert finished(fresh_postgres_url, job_id) == frozen
        assert job_status(fresh_postgres_url, job_id) not in ("succeeded", "failed", "cancelled")

        worker_procs.start(2, env=env, args=["--concurrency", "12"])  # new machines
        t_new = time.time()
        job = wait_terminal(fresh_postgres_url, job_id, timeout=120)
        resumed = time.time() - t_new
    finally:
        stop_process(sim)
    worker_procs.stop_all()
    settled = reconcile(fresh_postgres_url, job_id)
    figures = check_ledger(fresh_postgres_url, job_id)
    print(
        f"\nall workers killed with {at}/{n} finished ({len(held)} tasks held by dead workers); "
        f"2 new workers finished the job in {resumed:.1f}s ({time.time() - t_kill:.1f}s after the kill); "
        f"job {job['status']} {figures['tasks']}; unknown-outcome attempts {figures['attempt_status'].get('unknown', 0)} "
        f"({len(settled)} settled by the final reconcile); max deliveries {figures['max_deliveries']}"
    )
    assert job["status"] == "succeeded", figures
    assert len(held) > 0
    # The new workers' ids are in the ledger: they, not a ghost, finished it.
    new_ids = {(a or "").rsplit(":", 1)[0] for a in _workers_after(fresh_postgres_url, job_id, t_new)}
    assert len(new_ids) >= 1


def job_status(db_url: str, job_id: str) -> str:
    from llmbatch.store import repo

    with get_engine(db_url).connect() as c:
        return repo.get_job(c, job_id)["status"]


def _workers_after(db_url: str, job_id: str, since: float) -> list[str]:
    with get_engine(db_url).connect() as c:
        return list(
            c.execute(
                select(attempts.c.worker).where(attempts.c.job_id == job_id, attempts.c.started_at >= since)
            ).scalars()
        )


def test_retry_after_cancel_on_the_same_workers(tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    n = 100  # 5 units of 20: two claimed at the cancel, three more queued (was 200)
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, n)
    sim, sim_url = start_subprocess(SimulatorConfig(latency_s=0.3, seed=22))
    try:
        env = cli_env(
            fresh_postgres_url, LLMBATCH_BROKER_URL=redis_url, LLMBATCH_SIMULATOR_URL=sim_url, LLMBATCH_CHUNK_SIZE="20"
        )
        job_id = submit(src, env)
        # 5 calls in flight, 2 units (40 tasks) claimed: tasks queue for a slot and see the cancel, so the
        # worker has it cached; after retry, 5 tasks of the first unit start at once.
        worker_procs.start(1, env=env, args=["--concurrency", "5"])
        wait_finished(fresh_postgres_url, job_id, 10)
        assert run_cli(["cancel", job_id], env).returncode == 0
        assert wait_terminal(fresh_postgres_url, job_id, timeout=60)["status"] == "cancelled"
        p, st = run_json(["retry", job_id], env, timeout=120)  # the same, still running worker
    finally:
        stop_process(sim)
    assert worker_procs.alive() == [True]
    bad = [(r["id"], r["status"], r["error"]) for r in results(job_id, env) if r["status"] != "succeeded"]
    assert p.returncode == 0 and st["status"] == "succeeded", (p.returncode, st["counts"], bad[:5])
