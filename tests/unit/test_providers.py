"""Provider adapters over httpx.MockTransport: request translation, usage parsing, error classification,
key redaction. Response bodies are recorded shapes under fixtures/provider_responses/."""

from __future__ import annotations

import asyncio
import json
import traceback
from pathlib import Path

import httpx
import pytest

from llmbatch.catalog import builtin_catalog
from llmbatch.catalog.pricing import price
from llmbatch.errors import (
    FatalError,
    ProviderError,
    ProviderTimeout,
    RateLimitedError,
    RerouteError,
    RetryableError,
)
from llmbatch.models import ChatRequest
from llmbatch.providers import (
    AnthropicAdapter,
    GeminiAdapter,
    OpenAIAdapter,
    available_credentials,
    build_adapters,
)
from llmbatch.providers.redact import REDACTED, redact

FIXTURES = Path(__file__).parent / "fixtures" / "provider_responses"
CATALOG = builtin_catalog()
FAKE_KEY = "sk-test-FAKEKEY0123456789abcdef"
ENV = {
    name: FAKE_KEY
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GROQ_API_KEY",
        "MISTRAL_API_KEY",
        "TOGETHER_API_KEY",
    )
}

SYSTEM = "Classify the text below. Reply with exactly one label."
PNG_DATA_URI = "data:image/png;base64,iVBORw0KGgo="


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def request(**kw) -> ChatRequest:
    base = dict(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "I love it"}],
        max_output_tokens=16,
        temperature=0.0,
    )
    base.update(kw)
    return ChatRequest(**base)


class Recorder:
    """A MockTransport handler that answers with one canned response and keeps what it was sent."""

    def __init__(
        self,
        status: int = 200,
        body: bytes | str | dict = b"{}",
        headers: dict | None = None,
        raises: Exception | None = None,
        delay: float = 0.0,
    ):
        self.status, self.headers, self.raises, self.delay = status, headers or {}, raises, delay
        self.body = (
            json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
        )
        self.requests: list[httpx.Request] = []

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raises is not None:
            raise self.raises
        return httpx.Response(self.status, content=self.body, headers=self.headers)

    @property
    def sent(self) -> dict:
        return json.loads(self.requests[-1].content)


def call(provider: str, model: str, req: ChatRequest, recorder: Recorder, *, env=ENV, timeout: float = 5.0):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
            adapter = build_adapters(CATALOG, client, env=env)[provider]
            return await adapter.complete(CATALOG.get(f"{provider}/{model}"), req, timeout=timeout)

    return asyncio.run(go())


def body_for(provider: str, model: str, req: ChatRequest) -> dict:
    adapters = build_adapters(CATALOG, httpx.AsyncClient(), env=ENV)
    return adapters[provider].build_body(CATALOG.get(f"{provider}/{model}"), req)


# --- OpenAI request translation -------------------------------------------------------------------------------


def test_o1_merges_system_into_first_user_and_uses_max_completion_tokens():
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    body = body_for("openai", "o1-mini", request(json_schema=schema, reasoning_budget_tokens=4096, temperature=0.2))
    assert body["messages"] == [{"role": "user", "content": f"{SYSTEM}\n\nI love it"}]
    assert body["max_completion_tokens"] == 16 + 4096
    assert "max_tokens" not in body
    assert "temperature" not in body
    assert "response_format" not in body


def test_o1_merge_keeps_image_parts_and_later_turns():
    parts = [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]
    req = request(
        messages=[
            {"role": "user", "content": parts},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "again"},
        ]
    )
    body = body_for("openai", "o1-preview", req)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": SYSTEM}, *parts]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]


def test_o1_merge_prepends_to_a_leading_text_part():
    req = request(
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": "look"}]},
        ]
    )
    body = body_for("openai", "o1-mini", req)
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": f"{SYSTEM}\n\nlook"}]}]


def test_o3_mini_sends_system_as_developer_and_keeps_response_format():
    schema = {"type": "object"}
    body = body_for("openai", "o3-mini", request(json_schema=schema, reasoning_budget_tokens=100))
    assert body["messages"][0] == {"role": "developer", "content": SYSTEM}
    assert body["max_completion_tokens"] == 116
    assert "temperature" not in body
    assert body["response_format"]["json_schema"] == {"name": "output", "schema": schema, "strict": False}


