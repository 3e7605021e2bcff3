"""The simulator's pure parts: token counts, answers, schema filling, rate windows, caches, config."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbatch.models import TaskLine
from llmbatch.prompts import build_request
from llmbatch.simulator.answers import ErrorRates, answer
from llmbatch.simulator.config import SimulatorConfig
from llmbatch.simulator.conversation import ConversationBuilder
from llmbatch.simulator.dialects.anthropic import AnthropicDialect
from llmbatch.simulator.dialects.gemini import GeminiDialect
from llmbatch.simulator.dialects.openai import OpenAIDialect
from llmbatch.simulator.faults import burst_left
from llmbatch.simulator.modelinfo import ModelRegistry
from llmbatch.simulator.prompt_cache import PrefixCache
from llmbatch.simulator.ratelimit import RpmLimiter
from llmbatch.simulator.schema_fill import fill
from llmbatch.simulator.tokens import text_tokens, truncate_to_tokens
from llmbatch.tokens import upper_bound_input_tokens

REGISTRY = ModelRegistry({})

# --- token counting never exceeds the client's byte bound -------------------------------------------

_text = st.text(max_size=300)
_part = st.one_of(
    _text.map(lambda t: {"type": "text", "text": t}),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}),
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": st.one_of(_text, st.lists(_part, min_size=1, max_size=4)),
    }
)


def _bound(system: str | None, msgs: list[dict]) -> int:
    """The client's own reservation bound (called, not copied: if it changes, this test follows)."""
    return upper_bound_input_tokens(([{"role": "system", "content": system}] if system is not None else []) + msgs)


def _to_anthropic(msgs):
    out = []
    for m in msgs:
        if isinstance(m["content"], str):
            out.append(m)
            continue
        blocks = [
            {"type": "text", "text": p["text"]}
            if p["type"] == "text"
            else {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
            for p in m["content"]
        ]
        out.append({"role": m["role"], "content": blocks})
    return out


def _to_gemini(msgs):
    out = []
    for m in msgs:
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        out.append(
            {
                "role": "model" if m["role"] == "assistant" else "user",
                "parts": [
                    {"text": p["text"]}
                    if p["type"] == "text"
                    else {"inlineData": {"mimeType": "image/png", "data": "x"}}
                    for p in parts
                ],
            }
        )
    return out


@settings(max_examples=150, deadline=None)
@given(system=st.one_of(st.none(), _text), msgs=st.lists(_message, min_size=1, max_size=6))
def test_prompt_tokens_never_exceed_byte_bound(system, msgs):
    bound = _bound(system, msgs)
    oa = ([{"role": "system", "content": system}] if system is not None else []) + msgs
    conv = OpenAIDialect().parse({"messages": oa}, REGISTRY.find("openai", "gpt-4o")).conv
    assert conv.prompt_tokens <= bound

    payload = {"messages": _to_anthropic(msgs), "max_tokens": 10}
    if system is not None:
        payload["system"] = system
    conv = AnthropicDialect().parse(payload, REGISTRY.find("anthropic", "claude-sonnet-4-20250514")).conv
    assert conv.prompt_tokens <= bound

    payload = {"contents": _to_gemini(msgs)}
    if system is not None:
        payload["systemInstruction"] = {"parts": [{"text": system}]}
    conv = GeminiDialect().parse(payload, REGISTRY.find("gemini", "gemini-2.0-flash")).conv
    assert conv.prompt_tokens <= bound


@given(text=st.text(max_size=500), cap=st.integers(min_value=0, max_value=200))
def test_truncate_to_tokens_fits_and_is_a_prefix(text, cap):
    cut = truncate_to_tokens(text, cap)
    assert text.startswith(cut)
    assert text_tokens(cut) <= cap
    if text_tokens(text) <= cap:
        assert cut == text


# --- answers ----------------------------------------------------------------------------------------


def _conv(task: TaskLine):
    b = ConversationBuilder("m")
    for m in build_request(task).messages:
        b.start(m["role"])
        b.text(m["content"] if isinstance(m["content"], str) else "")
    return b.build()


def test_classify_prefers_mentioned_label_then_hash():
    labels = ["billing", "shipping", "technical"]
    conv = _conv(TaskLine(id="1", task="classify", input="My shipping box never came", labels=labels))
    assert answer(conv, model="gpt-4o", rates=ErrorRates()) == "shipping"
    conv = _conv(TaskLine(id="1", task="classify", input="qwerty", labels=labels))
    assert answer(conv, model="gpt-4o", rates=ErrorRates()) in labels


def test_sentiment_handles_negation():
    conv = _conv(TaskLine(id="1", task="classify", input="This is not good at all", labels=["positive", "negative"]))
    assert answer(conv, model="gpt-4o", rates=ErrorRates()) == "negative"


def test_mini_error_rate_is_roughly_the_configured_share():
    wrong = 0
    labels = ["a", "b"]
    for i in range(400):
        conv = _conv(TaskLine(id="1", task="classify", input=f"text number {i}", labels=labels))
        wrong += answer(conv, model="gpt-4o-mini", rates=ErrorRates(label=0.25)) not in labels
    assert 60 < wrong < 140


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "vip": {"type": "boolean"},
        },
        "required": ["name", "email", "age", "vip"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed", "pending"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "note": {"type": ["string", "null"], "maxLength": 5},
            "kind": {"const": "ticket"},
            "when": {"type": "string", "format": "date"},
        },
        "required": ["status", "tags", "score", "kind"],
    },
    {
        "$defs": {
            "addr": {
                "type": "object",
                "properties": {"city": {"type": "string", "minLength": 40}},
                "required": ["city"],
            }
        },
        "type": "object",
        "properties": {
            "home": {"$ref": "#/$defs/addr"},
            "alt": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/addr"}]},
            "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
        },
        "required": ["home", "alt", "items"],
    },
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_fill_is_valid_against_schema(schema):
    text = "Ticket from Jane Doe (jane@example.org), age 34, status closed, vip: yes, opened 2024-05-06."
    jsonschema.validate(fill(schema, text), schema)
    jsonschema.validate(fill(schema, ""), schema)


