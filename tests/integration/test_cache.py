"""Issue 15, never pay twice: the response cache, one call for identical tasks, prompt-cache scheduling.

Every run goes through the real CLI process against an in-process simulator whose counters say how many
calls reached a provider; the store is a fresh SQLite file per test (Postgres in the Celery test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from sqlalchemy import func, select

from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, response_cache
from tests.support.procs import stop_process
from tests.support.cli import REPO, cli_env, results, run_cli, run_json, write_reviews

LABELS = ["positive", "negative", "neutral"]


def _calls(sim) -> int:
    return sim.stats()["total"]


def _run(src, env, *extra) -> dict:
    # --new: the same file with the same options would otherwise resume (or report) its earlier job; these
    # tests want a second job that the cache answers.
    p, st = run_json(["run", str(src), "--simulate", "--new", *extra], env)
    assert p.returncode == 0, p.stderr
    return st


def _ledger(db_url: str, job_id: str):
    with get_engine(db_url).connect() as c:
        return c.execute(select(attempts).where(attempts.c.job_id == job_id)).mappings().all()


N_TWICE = 200  # was 500: every task of the second run is a hit, whatever the job's size


def test_same_job_twice_second_run_calls_nothing_and_no_cache_pays_again(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TWICE)
    with SimulatorThread(SimulatorConfig(seed=1)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        first = _run(src, env)
        after_first = _calls(sim)
        second = _run(src, env)
        assert _calls(sim) == after_first, "the second run must not call a provider"
        third = _run(src, env, "--no-cache")
        paid_again = _calls(sim) - after_first
    assert first["counts"]["succeeded"] == second["counts"]["succeeded"] == N_TWICE
    assert first["spent_usd"] > 0 and second["spent_usd"] == 0
    one, two = results(first["job_id"], env), results(second["job_id"], env)
    assert [(r["id"], r["output"]) for r in one] == [(r["id"], r["output"]) for r in two]
    assert all(r["channel"] == "cache" and r["cost_usd"] == 0 for r in two)
    assert not any(r["channel"] == "cache" for r in one)
    # The ledger: one $0 cache attempt per task, each saving its original attempt's cost, exactly.
    rows = _ledger(sqlite_url, second["job_id"])
    assert len(rows) == N_TWICE and {r["channel"] for r in rows} == {"cache"}
    assert all(r["cost_picos"] == 0 and r["status"] == "succeeded" for r in rows)
    original = {
        r["task_id"]: r["cost_picos"] for r in _ledger(sqlite_url, first["job_id"]) if r["status"] == "succeeded"
    }
    assert {r["task_id"]: r["saved_picos"] for r in rows} == original
    p, rep = run_json(["report", second["job_id"]], env)
    assert rep["cache"]["hits"] == N_TWICE and rep["cache"]["saved_picos"] == sum(original.values())
    assert rep["spent_usd"] == 0 and rep["reconciled"] is True
    # --no-cache pays again, once per task.
    assert paid_again >= N_TWICE and third["spent_usd"] > 0
    assert not any(r["channel"] == "cache" for r in results(third["job_id"], env))


def test_jobs_of_different_api_tokens_never_share_the_cache(tmp_path):
    """The service's tokens each have a daily cap: a job answered from another token's cache would spend nothing
    and escape it (and would learn what the other token asked)."""
    from llmbatch import jobs
    from llmbatch.config import Settings
    from llmbatch.models import JobSpec

    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 20)
    with SimulatorThread(SimulatorConfig(seed=1)) as sim:
        settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db", simulator_url=sim.url)
        spent = {}
        for owner in ("tok_a", "tok_b", "tok_a"):
            job_id, _ = jobs.create_job(settings, src, JobSpec(simulate=True), executor="local", owner=owner)
            before = _calls(sim)
            assert jobs.run_embedded(settings, job_id, concurrency=4, handle_signals=False) == "succeeded"
            spent.setdefault(owner, []).append((_calls(sim) - before, job_id))
    (a_calls, _), (a_again, a2_job) = spent["tok_a"]
    ((b_calls, _),) = spent["tok_b"]
    assert a_calls >= 20 and b_calls >= 20, "tok_b's job must pay for its own calls"
    assert a_again == 0  # the same token's second job is answered from its cache
    assert {r["channel"] for r in _ledger(settings.database_url, a2_job)} == {"cache"}


def test_duplicate_lines_are_called_once_and_fanned_out(tmp_path, sqlite_url):
    src = tmp_path / "dups.jsonl"
    write_reviews(src, 140)
    lines = src.read_text().splitlines()
    dups = []
    for i in range(60):  # 60 of 200 lines (30%) repeat an earlier request under their own id
        d = json.loads(lines[(i * 7) % 140])
        d["id"], d["metadata"] = f"dup-{i}", {"dup": i}
        dups.append(json.dumps(d))
    src.write_text("\n".join(lines + dups) + "\n")
    # Mini models answer right here, so each distinct request is exactly one call (no escalations).
    with SimulatorThread(SimulatorConfig(seed=2, mini_error_rate=0.0)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        p, est = run_json(["estimate", str(src), "--simulate"], env)
        assert est["cache"]["hits"] == 60
        st = _run(src, env)
        assert _calls(sim) == 140
        p, est = run_json(["estimate", str(src), "--simulate"], env)  # now the store answers every line
        assert est["cache"]["hits"] == 200
    assert st["counts"]["succeeded"] == 200
    rows = results(st["job_id"], env)
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200
    by_id = {r["id"]: r for r in rows}
    for i in range(60):
        dup, orig = by_id[f"dup-{i}"], by_id[f"r-{(i * 7) % 140:04d}"]
        assert dup["output"] == orig["output"] and dup["metadata"] == {"dup": i}
    ledger = _ledger(sqlite_url, st["job_id"])
    cache_rows = [r for r in ledger if r["channel"] == "cache"]
    assert len(cache_rows) == 60 and all(r["cost_picos"] == 0 and r["saved_picos"] > 0 for r in cache_rows)
    assert len([r for r in ledger if r["channel"] != "cache"]) == 140


def test_any_change_of_the_request_misses(tmp_path, sqlite_url):
    base = {"id": "a", "task": "classify", "input": "Great value, works well.", "labels": LABELS}
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    ext = {"id": "e", "task": "extract", "input": "Ann Lee, 34, lives in Oslo.", "schema": schema}
    variants = [
        {**base, "id": "labels", "labels": ["good", "bad"]},
        {**base, "id": "message", "input": "Great value, works well!"},
        {**base, "id": "cap", "max_output_tokens": 12},
        {**base, "id": "model", "model": "openai/gpt-4.1-mini"},
        {
            **ext,
            "id": "schema",
            "schema": {**schema, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}},
        },
    ]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(json.dumps(x) for x in (base, ext)) + "\n")
    second.write_text("\n".join(json.dumps(x) for x in [{**base, "id": "same"}, *variants]) + "\n")
    with SimulatorThread(SimulatorConfig(seed=4, mini_error_rate=0.0)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        _run(first, env)
        before = _calls(sim)
        st = _run(second, env)
        assert _calls(sim) - before == len(variants)
    channels = {r["id"]: r["channel"] for r in results(st["job_id"], env)}
    assert channels == {"same": "cache", **{v["id"]: "online" for v in variants}}


def _handbook(tokens: int) -> str:
    words = (
        "refund shipping warranty escalate polite accurate summary include exclude format bullet "
        "customer order invoice address"
    ).split()
    return "You are a support assistant. Follow this handbook.\n" + " ".join(
        f"{words[i % len(words)]}{i % 89}" for i in range(int(tokens * 0.42))
    )


def test_shared_system_prompt_on_anthropic_pays_half_with_scheduling(tmp_path, sqlite_url):
    from llmbatch.tokens import estimate_input_tokens

    system = _handbook(2000)
    assert 1900 <= estimate_input_tokens([{"role": "system", "content": system}]) <= 2300
    src = tmp_path / "chat.jsonl"
    with open(src, "w") as f:
        for i in range(500):
            f.write(
                json.dumps(
                    {
                        "id": f"c-{i}",
                        "task": "chat",
                        "max_output_tokens": 40,
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"Customer {i} asks where order {1000 + i} is."},
                        ],
                    }
                )
                + "\n"
            )
    model = "anthropic/claude-sonnet-4-20250514"
    report = {}
    p, est = run_json(["estimate", str(src), "--simulate", "--model", model, "--no-cache"], cli_env(sqlite_url))
    assert est["prompt_cache"]["cached_tokens"] > 0 and est["prompt_cache"]["saved_usd"] > 0
    spent = {}
    with SimulatorThread(SimulatorConfig(seed=5)) as sim:
        for sched in ("1", "0"):
            sim.reset()
            env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_PROMPT_CACHE_SCHEDULING=sched)
            st = _run(src, env, "--model", model, "--no-cache")
            assert st["counts"]["succeeded"] == 500
            stats = sim.stats()
            p, rep = run_json(["report", st["job_id"]], env)
            report[sched], spent[sched] = rep["prompt_cache"], rep["spent_usd"]
            # The ledger's prompt-cache tokens are the simulator's, exactly.
            assert rep["prompt_cache"]["cached_tokens"] == stats["cached_tokens"]
            assert rep["prompt_cache"]["cache_write_tokens"] == stats["cache_write_tokens"]
            with get_engine(sqlite_url).connect() as c:
                assert repo.get_job(c, st["job_id"])["spent_picos"] == ledger_api.ledger_sum(c, st["job_id"])
    on, off = report["1"], report["0"]
    assert off["cached_tokens"] == 0 and off["cache_write_tokens"] == 0
    assert on["cache_write_tokens"] > 0 and on["hit_rate"] >= 0.99
    assert on["input_cost_usd"] <= 0.5 * off["input_cost_usd"], (on, off)
    assert on["saved_usd"] > 0
    # The estimate priced the expected prompt-cache reads.
    assert abs(est["estimated_usd"] - spent["1"]) <= 0.25 * spent["1"], (est, spent)


def test_cache_survives_a_crash_and_never_serves_an_invalid_answer(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 300)
    # Mini models answer outside the labels 40% of the time: those tasks escalate.
    with SimulatorThread(SimulatorConfig(seed=6, latency_s=0.05, mini_error_rate=0.4)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmbatch.cli", "run", str(src), "--simulate", "--concurrency", "4"],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        engine = get_engine(sqlite_url)
        answered = select(func.count()).select_from(response_cache).where(response_cache.c.output.is_not(None))
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                with engine.connect() as c:
                    if c.execute(answered).scalar() >= 40:
                        break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)  # the worker dies mid-job
            proc.wait(10)
        finally:
            stop_process(proc)
        with engine.connect() as c:
            kept = c.execute(answered).scalar()
            rows = c.execute(select(response_cache)).mappings().all()
        assert 40 <= kept < 300
        for r in rows:  # only validated answers are kept; invalid answers are verdicts without output
            assert r["output"] is None or json.loads(r["output"]) in LABELS
        assert any(r["invalid_error"] for r in rows), "some mini answers were invalid"
        before = _calls(sim)
        st = _run(tmp_path / "reviews.jsonl", env, "--name", "after-crash")
        calls = _calls(sim) - before
    rows = results(st["job_id"], env)
    assert sum(r["channel"] == "cache" for r in rows) >= kept
    assert all(r["status"] == "succeeded" and r["output"] in LABELS for r in rows)
    paid = [r for r in _ledger(sqlite_url, st["job_id"]) if r["channel"] != "cache"]
    assert len(paid) == calls and len({r["task_id"] for r in paid}) <= 300 - kept


def test_an_invalid_answer_is_not_paid_for_again(tmp_path, sqlite_url):
    """Every mini answer fails validation: the first run escalates each task; the second run escalates on
    the stored verdicts without calling the mini model again and is answered from the cache: no call at all."""
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 30)
    with SimulatorThread(SimulatorConfig(seed=7, mini_error_rate=1.0)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        first = _run(src, env)
        calls = _calls(sim)
        second = _run(src, env)
        assert _calls(sim) == calls
    invalid = [r for r in _ledger(sqlite_url, first["job_id"]) if r["status"] == "invalid_output"]
    assert len(invalid) >= 30
    assert second["spent_usd"] == 0 and second["counts"]["succeeded"] == 30
    one, two = results(first["job_id"], env), results(second["job_id"], env)
    assert [(r["output"], r["model"]) for r in one] == [(r["output"], r["model"]) for r in two]
    assert all(r["output"] in LABELS for r in two)


def test_celery_workers_call_once_for_identical_tasks(
    tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs
):
    """Two real worker processes on Postgres get chunks holding the same 40 requests three times over: the
    store's claim markers make one of them call and the others wait for its answer."""
    from tests.support.jobs import wait_terminal

    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 40)
    lines = src.read_text().splitlines()
    copies = []
    for k in range(3):
        for line in lines:
            d = json.loads(line)
            d["id"] = f"{d['id']}-{k}"
            copies.append(json.dumps(d))
    src.write_text("\n".join(copies) + "\n")
    with SimulatorThread(SimulatorConfig(seed=8, latency_s=0.3, mini_error_rate=0.0)) as sim:
        env = cli_env(
            fresh_postgres_url, LLMBATCH_BROKER_URL=redis_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_CHUNK_SIZE="10"
        )
        # Both workers are up before the units are queued: started after, one could take most of the job before
        # the other is ready, and the cross-worker answers this test is about would then not happen.
        worker_procs.start(2, env=env, args=["--concurrency", "20"], ready_timeout=90)
        p = run_cli(["submit", str(src), "--simulate"], env)
        assert p.returncode == 0, p.stderr
        job_id = p.stdout.strip().splitlines()[-1]
        job = wait_terminal(fresh_postgres_url, job_id, timeout=180)
        calls = _calls(sim)
    assert job["status"] == "succeeded"
    assert calls == 40
    ledger = _ledger(fresh_postgres_url, job_id)
    assert sum(r["channel"] == "cache" for r in ledger) == 80
    proc = {r["id"]: r["worker"].rsplit(":", 1)[0] for r in ledger}  # host:pid
    assert len(set(proc.values())) == 2, "both workers should have done work"
    caller = {r["task_id"].rsplit("-", 1)[0]: proc[r["id"]] for r in ledger if r["channel"] != "cache"}
    assert len(caller) == 40
    assert any(proc[r["id"]] != caller[r["task_id"].rsplit("-", 1)[0]] for r in ledger if r["channel"] == "cache"), (
        "some tasks should have been answered from the other worker's call"
    )
    outputs = {}
    for r in results(job_id, env):
        outputs.setdefault(r["id"].rsplit("-", 1)[0], set()).add(r["output"])
    assert all(len(v) == 1 for v in outputs.values())


