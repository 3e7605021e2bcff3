"""Issue 15: the response-cache key and shared-prefix planning (pure logic)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmbatch.cache.keys import request_key
from llmbatch.cache.prompt import PromptPlanner, breakpoint_pays, min_cacheable_tokens, shared_prefix
from llmbatch.catalog import builtin_catalog
from llmbatch.models import ChatRequest, TaskLine
from llmbatch.prompts import build_request
from llmbatch.providers import AnthropicAdapter

LABELS = ["positive", "negative", "neutral"]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture(scope="module")
def catalog():
    return builtin_catalog()


def _key(catalog, line: dict, model: str = "openai/gpt-4.1-mini", **kw) -> str:
    return request_key(
        catalog,
        catalog.get(model),
        build_request(TaskLine.model_validate(line)),
        simulate=kw.pop("simulate", True),
        **kw,
    )


def test_identical_requests_share_a_key_and_any_change_misses(catalog):
    cls = {"id": "a", "task": "classify", "input": "Great value.", "labels": LABELS}
    ext = {"id": "b", "task": "extract", "input": "Ann Lee, 34.", "schema": SCHEMA}
    k = _key(catalog, cls)
    assert k == _key(catalog, {**cls, "id": "other", "metadata": {"x": 1}})  # id and metadata are not sent
    changed = [
        _key(catalog, cls, "openai/gpt-4.1-nano"),  # model
        _key(catalog, {**cls, "max_output_tokens": 7}),  # output cap
        _key(catalog, {**cls, "labels": ["pos", "neg"]}),  # labels
        _key(catalog, {**cls, "input": "Great value!"}),  # a message
        _key(catalog, {**cls, "temperature": 0.5}),  # a parameter
        _key(catalog, cls, simulate=False),  # a simulated answer never answers a real request
        _key(catalog, cls, scope="token-b"),  # never shared across API tokens
    ]
    assert len({k, *changed}) == len(changed) + 1
    schema2 = {**SCHEMA, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    assert _key(catalog, ext) != _key(catalog, {**ext, "schema": schema2})  # schema


def test_a_prompt_cache_breakpoint_does_not_change_the_key(catalog):
    model = catalog.get("anthropic/claude-sonnet-4-20250514")
    req = ChatRequest(
        messages=[{"role": "system", "content": "s" * 50}, {"role": "user", "content": "hi"}], max_output_tokens=10
    )
    marked = req.model_copy(update={"cache_prefix_messages": 1})
    assert request_key(catalog, model, req, simulate=True) == request_key(catalog, model, marked, simulate=True)
    body = AnthropicAdapter(catalog.providers["anthropic"], None, None).build_body(model, marked)
    assert body["system"] == [{"type": "text", "text": "s" * 50, "cache_control": {"type": "ephemeral"}}]
    assert AnthropicAdapter(catalog.providers["anthropic"], None, None).build_body(model, req)["system"] == "s" * 50


def test_minimum_cacheable_lengths_and_when_a_breakpoint_pays(catalog):
    sonnet, haiku = catalog.get("anthropic/claude-sonnet-4-20250514"), catalog.get("claude-3-5-haiku-20241022")
    assert min_cacheable_tokens(sonnet) == 1024 and min_cacheable_tokens(haiku) == 2048
    assert min_cacheable_tokens(catalog.get("openai/gpt-4.1-mini")) == 1024
    # write 1.25x, read 0.1x: one read saves 0.9x of the prefix, more than the 0.25x premium.
    assert not breakpoint_pays(sonnet, 0) and breakpoint_pays(sonnet, 1)


def test_shared_prefix_is_the_leading_system_messages():
    req = ChatRequest(
        messages=[{"role": "system", "content": "rules " * 400}, {"role": "user", "content": "q"}], max_output_tokens=5
    )
    p = shared_prefix(req)
    assert p is not None and p.messages == 1 and p.tokens > 400
    assert shared_prefix(req.model_copy(update={"messages": req.messages[:1]})) is None  # nothing varies after
    assert shared_prefix(req.model_copy(update={"messages": req.messages[1:]})) is None


def test_one_warm_up_call_per_group_then_the_rest_go(catalog):
    asyncio.run(_warm_up(catalog))


async def _warm_up(catalog):

    planner = PromptPlanner()
    sonnet = catalog.get("anthropic/claude-sonnet-4-20250514")
    reqs = [
        ChatRequest(
            messages=[{"role": "system", "content": "rules " * 1500}, {"role": "user", "content": f"q{i}"}],
            max_output_tokens=5,
        )
        for i in range(3)
    ]
    for r in reqs:
        planner.note(r)
    deadline = time.time() + 5
    first, group = await planner.plan(sonnet, reqs[0], deadline)
    assert group is not None and first.cache_prefix_messages == 1
    waiter = asyncio.ensure_future(planner.plan(sonnet, reqs[1], deadline))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # waits for the warm-up call
    planner.warmed(group)
    second, g2 = await asyncio.wait_for(waiter, 1)
    assert g2 is None and second.cache_prefix_messages == 1
    # A prefix seen once is not worth a write.
    lone = PromptPlanner()
    lone.note(reqs[0])
    req, g = await lone.plan(sonnet, reqs[0], deadline)
    assert g is None and req.cache_prefix_messages == 0
