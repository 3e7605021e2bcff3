"""Job lifecycle, end to end through the real CLI: a job survives its operator.

- SIGINT, SIGTERM and SIGKILL of `llmbatch run` at a random point of a job against a simulator with latency;
  then `llmbatch resume` (or re-running the same command): every task ends succeeded exactly once, nothing is
  paid for after a task succeeded, spent == ledger, exit codes as documented (130 for an interrupted run).
- A second Ctrl-C aborts at once; the calls it cut off are `interrupted` (outcome unknown), never provider
  failures.
- Re-running a finished job prints its summary and creates nothing.
- `cancel` then `retry --no-wait` on an embedded job leaves it resumable, not stuck.
- Celery mode shares the resume test: a SIGKILLed worker's tasks are taken back at once by `resume`.

The job size is LLMBATCH_LIFECYCLE_TASKS (default 300; the issue's figure is 2,000).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import orjson
import pytest
from sqlalchemy import select

from llmbatch.simulator import SimulatorConfig, start_subprocess
from llmbatch.store import repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.procs import stop_process
from tests.support.cli import REPO, cli_env, run_cli, write_reviews
from tests.support.jobs import check_ledger, finished, job_row

pytestmark = pytest.mark.integration

N_TASKS = int(os.environ.get("LLMBATCH_LIFECYCLE_TASKS", "200"))
CONCURRENCY = "20"


@pytest.fixture(scope="module")
def sim_url():
    proc, url = start_subprocess(SimulatorConfig(latency_s=0.25, latency_jitter_s=0.1, seed=10))
    try:
        yield url
    finally:
        stop_process(proc)


def _popen_run(src, env, *extra: str, concurrency: str = CONCURRENCY) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch.cli", "run", str(src), "--simulate", "--concurrency", concurrency, *extra],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _latest_job(db_url: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with get_engine(db_url).connect() as c:
                job_id = repo.latest_job_id(c)
            if job_id:
                return job_id
        except Exception:  # noqa: BLE001 - the store file may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError("no job was created")


def _wait_done(db_url: str, job_id: str, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if finished(db_url, job_id) >= at_least:
            return
        assert proc.poll() is None, f"run ended early: {proc.returncode} {proc.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} tasks finished after {timeout}s")


def _nothing_paid_after_success(db_url: str, job_id: str) -> None:
    """Every task succeeded, with exactly one succeeded attempt, and it is the task's LAST attempt: no call was
    made (and paid) for a task after it had succeeded."""
    with get_engine(db_url).connect() as c:
        trows = c.execute(select(tasks.c.seq, tasks.c.status).where(tasks.c.job_id == job_id)).all()
        arows = c.execute(
            select(attempts.c.task_seq, attempts.c.attempt_no, attempts.c.status, attempts.c.error_class).where(
                attempts.c.job_id == job_id
            )
        ).all()
    assert len(trows) == N_TASKS
    assert {s for _, s in trows} == {"succeeded"}, defaultdict(int, {s: 1 for _, s in trows})
    by_task = defaultdict(list)
    for a in arows:
        by_task[a.task_seq].append(a)
    for seq, rows in by_task.items():
        wins = [a for a in rows if a.status == "succeeded"]
        assert len(wins) == 1, (seq, rows)
        assert wins[0].attempt_no == max(a.attempt_no for a in rows), f"task {seq} was called after it succeeded"
    # A cut-off call is never a provider failure (it would trip the breaker and mislead the audit).
    assert not [a for a in arows if a.error_class in ("connection_reset", "connect")], (
        "interrupt recorded as provider failure"
    )


def _env(tmp_path, sim_url, **extra):
    return cli_env(f"sqlite:///{tmp_path / 'lc.db'}", LLMBATCH_SIMULATOR_URL=sim_url, **extra)


@pytest.mark.parametrize("then", ["resume", "rerun"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_run_resumes_and_every_task_succeeds_once(tmp_path, sim_url, sig, then):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    db_url = f"sqlite:///{tmp_path / 'lc.db'}"
    env = _env(tmp_path, sim_url)
    rng = random.Random(f"{sig}-{then}")
    proc = _popen_run(src, env)
    job_id = _latest_job(db_url)
    _wait_done(db_url, job_id, rng.randint(N_TASKS // 10, N_TASKS // 2), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)

    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        m = re.search(r"interrupted: ([\d,]+) done, ([\d,]+) left — resume with: llmbatch resume (\S+)", err)
        assert m, err
        assert m.group(3) == job_id
        done, left = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
        assert done + left == N_TASKS and left > 0
        assert job_row(db_url, job_id)["status"] == "interrupted"
        with get_engine(db_url).connect() as c:  # every lease handed back: nothing waits for lease_seconds
            held = c.execute(select(tasks.c.seq).where(tasks.c.job_id == job_id, tasks.c.status == "running")).all()
        assert not held

    t0 = time.time()
    if then == "resume":
        p = run_cli(["resume", job_id, "--json"], env, timeout=300)
    else:
        p = run_cli(["run", str(src), "--simulate", "--concurrency", CONCURRENCY, "--json"], env, timeout=300)
    took = time.time() - t0
    assert p.returncode == 0, p.stderr
    assert re.search(rf"resuming job {job_id}: [\d,]+ of {N_TASKS:,} done", p.stderr), p.stderr
    out = orjson.loads(p.stdout)
    assert out["job_id"] == job_id and out["status"] == "succeeded"
    assert out["counts"]["succeeded"] == N_TASKS
    print(f"\n{sig.name} then {then}: {then} finished the job in {took:.1f}s")

    figures = check_ledger(db_url, job_id)  # spent == ledger == task costs; one succeeded attempt per task
    _nothing_paid_after_success(db_url, job_id)
    with get_engine(db_url).connect() as c:
        assert len(repo.list_jobs(c)) == 1, "a re-run or resume created a second job"
    assert figures is not None


def test_second_ctrl_c_aborts_and_cut_calls_are_interrupted_not_failures(tmp_path, sim_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    db_url = f"sqlite:///{tmp_path / 'lc.db'}"
    env = _env(tmp_path, sim_url, LLMBATCH_SHUTDOWN_GRACE_S="30")
    proc = _popen_run(src, env)
    job_id = _latest_job(db_url)
    _wait_done(db_url, job_id, N_TASKS // 5, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.time() - t0 < 10, "the second Ctrl-C must not wait for the grace period"
    with get_engine(db_url).connect() as c:
        rows = c.execute(
            select(attempts.c.status, attempts.c.error_class, attempts.c.settled).where(
                attempts.c.job_id == job_id, attempts.c.status.notin_(["succeeded", "invalid_output"])
            )
        ).all()
    cut = [r for r in rows if r.error_class == "interrupted"]
    assert all(r.status == "unknown" and not r.settled for r in cut), rows  # reservation held until reconciled
    assert not [r for r in rows if r.error_class in ("connection_reset", "connect")], rows
    p = run_cli(["resume", "--json"], env, timeout=300)
    assert p.returncode == 0, p.stderr
    check_ledger(db_url, job_id)
    _nothing_paid_after_success(db_url, job_id)


def test_rerun_of_a_finished_job_prints_its_summary_and_new_starts_fresh(tmp_path, sim_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 30)
    env = _env(tmp_path, sim_url)
    first = run_cli(["run", str(src), "--simulate", "--json"], env)
    assert first.returncode == 0, first.stderr
    job_id = orjson.loads(first.stdout)["job_id"]
    again = run_cli(["run", str(src), "--simulate"], env)
    assert again.returncode == 0, again.stderr
    assert f"job {job_id} already ran" in again.stderr and "--new" in again.stderr
    assert f"job {job_id} — succeeded" in again.stdout
    print(f"\nre-run of a finished job prints:\n{again.stderr}{again.stdout}")
    fresh = run_cli(["run", str(src), "--simulate", "--new", "--json"], env)
    assert fresh.returncode == 0 and orjson.loads(fresh.stdout)["job_id"] != job_id
    listed = run_cli(["jobs", "--json"], env)
    rows = orjson.loads(listed.stdout)
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
    assert rows[1]["job_id"] == job_id and rows[1]["counts"]["succeeded"] == 30
    named = run_cli(["run", str(src), "--simulate", "--new", "--name", "nightly", "--json"], env)
    assert named.returncode == 0
    st = run_cli(["status", "--name", "nightly", "--json"], env)
    assert orjson.loads(st.stdout)["job_id"] == orjson.loads(named.stdout)["job_id"]
    missing = run_cli(["status", "no-such-job"], env)
    assert missing.returncode == 2 and "lc.db" in missing.stderr and missing.stderr.count("\n") == 1


def test_cancel_then_retry_no_wait_embedded_is_resumable_not_stuck(tmp_path, sim_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    db_url = f"sqlite:///{tmp_path / 'lc.db'}"
    env = _env(tmp_path, sim_url)
    proc = _popen_run(src, env, concurrency="4")  # slow enough that the cancel lands mid-run
    job_id = _latest_job(db_url)
    _wait_done(db_url, job_id, 10, proc)
    assert run_cli(["cancel", job_id], env).returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    p = run_cli(["retry", job_id, "--no-wait"], env)
    assert p.returncode == 0, p.stderr
    assert f"llmbatch resume {job_id}" in p.stderr
    job = job_row(db_url, job_id)
    assert job["status"] == "interrupted"  # says what to do; not `running` with nothing running it
    p = run_cli(["resume", job_id, "--json"], env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert orjson.loads(p.stdout)["counts"]["succeeded"] == N_TASKS
    check_ledger(db_url, job_id)


def test_truthful_statuses(tmp_path, sim_url):
    env = _env(tmp_path, sim_url)
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 10)
    p = run_cli(["run", str(src), "--simulate", "--max-cost-per-task", "0.0000000001", "--json"], env)
    out = orjson.loads(p.stdout)
    assert out["counts"]["skipped"] == 10
    assert out["status"] == "budget_exhausted" and p.returncode == 4, (out, p.stderr)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "task": "classify"}\n{"nope": 1}\n')
    p = run_cli(["run", str(bad), "--simulate", "--json"], env)
    assert orjson.loads(p.stdout)["status"] == "failed" and p.returncode == 2, p.stdout


# ------------------------------------------------------------------------------------ Celery mode


def test_celery_resume_takes_back_a_killed_workers_tasks_at_once(
    tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs, sim_url
):
    """The same resume contract on Celery: SIGKILL the only worker mid-job; `resume` takes its tasks back at
    once (lease_seconds is 300 here: nothing waits for it) and a new worker finishes the job."""
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    env = cli_env(
        fresh_postgres_url,
        LLMBATCH_BROKER_URL=redis_url,
        LLMBATCH_SIMULATOR_URL=sim_url,
        LLMBATCH_CHUNK_SIZE="20",
        LLMBATCH_LEASE_SECONDS="300",
    )
    p = run_cli(["submit", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().splitlines()[-1]
    worker_procs.start(1, env=env, args=["--concurrency", CONCURRENCY])
    deadline = time.time() + 120
    while finished(fresh_postgres_url, job_id) < N_TASKS // 4:
        assert time.time() < deadline
        time.sleep(0.1)
    worker_procs.kill(0, signal.SIGKILL)
    worker_procs.start(1, env=env, args=["--concurrency", CONCURRENCY])
    t0 = time.time()
    p = run_cli(["resume", job_id, "--json"], env, timeout=240)
    took = time.time() - t0
    assert p.returncode == 0, p.stderr
    assert re.search(rf"resuming job {job_id}: [\d,]+ of {N_TASKS:,} done", p.stderr), p.stderr
    assert orjson.loads(p.stdout)["status"] == "succeeded"
    assert took < 120, f"resume waited for the lease ({took:.0f}s)"
    print(f"\ncelery: resume after a worker SIGKILL finished the job in {took:.1f}s")
    check_ledger(fresh_postgres_url, job_id)
    _nothing_paid_after_success(fresh_postgres_url, job_id)


# ------------------------------------------------------------------------------- bad configuration


# Through the real CLI (each value problem has its in-process case in tests/unit/test_config.py).
BAD_CONFIG = [
    # (id, extra env, toml text or None, args after the input file, what the one line must name)
    ("budget-nan", {}, None, ["--budget", "NaN"], "--budget"),
    ("concurrency-negative", {}, None, ["--concurrency", "-3"], "--concurrency"),
    ("env-concurrency-zero", {"LLMBATCH_CONCURRENCY": "0"}, None, [], "LLMBATCH_CONCURRENCY"),
    ("toml-unknown-key", {}, "daily_cap_us = 5\n", [], "did you mean 'daily_cap_usd'"),
    ("bad-database-url", {"LLMBATCH_DATABASE_URL": "llmbatch.db"}, None, [], "LLMBATCH_DATABASE_URL"),
    ("unreachable-broker", {"LLMBATCH_BROKER_URL": "redis://127.0.0.1:1/0"}, None, [], "broker"),
    (
        "unreachable-store",
        {"LLMBATCH_DATABASE_URL": "postgresql://u:secret@127.0.0.1:1/x"},
        None,
        [],
        "cannot open the store",
    ),
    ("read-only-store", {"LLMBATCH_DATABASE_URL": "RO"}, None, [], "read-only"),
]


@pytest.mark.parametrize("case", BAD_CONFIG, ids=[c[0] for c in BAD_CONFIG])
def test_bad_configuration_is_one_line_exit_2_and_no_orphan_job(tmp_path, case):
    _, extra, toml_text, args, names = case
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 5)
    db = tmp_path / "good.db"
    good_url = f"sqlite:///{db}"
    with get_engine(good_url).begin():
        pass  # the store exists (migrated) so "no orphan job" is checkable, and so is the read-only copy
    env = cli_env(good_url)
    if extra.get("LLMBATCH_DATABASE_URL") == "RO":
        extra = {"LLMBATCH_DATABASE_URL": f"sqlite:///file:{db}?mode=ro&uri=true"}
    env.update(extra)
    if toml_text is not None:
        (tmp_path / "llmbatch.toml").write_text(toml_text)
        env["LLMBATCH_CONFIG"] = str(tmp_path / "llmbatch.toml")
    for command in (["run", str(src), "--simulate", *args], ["submit", str(src), "--simulate", *args]):
        if command[0] == "submit" and "LLMBATCH_BROKER_URL" not in extra:
            continue  # submit without a broker is its own (tested) error
        p = run_cli(command, env, timeout=120)
        err = p.stderr.strip()
        assert p.returncode == 2, (command, p.returncode, p.stderr)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert names in err, err
        assert "secret" not in err
        with get_engine(good_url).connect() as c:
            assert repo.list_jobs(c) == [], f"{command[0]} left an orphan job: {err}"
