"""The batch clients (providers/batch) against the simulator over real HTTP: create, find by tag (what a
worker that died between "create" and "record" relies on), poll, per-line results with usage, cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmbatch.catalog import builtin_catalog
from llmbatch.models import ChatRequest
from llmbatch.providers import build_adapters, make_http_client
from llmbatch.providers.batch import CANCELLED, SUCCEEDED, batch_client
from llmbatch.simulator import SimulatorConfig, SimulatorThread

CAT = builtin_catalog()
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022", "gemini/gemini-2.0-flash"]


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(SimulatorConfig(mini_error_rate=0.0)) as s:
        yield s


def _lines(client, model, n):
    req = lambda i: ChatRequest(messages=[{"role": "user", "content": f"Say hi {i}"}], max_output_tokens=20)  # noqa: E731
    return [(str(i), client.body(model, req(i))) for i in range(n)]


async def _round_trip(url: str, key: str, tag: str):
    http = make_http_client()
    try:
        model = CAT.get(key)
        client = batch_client(build_adapters(CAT, http, simulator_url=url)[model.provider])
        since = time.time()
        bid = await client.create(model, _lines(client, model, 4), tag)
        found = await client.find(tag, since=since, total=4)
        state = await client.poll(bid)
        results = await client.results(model, bid)
        return bid, found, state, results
    finally:
        await http.aclose()


@pytest.mark.parametrize("key", MODELS)
def test_create_find_poll_results(sim, key):
    sim.configure(batch_turnaround_s=0.0)
    bid, found, state, results = asyncio.run(_round_trip(sim.url, key, f"llmbatch-test-{key.split('/')[0]}"))
    assert found == bid  # recoverable after a crash between create and record
    assert state.ended and state.total == 4 and state.done == 4
    assert sorted(r.custom_id for r in results) == ["0", "1", "2", "3"]
    assert all(r.kind == SUCCEEDED and r.usage.input_tokens > 0 and r.usage.output_tokens > 0 for r in results)


async def _cancelled(url: str, key: str):
    http = make_http_client()
    try:
        model = CAT.get(key)
        client = batch_client(build_adapters(CAT, http, simulator_url=url)[model.provider])
        bid = await client.create(model, _lines(client, model, 3), "llmbatch-cancel")
        assert not (await client.poll(bid)).ended
        await client.cancel(bid)
        for _ in range(20):
            if (await client.poll(bid)).ended:
                break
            await asyncio.sleep(0.05)
        return await client.results(model, bid)
    finally:
        await http.aclose()


@pytest.mark.parametrize("key", MODELS)
def test_cancel_ends_the_batch_with_cancelled_lines(sim, key):
    sim.configure(batch_turnaround_s=-1.0)
    results = asyncio.run(_cancelled(sim.url, key))
    assert len(results) == 3 and {r.kind for r in results} == {CANCELLED} and all(r.usage is None for r in results)


def test_a_tag_nobody_used_is_not_found(sim):
    async def go():
        http = make_http_client()
        try:
            client = batch_client(build_adapters(CAT, http, simulator_url=sim.url)["openai"])
            return await client.find("llmbatch-never-created", since=time.time(), total=1)
        finally:
            await http.aclose()

    assert asyncio.run(go()) is None