def test_gpt4o_keeps_system_temperature_and_json_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = request(
        json_schema=schema,
        temperature=0.7,
        reasoning_budget_tokens=999,
        messages=[{"role": "developer", "content": SYSTEM}, {"role": "user", "content": "hi"}],
    )
    body = body_for("openai", "gpt-4o", req)
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}  # developer -> system on older models
    assert body["max_tokens"] == 16  # not a reasoning model: no reasoning budget added
    assert body["temperature"] == 0.7
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},
    }


def test_models_without_json_schema_capability_get_no_response_format():
    body = body_for("groq", "llama-3.1-8b-instant", request(json_schema={"type": "object"}))
    assert "response_format" not in body
    assert body["max_tokens"] == 16


def test_gpt41_uses_max_completion_tokens_and_cap_never_exceeds_model_limit():
    body = body_for("openai", "gpt-4.1-mini", request(max_output_tokens=10_000_000))
    assert body["max_completion_tokens"] == CATALOG.get("openai/gpt-4.1-mini").max_output_tokens


# --- Anthropic and Gemini request translation ------------------------------------------------------------------


def test_anthropic_body_system_max_tokens_images_and_clamped_temperature():
    req = request(
        temperature=1.7,
        json_schema={"type": "object"},
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "developer", "content": "Be terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URI}},
                    {"type": "image_url", "image_url": {"url": "https://img.test/cat.jpg"}},
                ],
            },
        ],
    )
    body = body_for("anthropic", "claude-sonnet-4-20250514", req)
    assert body["system"] == f"{SYSTEM}\n\nBe terse."
    assert body["max_tokens"] == 16
    assert body["temperature"] == 1.0
    assert "response_format" not in body and "output_format" not in body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://img.test/cat.jpg"}},
            ],
        }
    ]


