"""Issue 17: the simulator's quality model -- valid but wrong answers by tier and difficulty, deterministic per
(model, input); confidence lower on wrong answers but not separable; logprobs over HTTP when asked."""

from __future__ import annotations

import math

import httpx

from llmbatch.models import ChatRequest, TaskLine
from llmbatch.prompts import build_request
from llmbatch.providers.openai import answer_confidence
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.simulator.answers import ErrorRates, scored_answer
from llmbatch.simulator.conversation import ConversationBuilder
from llmbatch.simulator.quality import TIER_WRONG_SHARE

LABELS = ["positive", "negative", "neutral"]
TEXTS = [f"Great product, I love it. Order {i} arrived on day {i % 7}." for i in range(1500)]


def _conv(task: TaskLine):
    b = ConversationBuilder("m")
    for m in build_request(task).messages:
        b.start(m["role"])
        b.text(m["content"])
    return b.build()


def _answers(model: str, wrong_rate: float):
    rates = ErrorRates(wrong=wrong_rate)
    return [
        scored_answer(_conv(TaskLine(id="t", task="classify", input=t, labels=LABELS)), model=model, rates=rates)
        for t in TEXTS
    ]


def test_wrong_but_valid_answers_at_about_the_rate_and_deterministic():
    out = _answers("some-mini", 0.10)
    assert all(a in LABELS for a, _ in out)  # every answer is valid
    wrong = [a != "positive" for a, _ in out]
    assert 0.07 < sum(wrong) / len(out) < 0.13
    assert out == _answers("some-mini", 0.10)  # same (model, input), same answer and confidence
    assert not any(a != "positive" for a, _ in _answers("some-mini", 0.0))  # rate 0: the old behaviour
    # another model errs on other inputs (its own draw), though hard inputs are hard for both
    other = [a != "positive" for a, _ in _answers("other-mini", 0.10)]
    assert other != wrong


def test_confidence_is_lower_on_wrong_answers_but_not_separable():
    out = _answers("some-mini", 0.10)
    right = [c for a, c in out if a == "positive"]
    wrong = [c for a, c in out if a != "positive"]
    assert sum(wrong) / len(wrong) < sum(right) / len(right) - 0.2
    assert max(wrong) > min(right)  # overlapping: a threshold trades escalations against misses


def test_tiers_are_ordered_and_the_reference_is_not_perfect():
    assert TIER_WRONG_SHARE["mini"] > TIER_WRONG_SHARE["standard"] > TIER_WRONG_SHARE["frontier"] > 0
    wrong = sum(a != "positive" for a, _ in _answers("gpt-4.1", 0.10 * TIER_WRONG_SHARE["frontier"]))
    assert 0 < wrong < len(TEXTS) * 0.03


def test_logprobs_over_http_only_when_asked_and_the_adapter_reads_them():
    task = TaskLine(id="t", task="classify", input=TEXTS[0], labels=LABELS)
    body = {"model": "gpt-4o-mini", "messages": build_request(task).messages, "max_tokens": 16}
    with SimulatorThread(SimulatorConfig()) as sim, httpx.Client(base_url=sim.url, timeout=10) as c:
        headers = {"Authorization": "Bearer sk-sim"}
        plain = c.post("/v1/chat/completions", json=body, headers=headers).json()
        asked = c.post("/v1/chat/completions", json={**body, "logprobs": True}, headers=headers).json()
    assert plain["choices"][0]["logprobs"] is None
    lp = asked["choices"][0]["logprobs"]
    assert lp["content"] and lp["content"][0]["logprob"] <= 0
    assert asked["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    conf = answer_confidence(lp)
    assert 0 < conf <= 1 and math.isclose(conf, math.exp(sum(t["logprob"] for t in lp["content"])))
    assert answer_confidence(None) is None


def test_openai_adapter_asks_for_logprobs_only_when_the_request_does():
    from llmbatch.catalog import builtin_catalog
    from llmbatch.providers.openai import OpenAIAdapter

    model = builtin_catalog().get("openai/gpt-4o-mini")
    adapter = OpenAIAdapter.__new__(OpenAIAdapter)
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_output_tokens=5)
    assert "logprobs" not in adapter.build_body(model, req)
    assert adapter.build_body(model, req.model_copy(update={"logprobs": True}))["logprobs"] is True
