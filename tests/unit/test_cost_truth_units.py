"""Cost truth, pure parts: money representation (exact pico-dollars, JSON numbers with every digit and no
exponent), gateway invalid-model answers, truncation reasons of every adapter."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from llmbatch.money import dumps_json, exact_usd, fmt_usd, usd_json, usd_to_picos
from llmbatch.providers.classify import ErrorDetail, classify_http_error
from llmbatch.errors import RerouteError


def test_small_amounts_are_plain_numbers_never_exponents():
    out = dumps_json(
        {
            "a": usd_json(4 * 10**6),
            "b": usd_json(735_900_000),
            "c": usd_json(15 * 10**11),
            "d": usd_json(1),
            "e": usd_json(None),
        }
    ).decode()
    assert out == '{"a":0.000004,"b":0.0007359,"c":1.500000,"d":0.000000000001,"e":null}'
    assert "e-" not in out.lower()


@given(st.integers(min_value=0, max_value=10**18))
def test_json_money_round_trips_exactly(picos):
    text = dumps_json({"x": usd_json(picos)}).decode()
    assert usd_to_picos(json.loads(text, parse_float=Decimal)["x"]) == picos


def test_display_rounds_only_when_shown():
    assert exact_usd(735_900_000) == "$0.0007359"
    assert fmt_usd(735_900_000) == "$0.000736"
    assert usd_to_picos("0.0005") == 5 * 10**8


def test_a_gateways_invalid_model_answer_falls_back_to_the_next_candidate():
    e = classify_http_error(
        400,
        ErrorDetail(message="Invalid model name passed in model=gpt-9. Call `/v1/models`"),
        {},
        where="gw/gpt-9",
        secrets=(),
    )
    assert isinstance(e, RerouteError) and e.error_class == "model_unavailable"


def test_every_provider_s_cap_stop_reads_as_truncation():
    """OpenAI `length`, Anthropic `max_tokens`, Gemini `MAX_TOKENS` reach the engine as truncation."""
    from llmbatch.catalog import builtin_catalog
    from llmbatch.engine import TRUNCATION_REASONS
    from llmbatch.providers.anthropic import AnthropicAdapter
    from llmbatch.providers.gemini import GeminiAdapter
    from llmbatch.providers.openai import OpenAIAdapter

    cat = builtin_catalog()
    cases = [
        (
            OpenAIAdapter,
            "openai/gpt-4.1-mini",
            {
                "id": "x",
                "model": "m",
                "choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "cut"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            },
        ),
        (
            AnthropicAdapter,
            "anthropic/claude-haiku-4-5",
            {
                "id": "x",
                "model": "m",
                "stop_reason": "max_tokens",
                "content": [{"type": "text", "text": "cut"}],
                "usage": {"input_tokens": 5, "output_tokens": 3},
            },
        ),
        (
            GeminiAdapter,
            "gemini/gemini-2.5-flash-lite",
            {
                "candidates": [{"finishReason": "MAX_TOKENS", "content": {"parts": [{"text": "cut"}]}}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3},
            },
        ),
    ]
    for adapter_cls, key, body in cases:
        model = cat.get(key)
        adapter = adapter_cls(cat.providers[model.provider], None, "k")
        assert adapter.parse_completion(model, body, {}).finish_reason in TRUNCATION_REASONS, key