def test_gemini_body_roles_system_instruction_images_and_json_schema():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    req = request(
        json_schema=schema,
        temperature=0.3,
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and this"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URI}},
                    {"type": "image_url", "image_url": {"url": "https://img.test/cat.webp"}},
                ],
            },
        ],
    )
    body = body_for("gemini", "gemini-2.0-flash", req)
    assert body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"] == [
        {"text": "and this"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://img.test/cat.webp"}},
    ]
    assert body["generationConfig"] == {
        "maxOutputTokens": 16,
        "temperature": 0.3,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


# --- Successful responses -> Completion ---------------------------------------------------------------------------


def test_openai_usage_with_cached_tokens_and_request_metadata():
    rec = Recorder(body=fixture("openai_gpt4o_mini_cached.json"), headers={"x-request-id": "req_abc123"})
    done = call("openai", "gpt-4o-mini", request(), rec)
    assert done.text == "positive"
    assert done.usage.model_dump() == {
        "input_tokens": 2006,
        "cached_tokens": 1920,
        "cache_write_tokens": 0,
        "output_tokens": 2,
        "reasoning_tokens": 0,
    }
    assert done.finish_reason == "stop"
    assert done.provider_request_id == "req_abc123"
    assert done.served_model == "gpt-4o-mini-2024-07-18"
    sent = rec.requests[0]
    assert str(sent.url) == "https://api.openai.com/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {FAKE_KEY}"
    price(done.usage, CATALOG.get("openai/gpt-4o-mini"))  # consistent enough to price


def test_openai_o1_reasoning_tokens_are_part_of_output():
    rec = Recorder(body=fixture("openai_o1_mini_reasoning.json"))
    done = call("openai", "o1-mini", request(reasoning_budget_tokens=4096), rec)
    assert (done.usage.output_tokens, done.usage.reasoning_tokens) == (1302, 1280)
    assert done.provider_request_id == "chatcmpl-AB8g7nqfLw4Ul5yzQ8bzY6CqLmnxJ"  # body id when no header
    assert rec.sent["max_completion_tokens"] == 16 + 4096
    price(done.usage, CATALOG.get("openai/o1-mini"))


def test_openai_compatible_without_details_counts_zero_cached_and_reasoning():
    done = call("groq", "llama-3.1-8b-instant", request(), Recorder(body=fixture("groq_no_details.json")))
    assert done.usage.model_dump() == {
        "input_tokens": 18,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 556,
        "reasoning_tokens": 0,
    }
    assert str(done) and done.text == "A short summary."


@pytest.mark.parametrize("name", ["openai_content_filter.json", "openai_refusal.json"])
def test_openai_filtered_answer_is_a_reroute_that_keeps_its_usage(name):
    with pytest.raises(RerouteError) as info:
        call("openai", "gpt-4o", request(), Recorder(body=fixture(name)))
    assert info.value.error_class == "content_filter"
    assert info.value.status_code == 200
    assert info.value.usage is not None and info.value.usage.input_tokens > 0


def test_anthropic_cache_tokens_map_to_our_convention():
    rec = Recorder(
        body=fixture("anthropic_message_cached.json"), headers={"request-id": "req_018EeWyXxfu5pfWkrYcMdjWG"}
    )
    done = call("anthropic", "claude-3-5-haiku-20241022", request(), rec)
    assert done.text == "The contract renews on 1 March."
    assert done.usage.model_dump() == {
        "input_tokens": 21 + 188086 + 1500,
        "cached_tokens": 1500,
        "cache_write_tokens": 188086,
        "output_tokens": 393,
        "reasoning_tokens": 0,
    }
    assert done.provider_request_id == "req_018EeWyXxfu5pfWkrYcMdjWG"
    assert done.finish_reason == "end_turn"
    sent = rec.requests[0]
    assert str(sent.url) == "https://api.anthropic.com/v1/messages"
    assert sent.headers["x-api-key"] == FAKE_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    cost = price(done.usage, CATALOG.get("anthropic/claude-3-5-haiku-20241022"))
    assert cost.cache_write_picos > 0 and cost.cached_input_picos > 0


def test_anthropic_refusal_is_content_filter():
    with pytest.raises(RerouteError) as info:
        call("anthropic", "claude-sonnet-4-20250514", request(), Recorder(body=fixture("anthropic_refusal.json")))
    assert info.value.error_class == "content_filter"
    assert info.value.usage.input_tokens == 40


def test_gemini_usage_with_cached_and_thought_tokens_and_key_only_in_header():
    rec = Recorder(body=fixture("gemini_response_thinking_cached.json"))
    done = call("gemini", "gemini-2.0-flash", request(), rec)
    assert done.text == '{"name": "Ada", "age": 36}'  # the thought part is not the answer
    assert done.usage.model_dump() == {
        "input_tokens": 4120,
        "cached_tokens": 4096,
        "cache_write_tokens": 0,
        "output_tokens": 14 + 255,
        "reasoning_tokens": 255,
    }
    assert done.provider_request_id == "mW7aaOXGM5Kx1MkPlbSU2Ao"
    assert done.served_model == "gemini-2.0-flash"
    sent = rec.requests[0]
    assert str(sent.url) == ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == FAKE_KEY
    assert FAKE_KEY not in str(sent.url) and "key=" not in str(sent.url)
    price(done.usage, CATALOG.get("gemini/gemini-2.0-flash"))


def test_gemini_plain_response_without_optional_counts():
    done = call("gemini", "gemini-2.0-flash", request(), Recorder(body=fixture("gemini_response_plain.json")))
    assert done.text == "negative"
    assert (done.usage.cached_tokens, done.usage.reasoning_tokens, done.usage.output_tokens) == (0, 0, 1)


@pytest.mark.parametrize(
    "name,why", [("gemini_blocked_prompt.json", "SAFETY"), ("gemini_finish_safety.json", "SAFETY")]
)
def test_gemini_blocked_is_content_filter_with_billed_prompt(name, why):
    with pytest.raises(RerouteError) as info:
        call("gemini", "gemini-2.0-flash", request(), Recorder(body=fixture(name)))
    assert info.value.error_class == "content_filter"
    assert why in str(info.value)
    assert info.value.usage.input_tokens > 0


# --- HTTP errors -> the engine's next move -----------------------------------------------------------------------

ERROR_TABLE = [
    # provider, model, status, body, headers, expected class, error_class, retry_after
    (
        "openai",
        "gpt-4o-mini",
        429,
        "openai_error_rate_limit.json",
        {"retry-after-ms": "120"},
        RateLimitedError,
        "rate_limited",
        0.12,
    ),
    (
        "openai",
        "gpt-4o-mini",
        429,
        "openai_error_rate_limit.json",
        {"retry-after": "7"},
        RateLimitedError,
        "rate_limited",
        7.0,
    ),
    (
        "openai",
        "gpt-4o-mini",
        429,
        "openai_error_rate_limit.json",
        {"x-ratelimit-reset-requests": "6m0s"},
        RateLimitedError,
        "rate_limited",
        360.0,
    ),
    ("openai", "gpt-4o-mini", 429, "openai_error_rate_limit.json", {}, RateLimitedError, "rate_limited", None),
    ("openai", "gpt-4o-mini", 429, "openai_error_insufficient_quota.json", {}, RerouteError, "quota_exhausted", None),
    ("openai", "gpt-4o-mini", 400, "openai_error_context_length.json", {}, RerouteError, "context_length", None),
    ("openai", "o1-preview", 404, "openai_error_model_not_found.json", {}, RerouteError, "model_unavailable", None),
    (
        "groq",
        "llama-3.1-8b-instant",
        400,
        "groq_error_decommissioned.json",
        {},
        RerouteError,
        "model_unavailable",
        None,
    ),
    ("openai", "gpt-4o-mini", 400, "openai_error_content_filter.json", {}, RerouteError, "content_filter", None),
    ("openai", "gpt-4o-mini", 401, "openai_error_invalid_api_key.json", {}, FatalError, "auth", None),
    (
        "openai",
        "gpt-4o-mini",
        403,
        '{"error": {"message": "Country, region, or territory not supported", "code": "unsupported_country_region_territory"}}',
        {},
        FatalError,
        "forbidden",
        None,
    ),
    ("openai", "gpt-4o-mini", 404, "<html><body>404 Not Found</body></html>", {}, FatalError, "not_found", None),
    ("openai", "o1-mini", 400, "openai_error_unsupported_system.json", {}, FatalError, "bad_request", None),
    (
        "openai",
        "gpt-4o-mini",
        422,
        '{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}',
        {},
        FatalError,
        "bad_request",
        None,
    ),
    ("openai", "gpt-4o-mini", 408, "", {}, RetryableError, "request_timeout", None),
    ("openai", "gpt-4o-mini", 409, "", {"retry-after": "2"}, RetryableError, "conflict", 2.0),
    (
        "openai",
        "gpt-4o-mini",
        500,
        "openai_error_server.json",
        {"x-ratelimit-reset-requests": "20s"},
        RetryableError,
        "server_error",
        None,
    ),
    ("openai", "gpt-4o-mini", 502, "<html>Bad gateway</html>", {}, RetryableError, "server_error", None),
    ("openai", "gpt-4o-mini", 503, "", {"retry-after": "3"}, RetryableError, "unavailable", 3.0),
    ("openai", "gpt-4o-mini", 504, "", {}, RetryableError, "server_error", None),
    ("openai", "gpt-4o-mini", 413, "", {}, RerouteError, "context_length", None),
    (
        "openai",
        "gpt-4o-mini",
        402,
        '{"error": {"message": "Insufficient credits"}}',
        {},
        RerouteError,
        "quota_exhausted",
        None,
    ),
    (
        "together",
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        400,
        "vllm_error_context_length.json",
        {},
        RerouteError,
        "context_length",
        None,
    ),
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        529,
        "anthropic_error_overloaded.json",
        {},
        RetryableError,
        "overloaded",
        None,
    ),
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        400,
        "anthropic_error_prompt_too_long.json",
        {},
        RerouteError,
        "context_length",
        None,
    ),
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        404,
        "anthropic_error_model_not_found.json",
        {},
        RerouteError,
        "model_unavailable",
        None,
    ),
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        429,
        "anthropic_error_rate_limit.json",
        {"retry-after": "12"},
        RateLimitedError,
        "rate_limited",
        12.0,
    ),
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        429,
        "anthropic_error_spend_limit.json",
        {},
        RerouteError,
        "quota_exhausted",
        None,
    ),
    ("anthropic", "claude-3-5-haiku-20241022", 401, "anthropic_error_auth.json", {}, FatalError, "auth", None),
    ("gemini", "gemini-2.0-flash", 400, "gemini_error_context_length.json", {}, RerouteError, "context_length", None),
    ("gemini", "gemini-2.0-flash", 429, "gemini_error_rate_limit.json", {}, RateLimitedError, "rate_limited", 37.0),
    (
        "gemini",
        "gemini-2.0-flash",
        429,
        "gemini_error_rate_limit.json",
        {"retry-after": "5"},
        RateLimitedError,
        "rate_limited",
        5.0,
    ),
    ("gemini", "gemini-2.0-flash", 400, "gemini_error_api_key_invalid.json", {}, FatalError, "auth", None),
    (
        "gemini",
        "gemini-2.0-flash",
        404,
        "gemini_error_model_not_found.json",
        {},
        RerouteError,
        "model_unavailable",
        None,
    ),
    ("gemini", "gemini-2.0-flash", 503, "gemini_error_overloaded.json", {}, RetryableError, "unavailable", None),
]


