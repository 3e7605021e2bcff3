"""The engine's decisions, in process: the pure move table (decisions.py), then the Engine itself against a fake
adapter and a temporary SQLite store: retry, fall back, escalate, skip, fail, cancel, lease lost, stop."""

from __future__ import annotations

import asyncio
import random

import orjson

from llmbatch.executors.flow import TaskFlow
from sqlalchemy import select, update

from llmbatch import decisions
from llmbatch.catalog.loading import load_catalog
from llmbatch.config import RetryPolicy, Settings
from llmbatch.engine import Engine
from llmbatch.errors import FatalError, RateLimitedError, RerouteError, RetryableError
from llmbatch.jobs import create_job
from llmbatch.models import Completion, JobSpec, Usage
from llmbatch.ratelimit import make_rate_limiter
from llmbatch.store import repo
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.jobs import FakeProviders

POLICY = RetryPolicy(max_attempts_per_model=3, base_delay_s=0.01, max_delay_s=0.05)


# ----------------------------------------------------------------------------------- the move table


def test_moves_follow_the_error_kind():
    rng = random.Random(1)
    mv = decisions.after_error(RetryableError("503", status_code=503), n=0, policy=POLICY, time_left_s=60, rng=rng)
    assert mv.kind == decisions.RETRY and 0 < mv.delay_s <= POLICY.max_delay_s
    assert decisions.after_error(RetryableError("503"), n=2, policy=POLICY, time_left_s=60).kind == decisions.FALLBACK
    assert (
        decisions.after_error(RerouteError("too long"), n=0, policy=POLICY, time_left_s=60).kind == decisions.FALLBACK
    )
    fail = decisions.after_error(
        FatalError("bad key", status_code=401, error_class="auth"), n=0, policy=POLICY, time_left_s=60
    )
    assert fail.kind == decisions.FAIL and fail.reason == "auth: bad key"
    cool = decisions.after_error(RateLimitedError("429", retry_after=7.0), n=0, policy=POLICY, time_left_s=60)
    assert (cool.kind, cool.delay_s) == (decisions.COOLDOWN, 7.0)
    late = decisions.after_error(RetryableError("503", retry_after=120.0), n=0, policy=POLICY, time_left_s=5)
    assert late.kind == decisions.FALLBACK and "past the task deadline" in late.reason
    assert decisions.after_invalid_output(higher_tier_left=True, escalation_enabled=True).kind == decisions.ESCALATE
    assert (
        decisions.after_invalid_output(higher_tier_left=False, escalation_enabled=True).reason
        == "no higher tier to escalate to"
    )
    assert decisions.after_invalid_output(higher_tier_left=True, escalation_enabled=False).kind == decisions.FAIL


# ------------------------------------------------------------------------------- the engine, in process

CHEAP, NEXT = "groq/llama-3.1-8b-instant", "openai/gpt-4.1-mini"  # active models (gpt-4o family is retired)


class FakeAdapter:
    """Answers every call with `script(model_key, call_no)`: a Completion's text, or an exception to raise."""

    def __init__(self, script):
        self.script, self.calls = script, []

    async def complete(self, model, request, timeout=None):
        self.calls.append(model.key)
        await asyncio.sleep(0)
        out = self.script(model.key, len(self.calls))
        if isinstance(out, BaseException):
            raise out
        if asyncio.iscoroutine(out):
            out = await out
        return Completion(text=out, usage=Usage(input_tokens=50, output_tokens=2))


def run_engine(tmp_path, script, *, n=1, spec_extra=None, before=None, during=None, drive=None):
    """Create a job of `n` classify lines, run it through an Engine with FakeAdapter(script); returns
    (task rows, attempt rows, adapter, job id). `drive(flow, job_id)`: runs the flow instead of feed + drain."""
    url = f"sqlite:///{tmp_path / 'e.db'}"
    settings = Settings(database_url=url, retry=POLICY)
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            orjson.dumps(
                {"id": f"t{i}", "task": "classify", "input": f"great product {i}", "labels": ["positive", "negative"]}
            ).decode()
            + "\n"
            for i in range(n)
        )
    )
    spec = JobSpec.model_validate({"simulate": True, "models": [CHEAP, NEXT, "openai/gpt-4.1"], **(spec_extra or {})})
    job_id, _ = create_job(settings, src, spec, executor="local")
    if before:
        before(get_engine(url), job_id)
    catalog = load_catalog(settings)
    adapter = FakeAdapter(script)

    async def main():
        store = AsyncStore(url)
        engine = Engine(
            settings=settings,
            catalog=catalog,
            store=store,
            providers=FakeProviders(catalog, adapter),
            limiter=make_rate_limiter(settings, shared=False),
            worker_id="test:1:abc",
            concurrency=4,
            rng=random.Random(0),
        )
        try:
            if during:
                during.engine = engine
            flow = TaskFlow(engine, ahead=n)  # the executors' task-level flow (executors/flow.py)
            if drive:
                await drive(flow, job_id)
            else:
                await flow.feed(job_id, 0, n - 1)
                await flow.drain()
        finally:
            store.close()

    asyncio.run(main())
    with get_engine(url).connect() as c:
        trows = c.execute(select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.seq)).mappings().all()
        arows = c.execute(select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.id)).mappings().all()
    return trows, arows, adapter, job_id


