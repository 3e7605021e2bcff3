"""Discount channels, embedded mode (SQLite, the real CLI, the simulator's batch APIs): the batch channel costs
the batch price for the same usage, holds the hard cap, and falls back online in time for a deadline."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from llmbatch.catalog.loading import load_catalog
from llmbatch.catalog.pricing import price
from llmbatch.config import Settings
from llmbatch.models import Usage
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, provider_batches
from tests.support.cli import cli_env, results, run_json, write_reviews

MODEL = "openai/gpt-4o-mini"
FAST = {"LLMBATCH_BATCH_POLL_S": "0.2", "LLMBATCH_BATCH_POLL_MAX_S": "0.5", "LLMBATCH_BATCH_LINGER_S": "0.3"}


@pytest.fixture
def sim():
    with SimulatorThread(SimulatorConfig(mini_error_rate=0.0, batch_turnaround_s=0.5)) as s:
        yield s


def _env(url: str, sim, **extra) -> dict:
    return cli_env(url, LLMBATCH_SIMULATOR_URL=sim.url, **FAST, **extra)


def _attempts(url: str, job_id: str) -> list[dict]:
    with get_engine(url).connect() as c:
        return [
            dict(r)
            for r in c.execute(select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)).mappings()
        ]


def _created(sim) -> int:
    return httpx.get(f"{sim.url}/_sim/batches").json()["created"].get("openai", 0)


def _exact(rows: list[dict], batch: bool) -> Decimal:
    model = load_catalog(Settings()).get(MODEL)
    return sum(
        (
            price(
                Usage(
                    input_tokens=r["input_tokens"],
                    cached_tokens=r["cached_tokens"],
                    output_tokens=r["output_tokens"],
                    reasoning_tokens=r["reasoning_tokens"],
                ),
                model,
                batch=batch,
            ).picos
            for r in rows
        ),
        Decimal(0),
    )


def test_batch_costs_half_of_online_for_the_same_usage(tmp_path, sim):
    src = tmp_path / "in.jsonl"
    write_reviews(src, 200)  # was 500: the same usage line by line, whatever the count
    on_url, b_url = f"sqlite:///{tmp_path}/online.db", f"sqlite:///{tmp_path}/batch.db"
    p, online = run_json(["run", str(src), "--simulate", "--model", MODEL, "--channel", "online"], _env(on_url, sim))
    assert p.returncode == 0 and online["status"] == "succeeded", p.stderr
    assert _created(sim) == 0
    p, batch = run_json(["run", str(src), "--simulate", "--model", MODEL, "--channel", "batch"], _env(b_url, sim))
    assert p.returncode == 0 and batch["status"] == "succeeded", p.stderr
    assert _created(sim) == 1  # 200 lines fit one OpenAI batch

    a_on, a_b = _attempts(on_url, online["job_id"]), _attempts(b_url, batch["job_id"])
    assert {r["channel"] for r in a_b} == {"batch"} and {r["channel"] for r in a_on} == {"sync"}
    assert len({r["provider_batch_id"] for r in a_b}) == 1 and a_b[0]["provider_batch_id"].startswith("batch_")
    tokens = lambda rows: sorted((r["task_id"], r["input_tokens"], r["output_tokens"]) for r in rows)  # noqa: E731
    assert tokens(a_on) == tokens(a_b)  # the same usage, line by line
    # Exactly half in exact money; the ledger's per-attempt rounding is the only difference in its unit.
    assert _exact(a_b, batch=True) * 2 == _exact(a_on, batch=False)
    with get_engine(b_url).connect() as c:
        job = repo.get_job(c, batch["job_id"])
        assert job["spent_picos"] == ledger_api.ledger_sum(c, batch["job_id"]) and job["reserved_picos"] == 0
    assert abs(2 * sum(r["cost_picos"] for r in a_b) - sum(r["cost_picos"] for r in a_on)) <= 2 * len(a_b)
    r_on, r_b = results(online["job_id"], _env(on_url, sim)), results(batch["job_id"], _env(b_url, sim))
    assert [(r["id"], r["output"], r["usage"]) for r in r_on] == [(r["id"], r["output"], r["usage"]) for r in r_b]
    assert set(r_on[0]) == set(r_b[0])
    assert {r["channel"] for r in r_b} == {"batch"} and {r["channel"] for r in r_on} == {"online"}


def test_budget_at_30_percent_holds_the_cap_then_retry_finishes(tmp_path, sim):
    src = tmp_path / "in.jsonl"
    write_reviews(src, 60)
    url = f"sqlite:///{tmp_path}/b.db"
    env = _env(url, sim)
    p, est = run_json(["estimate", str(src), "--simulate", "--model", MODEL, "--channel", "batch"], env)
    assert p.returncode == 0, p.stderr
    batch_est = Decimal(str(next(c for c in est["by_channel"] if c["channel"] == "batch")["estimated_usd"]))
    budget = (batch_est * Decimal("0.3")).quantize(Decimal("0.000001"))
    p, st = run_json(
        ["run", str(src), "--simulate", "--model", MODEL, "--channel", "batch", "--budget", str(budget)], env
    )
    assert st["status"] == "budget_exhausted", p.stderr
    assert 0 < st["counts"]["succeeded"] < 60 and st["counts"]["skipped"] == 60 - st["counts"]["succeeded"]
    with get_engine(url).connect() as c:
        job = repo.get_job(c, st["job_id"])
        assert job["spent_picos"] <= job["budget_picos"] and job["reserved_picos"] == 0
        rows = c.execute(select(provider_batches).where(provider_batches.c.job_id == st["job_id"])).all()
        assert rows and all(r.reserved_picos <= job["budget_picos"] for r in rows)
    p, st2 = run_json(["retry", st["job_id"], "--budget", "1"], env)
    assert p.returncode == 0 and st2["status"] == "succeeded", p.stderr
    assert st2["counts"]["succeeded"] == 60


def test_deadline_cancels_a_batch_that_will_not_finish_and_runs_the_rest_online(tmp_path, sim):
    # 40 lines: one every 0.3 s; the deadline's fallback comes at 9 s (was 20 s / 60 s / 45 s: 15 s)
    sim.configure(batch_turnaround_s=12.0)
    src = tmp_path / "in.jsonl"
    write_reviews(src, 40)
    url = f"sqlite:///{tmp_path}/d.db"
    env = _env(url, sim, LLMBATCH_BATCH_FALLBACK_S="27")
    started = time.time()
    p, st = run_json(["run", str(src), "--simulate", "--model", MODEL, "--channel", "batch", "--deadline", "36s"], env)
    assert p.returncode == 0 and st["status"] == "succeeded", p.stderr
    with get_engine(url).connect() as c:
        job = repo.get_job(c, st["job_id"])
    assert job["finished_at"] < job["created_at"] + 36 and time.time() - started < 36
    rows = _attempts(url, st["job_id"])
    model = load_catalog(Settings()).get(MODEL)
    done_in_batch = [r for r in rows if r["channel"] == "batch" and r["status"] == "succeeded"]
    cancelled = [r for r in rows if r["channel"] == "batch" and r["error_class"] == "batch_cancelled"]
    online = [r for r in rows if r["channel"] == "sync"]
    assert done_in_batch and cancelled and len(done_in_batch) + len(cancelled) == 40
    for r in done_in_batch:  # billed, at the batch price
        u = Usage(input_tokens=r["input_tokens"], cached_tokens=r["cached_tokens"], output_tokens=r["output_tokens"])
        assert r["cost_picos"] == price(u, model, batch=True).picos > 0
    assert all(r["cost_picos"] == 0 for r in cancelled)
    assert sorted(r["task_id"] for r in online) == sorted(r["task_id"] for r in cancelled)
    assert httpx.get(f"{sim.url}/_sim/batches").json()["cancelled"] == {"openai": 1}


def test_flex_with_30_percent_unavailable_completes_at_flex_rates(tmp_path):
    src = tmp_path / "in.jsonl"
    write_reviews(src, 60)
    url = f"sqlite:///{tmp_path}/f.db"
    conf = tmp_path / "llmbatch.toml"
    conf.write_text(
        '[retry]\nbase_delay_s = 0.01\nmax_delay_s = 0.05\n\n[models."openai/gpt-4o-mini"]\nquirks = { flex = true }\n'
    )
    with SimulatorThread(SimulatorConfig(mini_error_rate=0.0, flex_unavailable=0.3, seed=11)) as s:
        env = _env(url, s, LLMBATCH_CONFIG=str(conf))
        p, st = run_json(["run", str(src), "--simulate", "--model", MODEL, "--channel", "flex"], env)
        flex = httpx.get(f"{s.url}/_sim/batches").json()["flex"]
    assert p.returncode == 0 and st["status"] == "succeeded", p.stderr
    assert flex["served"] == 60 and flex["unavailable"] > 5  # about 30% of the flex calls were turned away
    rows = _attempts(url, st["job_id"])
    assert len(rows) == 60 and {r["channel"] for r in rows} == {"flex"}  # unavailable answers: no charge, no row
    model = load_catalog(Settings()).get(MODEL)
    for r in rows:
        u = Usage(input_tokens=r["input_tokens"], cached_tokens=r["cached_tokens"], output_tokens=r["output_tokens"])
        assert r["cost_picos"] == price(u, model, batch=True).picos > 0
    p, rep = run_json(["report", st["job_id"]], env)
    by = {c["channel"]: c for c in rep["by_channel"]}
    assert set(by) == {"flex"} and by["flex"]["tasks"] == 60 and by["flex"]["saved_usd"] > 0


def test_cancel_job_cancels_its_provider_batch_and_charges_finished_lines(tmp_path, sim):
    import subprocess
    import sys

    from tests.support.cli import REPO, run_cli

    sim.configure(batch_turnaround_s=30.0)
    src = tmp_path / "in.jsonl"
    write_reviews(src, 30)
    url = f"sqlite:///{tmp_path}/c.db"
    env = _env(url, sim)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmbatch.cli",
            "run",
            str(src),
            "--simulate",
            "--model",
            MODEL,
            "--channel",
            "batch",
            "--json",
        ],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        rows = []
        while time.time() < deadline and not any(r.provider_batch_id for r in rows):
            time.sleep(0.3)
            try:
                with get_engine(url).connect() as c:
                    rows = c.execute(select(provider_batches)).all()
            except Exception:  # noqa: BLE001 - the run may not have created the schema yet
                rows = []
        time.sleep(3)  # a few lines finish
        p = run_cli(["cancel", rows[0].job_id], env)
        # The CLI cancels it at the provider unless the worker polling it (checking the flag every second)
        # already has: either way it is cancelled exactly once.
        assert p.returncode == 0, p.stdout + p.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 5, err  # cancelled
    assert httpx.get(f"{sim.url}/_sim/batches").json()["cancelled"] == {"openai": 1}
    rows = _attempts(url, rows[0].job_id)
    done = [r for r in rows if r["status"] == "succeeded"]
    assert done and all(r["cost_picos"] > 0 and r["channel"] == "batch" for r in done)  # finished lines billed
    assert all(r["settled"] for r in rows) and len(rows) == 30


def _run_once(settings, job_id: str):
    """One pass of the embedded executor, as a worker that then dies would make (jobs.run_embedded would wait
    for the tasks this process still holds)."""
    import asyncio

    from llmbatch.executors.local import run_job
    from llmbatch.runtime import open_engine

    async def main():
        async with open_engine(settings, concurrency=8, shared_limits=False) as engine:
            return await run_job(engine, job_id, chunk_size=settings.chunk_size)

    return asyncio.run(main())


def test_a_crash_between_create_and_record_finds_the_batch_instead_of_sending_another(tmp_path, sim, monkeypatch):
    from llmbatch import jobs
    from llmbatch.models import JobSpec
    from llmbatch.store import batches as store_batches

    src = tmp_path / "in.jsonl"
    write_reviews(src, 20)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/x.db",
        simulator_url=sim.url,
        lease_seconds=1.0,
        batch_poll_s=0.2,
        batch_poll_max_s=0.5,
        batch_linger_s=0.2,
    )
    job_id, _ = jobs.create_job(settings, src, JobSpec(simulate=True, model=MODEL, channel="batch"), executor="local")
    real_record = store_batches.record_submitted

    def crash(*a, **k):  # the provider has the batch; the worker dies before writing its id down
        raise SystemError("worker died")

    monkeypatch.setattr(store_batches, "record_submitted", crash)
    assert _run_once(settings, job_id) is None  # the job is not done
    with get_engine(settings.database_url).connect() as c:
        row = c.execute(select(provider_batches).where(provider_batches.c.job_id == job_id)).one()
    assert row.provider_batch_id is None and row.state == "creating" and _created(sim) == 1
    monkeypatch.setattr(store_batches, "record_submitted", real_record)
    time.sleep(1.5)  # the dead worker's leases lapse
    assert jobs.run_embedded(settings, job_id, concurrency=8) == "succeeded"
    with get_engine(settings.database_url).connect() as c:
        rows = c.execute(select(provider_batches).where(provider_batches.c.job_id == job_id)).all()
    assert _created(sim) == 1 and len(rows) == 1 and rows[0].provider_batch_id and rows[0].state == "settled"
    charged = [r for r in _attempts(settings.database_url, job_id) if r["cost_picos"] > 0]
    assert len(charged) == 20 and {r["provider_batch_id"] for r in charged} == {rows[0].provider_batch_id}


def test_a_batch_cancelled_by_llmbatch_cancel_is_not_run_online_even_with_the_flag_cached(tmp_path, monkeypatch):
    """`llmbatch cancel` sets the flag, then cancels the provider batch itself. The worker reads the flag at most
    once a second, so the batch can end while its cached flag still says "not cancelled"; the batch's unfinished
    lines must still be recorded cancelled, not sent online. The cache is made to never expire here, so the
    race is certain rather than one in a few."""
    import threading

    from llmbatch import engine as engine_mod, jobs
    from llmbatch.jobs import lifecycle
    from llmbatch.models import JobSpec

    monkeypatch.setattr(engine_mod, "CANCEL_CHECK_INTERVAL_S", 3600.0)
    with SimulatorThread(SimulatorConfig(mini_error_rate=0.0, batch_turnaround_s=30.0)) as sim:
        src = tmp_path / "in.jsonl"
        write_reviews(src, 20)
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/x.db",
            simulator_url=sim.url,
            batch_poll_s=0.2,
            batch_poll_max_s=0.5,
            batch_linger_s=0.2,
        )
        job_id, _ = jobs.create_job(
            settings, src, JobSpec(simulate=True, model=MODEL, channel="batch"), executor="local"
        )
        outcome: list[str] = []
        runner = threading.Thread(target=lambda: outcome.append(jobs.run_embedded(settings, job_id, concurrency=8)))
        runner.start()
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not _created(sim):
                time.sleep(0.1)
            time.sleep(2)  # a few lines finish
            _, cancelled_batches = lifecycle.cancel(settings, job_id)
            runner.join(timeout=60)
        finally:
            if runner.is_alive():
                lifecycle.cancel(settings, job_id)
                runner.join(timeout=30)
        assert cancelled_batches and outcome == ["cancelled"]
        rows = _attempts(settings.database_url, job_id)
        assert rows and all(r["channel"] == "batch" for r in rows), [(r["task_id"], r["channel"]) for r in rows]
        assert len(rows) == 20 and all(r["settled"] for r in rows)
        with get_engine(settings.database_url).connect() as c:
            counts = repo.task_counts(c, job_id)
        assert counts.get("cancelled", 0) > 0 and counts.get("cancelled", 0) + counts.get("succeeded", 0) == 20, counts