@pytest.mark.parametrize("provider,model,status,body,headers,cls,error_class,retry_after", ERROR_TABLE)
def test_error_classification(provider, model, status, body, headers, cls, error_class, retry_after):
    raw = fixture(body) if body.endswith(".json") else body
    with pytest.raises(ProviderError) as info:
        call(provider, model, request(), Recorder(status, raw, headers))
    exc = info.value
    assert type(exc) is cls
    assert exc.error_class == error_class
    assert exc.status_code == status
    if retry_after is None:
        assert getattr(exc, "retry_after", None) is None
    else:
        assert exc.retry_after == pytest.approx(retry_after)
    assert f"{provider}/{model}" in str(exc)  # the user learns which model failed
    assert len(str(exc)) < 500


def test_error_message_quotes_the_provider():
    with pytest.raises(RerouteError) as info:
        call(
            "anthropic",
            "claude-3-5-haiku-20241022",
            request(),
            Recorder(400, fixture("anthropic_error_prompt_too_long.json")),
        )
    assert "prompt is too long: 208452 tokens > 200000 maximum" in str(info.value)


# --- Transport failures and malformed bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raised,cls,error_class,sent",
    [
        (httpx.ConnectError("connection refused"), RetryableError, "connect", False),
        (httpx.ConnectTimeout("connect timed out"), RetryableError, "connect", False),
        (httpx.PoolTimeout("no free connection"), RetryableError, "connect", False),
        (httpx.ReadTimeout("read timed out"), ProviderTimeout, "timeout", True),
        (httpx.WriteTimeout("write timed out"), ProviderTimeout, "timeout", True),
        (
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            RetryableError,
            "connection_reset",
            True,
        ),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), RetryableError, "connection_reset", True),
        (
            httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'"),
            FatalError,
            "bad_config",
            False,
        ),
    ],
)
def test_transport_failures(raised, cls, error_class, sent):
    with pytest.raises(ProviderError) as info:
        call("openai", "gpt-4o-mini", request(), Recorder(raises=raised))
    exc = info.value
    assert type(exc) is cls
    assert (exc.error_class, exc.request_sent, exc.status_code) == (error_class, sent, None)
    # The httpx exception holds the request (and its auth header): it must not ride along.
    assert exc.__cause__ is None and exc.__context__ is None