def test_fill_takes_values_from_text():
    out = fill(SCHEMAS[0], "Ticket from Jane Doe (jane@example.org), age 34, vip: yes.")
    assert out == {"name": "Jane Doe", "email": "jane@example.org", "age": 34, "vip": True}


def test_extract_answer_validates_and_errs_as_invalid_json():
    task = TaskLine(id="1", task="extract", input="Order 17 for Bob Stone", schema=SCHEMAS[0])
    conv = _conv(task)
    jsonschema.validate(json.loads(answer(conv, model="m", rates=ErrorRates())), SCHEMAS[0])
    with pytest.raises(ValueError):
        json.loads(answer(conv, model="m", rates=ErrorRates(json=1.0)))


# --- rate windows, bursts, caches, config -------------------------------------------------------------


def test_rpm_window_slides():
    lim = RpmLimiter()
    assert [lim.acquire("m", 2, 100.2).allowed for _ in range(3)] == [True, True, False]
    refused = lim.acquire("m", 2, 130.0)
    assert not refused.allowed and refused.reset_s == pytest.approx(30.0)
    assert lim.acquire("m", 2, 160.0).allowed  # the bucket of second 100 left the window
    assert lim.acquire("other", 2, 130.0).allowed


def test_burst_schedule_is_a_duty_cycle():
    # rate 0.25, duration 1 s: a 4 s period that opens with a 1 s burst.
    assert burst_left(10.0, 10.0, 0.25, 1.0) == pytest.approx(1.0)
    assert burst_left(10.6, 10.0, 0.25, 1.0) == pytest.approx(0.4)
    assert burst_left(12.0, 10.0, 0.25, 1.0) == 0.0
    assert burst_left(14.5, 10.0, 0.25, 1.0) == pytest.approx(0.5)
    assert burst_left(14.5, 10.0, 0.0, 1.0) == 0.0


def test_prefix_cache_is_bounded():
    cache = PrefixCache(max_entries=3)
    for k in range(10):
        cache.add(k)
    assert len(cache) == 3 and cache.hit(9) and not cache.hit(0)


def test_config_validation_and_partial_merge():
    cfg = SimulatorConfig(latency_s=0.1, faults={"hang": 0.1})
    merged = cfg.merged({"error_rate": 0.5})
    assert merged.latency_s == 0.1 and merged.error_rate == 0.5 and merged.faults == {"hang": 0.1}
    for bad in (
        {"error_rate": 1.5},
        {"faults": {"explode": 0.1}},
        {"rpm": 0},
        {"nope": 1},
        {"model_overrides": {"m": {"colour": 1}}},
        {"extra_models": {"m": "huge"}},
    ):
        with pytest.raises(ValueError):
            cfg.merged(bad)


def test_registry_knows_retired_models_and_name_families():
    o1 = REGISTRY.find("openai", "o1-preview")
    assert o1 is not None and o1.reasoning and o1.legacy_o1
    o3 = REGISTRY.find("openai", "o3-mini")
    assert o3.reasoning and not o3.legacy_o1 and not o3.vision
    assert not REGISTRY.find("openai", "gpt-4.1").reasoning
    assert REGISTRY.find("gemini", "gpt-4o") is None