def test_retry_then_succeed_on_the_same_model(tmp_path):
    t, a, ad, _ = run_engine(tmp_path, lambda m, k: RetryableError("503", status_code=503) if k == 1 else "positive")
    assert t[0]["status"] == "succeeded" and ad.calls == [CHEAP, CHEAP]
    assert [x["status"] for x in a] == ["failed", "succeeded"] and a[1]["purpose"] == "retry"


def test_fall_back_to_the_next_candidate_on_a_reroute_error(tmp_path):
    t, a, ad, _ = run_engine(tmp_path, lambda m, k: RerouteError("context too long") if m == CHEAP else "positive")
    assert t[0]["status"] == "succeeded" and ad.calls[0] == CHEAP and ad.calls[1] != CHEAP
    assert a[-1]["purpose"] == "fallback" and t[0]["escalations"] == 0


def test_retries_used_up_fall_back(tmp_path):
    t, _, ad, _ = run_engine(
        tmp_path, lambda m, k: RetryableError("503", status_code=503) if m == CHEAP else "negative"
    )
    assert t[0]["status"] == "succeeded" and ad.calls.count(CHEAP) == POLICY.max_attempts_per_model


def test_invalid_output_escalates_a_tier(tmp_path):
    t, a, ad, _ = run_engine(tmp_path, lambda m, k: "banana" if k == 1 else "positive")
    assert t[0]["status"] == "succeeded" and t[0]["escalations"] == 1
    assert [x["status"] for x in a] == ["invalid_output", "succeeded"] and a[1]["purpose"] == "escalation"


def test_invalid_output_without_escalation_fails(tmp_path):
    t, _, _, _ = run_engine(tmp_path, lambda m, k: "banana", spec_extra={"escalate": False})
    assert t[0]["status"] == "failed" and "escalation disabled" in t[0]["error"]


def test_fatal_error_fails_without_trying_elsewhere(tmp_path):
    t, a, ad, _ = run_engine(tmp_path, lambda m, k: FatalError("invalid api key", status_code=401, error_class="auth"))
    assert t[0]["status"] == "failed" and t[0]["error"] == "auth: invalid api key" and len(ad.calls) == 1


def test_over_the_per_task_cap_is_skipped_without_a_call(tmp_path):
    t, a, ad, _ = run_engine(tmp_path, lambda m, k: "positive", spec_extra={"max_cost_per_task_usd": "0.0000000001"})
    assert t[0]["status"] == "skipped" and t[0]["skip_reason"] == "max_cost_per_task" and not ad.calls and not a


def test_cancel_stops_before_the_next_attempt(tmp_path):
    holder = {}

    def script(m, k):
        with get_engine(holder["url"]).begin() as c:
            repo.request_cancel(c, holder["job"])
        holder["engine"]._jobs[holder["job"]].checked_at = 0  # re-read the flag now, not a second later
        return RetryableError("503", status_code=503)

    def before(engine, job_id):
        holder["url"], holder["job"] = str(engine.url), job_id

    class During:
        def __setattr__(self, k, v):
            holder["engine"] = v

    t, a, ad, _ = run_engine(tmp_path, script, before=before, during=During())
    assert t[0]["status"] == "cancelled" and len(ad.calls) == 1 and len(a) == 1


def test_lease_lost_records_nothing_but_the_attempt_is_in_the_ledger(tmp_path):
    holder = {}

    def script(m, k):
        with get_engine(holder["url"]).begin() as c:  # another delivery took the task over
            c.execute(update(tasks).where(tasks.c.job_id == holder["job"]).values(lease_owner="other:2:xyz"))
        return "positive"

    def before(engine, job_id):
        holder["url"], holder["job"] = str(engine.url), job_id

    t, a, _, _ = run_engine(tmp_path, script, before=before)
    assert t[0]["status"] == "running" and t[0]["lease_owner"] == "other:2:xyz" and t[0]["output"] is None
    assert [x["status"] for x in a] == ["succeeded"]  # the call happened and was paid: the ledger has it