def test_overall_deadline_bounds_a_slow_response():
    with pytest.raises(ProviderTimeout) as info:
        call("openai", "gpt-4o-mini", request(), Recorder(body=fixture("groq_no_details.json"), delay=2), timeout=0.05)
    assert info.value.request_sent is True
    assert "0.05s" in str(info.value)


@pytest.mark.parametrize(
    "provider,model,body",
    [
        ("openai", "gpt-4o-mini", "upstream connect error or disconnect/reset before headers"),
        ("openai", "gpt-4o-mini", '{"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assis'),
        ("openai", "gpt-4o-mini", '[{"id": "x"}]'),
        (
            "openai",
            "gpt-4o-mini",
            '{"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}',
        ),
        ("openai", "gpt-4o-mini", '{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'),
        ("openai", "gpt-4o-mini", '{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "many"}}'),
        (
            "anthropic",
            "claude-3-5-haiku-20241022",
            '{"content": [{"type": "text", "text": "hi"}], "usage": {"output_tokens": 3}}',
        ),
        ("gemini", "gemini-2.0-flash", '{"usageMetadata": {"promptTokenCount": 3}}'),
        ("gemini", "gemini-2.0-flash", ""),
    ],
)
def test_malformed_success_bodies_are_retryable(provider, model, body):
    with pytest.raises(RetryableError) as info:
        call(provider, model, request(), Recorder(200, body))
    assert info.value.error_class == "malformed_response"
    assert info.value.status_code == 200


