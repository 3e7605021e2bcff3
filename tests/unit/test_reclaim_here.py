"""A worker whose presence lapsed, whose tasks a sweeper handed back, and which then claims one of them again
while its first delivery still runs: the running delivery keeps the task (one provider call, one record), not
a second delivery racing it (both would pass the lease check, which names the worker, and both calls be paid)."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from sqlalchemy import select, update

from llmbatch.catalog.loading import load_catalog
from llmbatch.config import RetryPolicy, Settings
from llmbatch.engine import Engine
from llmbatch.executors.flow import TaskFlow
from llmbatch.jobs import create_job
from llmbatch.models import Completion, JobSpec, Usage
from llmbatch.ratelimit import make_rate_limiter
from llmbatch.store.aio import AsyncStore
from llmbatch.store.db import get_engine
from llmbatch.store.schema import TaskStatus, attempts, tasks
from tests.support.jobs import FakeProviders

CHEAP = "groq/llama-3.1-8b-instant"


class Presence:
    """The parts of liveness.Presence the engine reads: the epoch grows when this process's record lapsed."""

    def __init__(self):
        self.epoch = 0

    async def confirm(self) -> int:
        return self.epoch


def _job(tmp_path, cache):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    settings = Settings(database_url=url, retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05))
    src = tmp_path / "in.jsonl"
    line = {"id": "t0", "task": "classify", "input": "great product", "labels": ["positive", "negative"]}
    src.write_text(orjson.dumps(line).decode() + "\n")
    job_id, _ = create_job(
        settings, src, JobSpec.model_validate({"simulate": True, "models": [CHEAP], "cache": cache}), executor="local"
    )
    return url, settings, job_id


def _run(tmp_path, during_call, *, cache):
    """One task; its first call runs `during_call(engine, flow, job_id)` before it answers. Returns the provider
    calls made, the task row and its attempt rows."""
    url, settings, job_id = _job(tmp_path, cache)
    catalog = load_catalog(settings)
    calls: list[str] = []

    async def main():
        store = AsyncStore(url)
        engine = Engine(
            settings=settings,
            catalog=catalog,
            store=store,
            providers=None,
            limiter=make_rate_limiter(settings, shared=False),
            worker_id="w:1:abc",
            concurrency=4,
            rng=random.Random(0),
        )
        engine.presence = Presence()
        flow = TaskFlow(engine)

        class Adapter:
            async def complete(self, model, request, timeout=None):
                calls.append(model.key)
                if len(calls) == 1:
                    await during_call(engine, flow, job_id)
                return Completion(text="positive", usage=Usage(input_tokens=50, output_tokens=2))

        engine.providers = FakeProviders(catalog, Adapter())
        try:
            await flow.feed(job_id, 0, 0)
            await flow.drain()
        finally:
            store.close()

    asyncio.run(main())
    with get_engine(url).connect() as c:
        task = c.execute(select(tasks).where(tasks.c.job_id == job_id)).mappings().one()
        rows = c.execute(select(attempts).where(attempts.c.job_id == job_id)).mappings().all()
    return calls, task, rows


async def _lapse_and_hand_back(engine, job_id):
    """What a sweeper does to a lapsed worker's task (presence.release_dead), and the worker noticing."""
    engine.presence.epoch += 1

    def hand_back(conn):
        conn.execute(
            update(tasks)
            .where(tasks.c.job_id == job_id)
            .values(status=TaskStatus.queued, lease_owner=None, lease_expires_at=None)
        )

    await engine.store.call(hand_back)


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_a_task_claimed_again_by_the_worker_still_calling_for_it_is_called_once(tmp_path, cache):
    async def during(engine, flow, job_id):
        await _lapse_and_hand_back(engine, job_id)
        await flow.feed(job_id, 0, 0)  # the unit comes back to this same worker, first call still out
        await asyncio.sleep(0.2)  # time for a second delivery to reserve and call, if there were one

    calls, task, rows = _run(tmp_path, during, cache=cache)
    # Without the cache a second delivery calls again; with it, it waits for the first call's answer and
    # records a second (cache) attempt. Either way one delivery is all there should be.
    assert calls == [CHEAP], "the second delivery called the provider again"
    assert task["status"] == "succeeded" and task["output"] is not None
    assert [(r["status"], r["channel"]) for r in rows] == [("succeeded", "sync")]
    assert task["cost_picos"] == rows[0]["cost_picos"] > 0