def test_stop_lets_the_call_in_flight_finish_and_starts_no_new_attempt(tmp_path):
    holder = {}

    async def slow_then_stop():
        holder["engine"].stop()
        await asyncio.sleep(0.05)
        return "banana"  # would escalate: a new attempt, which a stopping engine does not start

    class During:
        def __setattr__(self, k, v):
            holder["engine"] = v

    t, a, ad, _ = run_engine(tmp_path, lambda m, k: slow_then_stop(), n=1, during=During())
    assert len(ad.calls) == 1 and [x["status"] for x in a] == ["invalid_output"]
    assert t[0]["status"] == "running"  # handed back by the caller (jobs.stop_after_interrupt), not failed


def test_in_flight_slots_are_held_by_calls_not_by_the_records_after_them(tmp_path):
    """Issue 14: a slot is freed when the call answers, so the next task's call does not wait for the store to
    record the last one (slow records used to idle the provider's capacity); calls in flight stay <= the
    concurrency (4 in run_engine)."""
    import time

    from llmbatch.store import ledger

    calls, recorded, live = [], [], [0, 0]  # call start times, record end times, [in flight now, most]

    async def answer():
        calls.append(time.monotonic())
        live[0] += 1
        live[1] = max(live[1], live[0])
        await asyncio.sleep(0.05)
        live[0] -= 1
        return "positive"

    class During:
        def __setattr__(self, k, engine):
            call = engine.store.call

            async def slow_records(fn, *a, **kw):
                if fn is not ledger.settle_and_record:
                    return await call(fn, *a, **kw)
                await asyncio.sleep(1.0)
                out = await call(fn, *a, **kw)
                recorded.append(time.monotonic())
                return out

            engine.store.call = slow_records

    t, _, ad, _ = run_engine(tmp_path, lambda m, k: answer(), n=8, during=During())
    assert [r["status"] for r in t] == ["succeeded"] * 8 and len(ad.calls) == 8
    assert live[1] == 4
    assert sorted(calls)[4] < min(recorded)  # the 5th call went out before the first record was written


# ------------------------------------------------------------------- reservations made ahead of the slot


def _ahead_case(tmp_path, then):
    """8 tasks, 4 slots: the first 4 calls wait until the other 4 tasks have reserved while waiting for a
    slot (8 attempt rows in flight), then `then(engine, job_id, url)` runs and the calls answer. Returns
    run_engine's rows, the job row and the ledger sum."""
    from llmbatch.store import ledger

    holder, seen = {}, []

    async def answer():
        if not seen:
            for _ in range(200):  # the 4 waiting tasks reserve ahead of their slot
                with get_engine(holder["url"]).connect() as c:
                    n = c.execute(select(attempts.c.id).where(attempts.c.status == "in_flight")).all()
                if len(n) == 8:
                    break
                await asyncio.sleep(0.01)
            seen.append(len(n))
            await then(holder["engine"], holder["job"], holder["url"])
        await asyncio.sleep(0.02)
        return "positive"

    def before(engine, job_id):
        holder["url"], holder["job"] = str(engine.url), job_id

    class During:
        def __setattr__(self, k, v):
            holder["engine"] = v

    t, a, ad, job_id = run_engine(
        tmp_path, lambda m, k: answer(), n=8, before=before, during=During(), spec_extra={"budget_usd": "1"}
    )
    with get_engine(holder["url"]).connect() as c:
        job = repo.get_job(c, job_id)
        total = ledger.ledger_sum(c, job_id)
    assert seen == [8], "the tasks waiting for a slot held their reservations"
    return t, a, ad, job, total


def test_a_stop_gives_back_the_reservations_of_calls_never_sent(tmp_path):
    async def stop(engine, job_id, url):
        engine.stop()

    t, a, ad, job, total = _ahead_case(tmp_path, stop)
    assert len(ad.calls) == 4 and [x["status"] for x in a] == ["succeeded"] * 4  # unsent rows are gone
    assert sorted(r["status"] for r in t) == ["running"] * 4 + ["succeeded"] * 4  # the rest is handed back
    assert job["reserved_picos"] == 0 and job["spent_picos"] == total > 0
    assert [r["attempts"] for r in t if r["status"] == "running"] == [0] * 4


def test_a_cancel_gives_back_the_reservations_of_calls_never_sent(tmp_path):
    async def cancel(engine, job_id, url):
        with get_engine(url).begin() as c:
            repo.request_cancel(c, job_id)
        await engine.is_cancelled(engine._jobs[job_id], fresh=True)  # seen now, not within the next second

    t, a, ad, job, total = _ahead_case(tmp_path, cancel)
    assert len(ad.calls) == 4 and len(a) == 4
    assert sorted(r["status"] for r in t) == ["cancelled"] * 4 + ["succeeded"] * 4
    assert job["reserved_picos"] == 0 and job["spent_picos"] == total > 0