# --- Keys never leak ---------------------------------------------------------------------------------------------


def _leaks(exc: BaseException, key: str) -> bool:
    rendered = "".join(traceback.format_exception(exc)) + str(exc) + repr(exc) + repr(exc.args)
    return key in rendered


def test_redact_scrubs_known_key_and_credential_shapes():
    text = (
        f"key {FAKE_KEY} Authorization: Bearer abc.def-ghi x-api-key: sk-ant-api03-XYZxyz123456 "
        "url https://h.test/v1?key=AIzaSyA1234567890abcdefghijklmnopqrstu&alt=sse gsk_abcdefghijklmnop"
    )
    out = redact(text, (FAKE_KEY,))
    for secret in (FAKE_KEY, "abc.def-ghi", "sk-ant-api03", "AIzaSyA1234567890", "gsk_abcdefghijklmnop"):
        assert secret not in out
    assert "Bearer [REDACTED]" in out and "key=[REDACTED]" in out and "&alt=sse" in out
    assert redact("the prompt is too long: 5 tokens > 4 maximum") == "the prompt is too long: 5 tokens > 4 maximum"


def test_key_echoed_by_provider_is_redacted():
    with pytest.raises(FatalError) as info:
        call("openai", "gpt-4o-mini", request(), Recorder(401, fixture("openai_error_invalid_api_key.json")))
    assert REDACTED in str(info.value)
    assert not _leaks(info.value, FAKE_KEY)


def test_unusual_key_in_any_error_path_is_redacted():
    key = "plainKeyWithoutPrefix42"  # matches no pattern: only the verbatim scrub can catch it
    env = {"OPENAI_API_KEY": key}
    paths = [
        Recorder(500, f'{{"error": {{"message": "upstream rejected {key}"}}}}'),
        Recorder(200, f"not json but echoes {key}"),
        Recorder(raises=httpx.ConnectError(f"proxy said: bad credential {key}")),
    ]
    for rec in paths:
        with pytest.raises(ProviderError) as info:
            call("openai", "gpt-4o-mini", request(), rec, env=env)
        assert not _leaks(info.value, key), info.value


def test_adapter_repr_has_no_key():
    adapter = build_adapters(CATALOG, httpx.AsyncClient(), env=ENV)["openai"]
    assert FAKE_KEY not in repr(adapter) and FAKE_KEY not in str(adapter)


def test_missing_key_fails_before_sending_and_names_the_variable():
    rec = Recorder(body=fixture("openai_gpt4o_mini_cached.json"))
    with pytest.raises(FatalError) as info:
        call("openai", "gpt-4o-mini", request(), rec, env={})
    assert info.value.error_class == "auth" and info.value.request_sent is False
    assert "OPENAI_API_KEY" in str(info.value)
    assert rec.requests == []


# --- Wiring: build_adapters, available_credentials --------------------------------------------------------------