def test_the_cache_stays_within_its_bound_counting_it_only_now_and_then(tmp_path, monkeypatch):
    """A run that stores far more answers than cache_max_entries leaves about the bound behind (cut to 90 % of
    it when over), and counts the table exactly only every RECOUNT_EVERY-th eviction pass: a count is a full
    scan, ~0.3 s at a million entries."""
    from llmbatch import jobs
    from llmbatch.cache import entries, hook
    from llmbatch.config import Settings
    from llmbatch.models import JobSpec

    monkeypatch.setattr(hook, "EVICT_EVERY", 10)
    monkeypatch.setattr(hook, "RECOUNT_EVERY", 4)
    passes: list[int | None] = []
    evict = entries.evict

    def counting_evict(conn, **kw):
        passes.append(kw.get("known_count"))
        return evict(conn, **kw)

    monkeypatch.setattr(entries, "evict", counting_evict)
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 200)
    with SimulatorThread(SimulatorConfig(seed=3)) as sim:
        settings = Settings(database_url=f"sqlite:///{tmp_path}/c.db", simulator_url=sim.url, cache_max_entries=50)
        job_id, _ = jobs.create_job(settings, src, JobSpec(simulate=True), executor="local")
        assert jobs.run_embedded(settings, job_id, concurrency=4, handle_signals=False) == "succeeded"
    with get_engine(settings.database_url).connect() as c:
        left = c.execute(select(func.count()).select_from(response_cache)).scalar()
    assert len(passes) >= 200 // 10
    exact = [i for i, known in enumerate(passes) if known is None]
    assert exact[:2] == [0, 4] and len(exact) <= len(passes) // 4 + 1, passes
    # After the last pass at most EVICT_EVERY more answers were stored; other passes kept it within the bound.
    assert 0 < left <= 50 + 10, left
