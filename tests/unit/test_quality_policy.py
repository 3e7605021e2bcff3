"""Issue 17: the policy's routing restriction, agreement rules and stratified sampling (pure logic)."""

from __future__ import annotations

import orjson
import pytest

from llmbatch.catalog import builtin_catalog
from llmbatch.errors import InputError
from llmbatch.models import Completion, TaskLine, Usage
from llmbatch.prompts import build_request
from llmbatch.quality import agreement, policy
from llmbatch.quality.sampling import group_key, stratified_sample
from llmbatch.routing import route

LABELS = ["positive", "negative", "neutral"]
CHEAP, REF = "groq/llama-3.1-8b-instant", "openai/gpt-4.1"


def _task(**kw) -> TaskLine:
    return TaskLine(**{"id": "t", "task": "classify", "input": "I love it", "labels": LABELS, **kw})


def _policy(threshold=0.5) -> dict:
    return {
        "version": 1,
        "target": 0.95,
        "confidence": 0.95,
        "groups": {group_key(_task()): {"model": CHEAP, "escalate_to": REF, "threshold": threshold}},
    }


def _decision(task):
    cat = builtin_catalog()
    return route(task, build_request(task), cat, credentials=frozenset(cat.providers), now=1.8e9)


def test_restriction_keeps_the_policy_models_cheapest_first():
    task = _task()
    d = policy.PolicyRouter(_policy()).restrict(task, _decision(task))
    assert [c.model.key for c in d.candidates] == [CHEAP, REF]
    assert d.candidates[0].first and not d.candidates[1].first
    assert any(r.rule == "policy" for r in d.rejected)
    assert [c.model.key for c in policy.PolicyRouter(_policy()).escalation(task, d, d.candidates[0].model)] == [REF]


def test_pins_and_other_groups_route_as_usual():
    router = policy.PolicyRouter(_policy())
    pinned = _task(model="openai/gpt-4o")
    assert router.restrict(pinned, _decision(pinned)) == _decision(pinned)
    other = _task(labels=["spam", "ham"])
    assert router.restrict(other, _decision(other)) == _decision(other)
    assert not router.wants_logprobs(other) and router.wants_logprobs(_task())


def test_low_confidence_escalates_only_the_policy_model_below_its_threshold():
    router, task = policy.PolicyRouter(_policy(0.5)), _task()

    def c(conf):
        return Completion(text="positive", usage=Usage(), confidence=conf)

    assert router.low_confidence(task, CHEAP, c(0.3))
    assert router.low_confidence(task, CHEAP, c(0.7)) is None
    assert router.low_confidence(task, CHEAP, c(None)) is None  # no logprobs: the answer stands
    assert router.low_confidence(task, REF, c(0.1)) is None
    assert policy.PolicyRouter(_policy(0.5), escalate=False).low_confidence(task, CHEAP, c(0.1)) is None
    assert policy.PolicyRouter(_policy(None)).low_confidence(task, CHEAP, c(0.1)) is None


def test_calibration_router_records_confidence_and_asks_for_logprobs():
    r = policy.PolicyRouter(None, calibration=True)
    assert r.wants_logprobs(_task())
    assert r.record("positive", Completion(text="positive", usage=Usage(), confidence=0.8)) == {
        "answer": "positive",
        "confidence": 0.8,
    }


def test_policy_file_errors_are_one_clear_line(tmp_path):
    p = tmp_path / "p.json"
    p.write_text("{nope")
    with pytest.raises(InputError, match="not JSON"):
        policy.load(p)
    p.write_bytes(orjson.dumps({"version": 1, "groups": {"g": {"model": CHEAP}}}))
    with pytest.raises(InputError, match="escalate_to"):
        policy.load(p)
    p.write_bytes(orjson.dumps(_policy(1.5)))
    with pytest.raises(InputError, match="threshold"):
        policy.load(p)
    p.write_bytes(orjson.dumps(_policy()))
    assert policy.load(p)["groups"]


def test_agreement_rules():
    assert agreement.agrees("classify", "positive", "positive")
    assert not agreement.agrees("classify", "positive", "negative")
    assert agreement.agrees(
        "extract", {"name": " Ada  Lovelace", "n": 1, "x": None}, {"name": "ada lovelace", "n": 1.0}
    )
    assert not agreement.agrees("extract", {"name": "Ada", "n": 2}, {"name": "Ada", "n": 1})
    with pytest.raises(ValueError):
        agreement.agrees("summarize", "a", "b")
    msgs = agreement.judge_messages("in", "ref text", "cand text")
    assert agreement.JUDGE_MARKER in msgs[0]["content"] and "cand text" in msgs[1]["content"]
    assert agreement.judge_passed("PASS") and not agreement.judge_passed("FAIL")


def test_stratified_sample_gives_each_group_its_own_sample():
    tasks = [_task(id=str(i)) for i in range(500)] + [_task(id=f"s{i}", labels=["spam", "ham"]) for i in range(30)]
    strata = stratified_sample(tasks, 50, seed=1)
    assert sorted((s.population, len(s.sample)) for s in strata.values()) == [(30, 30), (500, 50)]
    big = next(s for s in strata.values() if s.population == 500)
    assert len({t.id for t in big.sample}) == 50
    assert [t.id for t in big.sample] == [
        t.id for t in next(s for s in stratified_sample(tasks, 50, seed=1).values() if s.population == 500).sample
    ]
    assert max(int(t.id) for t in big.sample) > 100  # drawn from the whole file, not its head