def test_build_adapters_picks_the_class_per_api():
    adapters = build_adapters(CATALOG, httpx.AsyncClient(), env=ENV)
    assert set(adapters) == set(CATALOG.providers)
    assert isinstance(adapters["openai"], OpenAIAdapter) and isinstance(adapters["groq"], OpenAIAdapter)
    assert isinstance(adapters["anthropic"], AnthropicAdapter)
    assert isinstance(adapters["gemini"], GeminiAdapter)


@pytest.mark.parametrize(
    "provider,model,fixture_name,path",
    [
        ("openai", "gpt-4o-mini", "openai_gpt4o_mini_cached.json", "/v1/chat/completions"),
        ("groq", "llama-3.1-8b-instant", "groq_no_details.json", "/v1/chat/completions"),
        ("anthropic", "claude-3-5-haiku-20241022", "anthropic_message_cached.json", "/v1/messages"),
        ("gemini", "gemini-2.0-flash", "gemini_response_plain.json", "/v1beta/models/gemini-2.0-flash:generateContent"),
    ],
)
def test_simulator_mode_sends_every_provider_to_its_usual_path(provider, model, fixture_name, path):
    rec = Recorder(body=fixture(fixture_name))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(rec)) as client:
            adapters = build_adapters(CATALOG, client, simulator_url="http://127.0.0.1:8765/", env={})
            return await adapters[provider].complete(CATALOG.get(f"{provider}/{model}"), request(), timeout=5)

    asyncio.run(go())
    assert str(rec.requests[0].url) == f"http://127.0.0.1:8765{path}"
    assert "sim-key" in " ".join(rec.requests[0].headers.values())


def test_keyless_provider_sends_no_auth_header():
    catalog = CATALOG.with_overrides(
        providers={"vllm": {"api": "openai", "base_url": "http://gpu.test:8000/v1", "key_env": None}},
        models={
            "vllm/llama": {
                "api": "openai",
                "tier": "standard",
                "input_per_mtok": "0",
                "output_per_mtok": "0",
                "context_window": 8192,
                "max_output_tokens": 1024,
            }
        },
    )
    rec = Recorder(body=fixture("groq_no_details.json"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(rec)) as client:
            return await build_adapters(catalog, client, env={})["vllm"].complete(
                catalog.get("vllm/llama"), request(), timeout=5
            )

    assert asyncio.run(go()).usage.output_tokens == 556
    assert str(rec.requests[0].url) == "http://gpu.test:8000/v1/chat/completions"
    assert "authorization" not in rec.requests[0].headers
    assert "vllm" in available_credentials(catalog, simulate=False, env={})


def test_available_credentials():
    assert available_credentials(CATALOG, simulate=False, env={}) == set()
    assert available_credentials(CATALOG, simulate=False, env={"OPENAI_API_KEY": "x", "GROQ_API_KEY": " "}) == {
        "openai"
    }
    assert available_credentials(CATALOG, simulate=True, env={}) == set(CATALOG.providers)


def test_untranslatable_request_fails_without_a_call():
    rec = Recorder(body=fixture("gemini_response_plain.json"))
    req = request(messages=[{"role": "user", "content": None}])
    with pytest.raises(FatalError) as info:
        call("gemini", "gemini-2.0-flash", req, rec)
    assert (info.value.error_class, info.value.request_sent) == ("bad_request", False)
    assert rec.requests == []


def test_public_names_are_exported():
    import llmbatch.providers as providers

    assert all(hasattr(providers, name) for name in providers.__all__)


def test_usage_without_token_counts_is_malformed_not_free():
    """A usage object missing its required counts must never price a call at $0."""
    from llmbatch.providers import gemini as gemini_mod, openai as openai_mod

    with pytest.raises(KeyError):
        openai_mod.parse_usage({"total_tokens": 10})
    with pytest.raises(KeyError):
        gemini_mod.parse_usage({"totalTokenCount": 10})
    # Gemini leaves out zero-valued counts: only the prompt count is required.
    assert gemini_mod.parse_usage({"promptTokenCount": 7}).input_tokens == 7
