"""The simulator over real HTTP: each API's shapes, the real APIs' rejections, limits and injected failures."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import pytest

from llmbatch.models import TaskLine
from llmbatch.prompts import build_request
from llmbatch.simulator import SimulatorConfig, SimulatorThread

OPENAI_KEY = {"Authorization": "Bearer sk-sim-SECRET-abc123"}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-SECRET-abc123", "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": "AIza-SECRET-abc123"}
SECRETS = ("SECRET-abc123",)
LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(scope="module")
def _server():
    with SimulatorThread() as sim:
        yield sim


@pytest.fixture
def sim(_server):
    """The shared server, back to default settings with empty stats and caches."""
    _server.configure(**SimulatorConfig().to_dict())
    _server.reset()
    return _server


@pytest.fixture
def client(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def chat(client, model="gpt-4o-mini", messages=None, headers=OPENAI_KEY, **params):
    body = {"model": model, "messages": messages or [{"role": "user", "content": "Hello there"}], **params}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def messages(client, model="claude-3-5-haiku-20241022", msgs=None, headers=ANTHROPIC_HEADERS, **params):
    body = {"model": model, "messages": msgs or [{"role": "user", "content": "Hello there"}], **params}
    return client.post("/v1/messages", json=body, headers=headers)


def gemini(client, model="gemini-2.0-flash", contents=None, headers=GEMINI_HEADERS, params=None, **body):
    body = {"contents": contents or [{"role": "user", "parts": [{"text": "Hello there"}]}], **body}
    return client.post(f"/v1beta/models/{model}:generateContent", json=body, headers=headers, params=params)


def classify_messages(text: str, labels=LABELS) -> list[dict]:
    return build_request(TaskLine(id="t", task="classify", input=text, labels=labels)).messages


def assert_no_secret(resp: httpx.Response) -> None:
    blob = resp.text + json.dumps(dict(resp.headers))
    for secret in SECRETS:
        assert secret not in blob


# --- OpenAI -----------------------------------------------------------------------------------------


def test_openai_success_shape_usage_and_headers(client):
    r = chat(client, max_tokens=50)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert r.headers["x-request-id"].startswith("req_")
    for h in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"):
        assert h in r.headers
    assert_no_secret(r)


def test_openai_classify_uses_allowed_labels_and_sentiment(client):
    pos = chat(client, "gpt-4o", classify_messages("I love it, works great, best purchase ever"), max_tokens=16)
    neg = chat(client, "gpt-4o", classify_messages("Terrible. It broke after a day, total waste"), max_tokens=16)
    assert pos.json()["choices"][0]["message"]["content"] == "positive"
    assert neg.json()["choices"][0]["message"]["content"] == "negative"


def test_frontier_classify_always_in_label_set(client):
    labels = ["billing", "shipping", "technical", "other"]
    for i in range(30):
        r = chat(client, "gpt-4o", classify_messages(f"ticket {i}: something about order #{i * 7}", labels))
        assert r.json()["choices"][0]["message"]["content"] in labels


def test_outputs_are_deterministic(client):
    msgs = [{"role": "user", "content": "Explain how tides work in two sentences."}]
    a, b = chat(client, messages=msgs).json(), chat(client, messages=msgs).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"]["completion_tokens"] == b["usage"]["completion_tokens"]
    assert a["id"] != b["id"]


def test_max_tokens_truncates_with_finish_reason_length(client):
    r = chat(
        client, messages=[{"role": "user", "content": "Tell me a long story about " + "dragons " * 20}], max_tokens=3
    )
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 3


def test_max_tokens_above_model_limit_is_rejected(client):
    r = chat(client, "gpt-4o-mini", max_tokens=16385)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize("model", ["o1-mini", "o1-preview"])
@pytest.mark.parametrize("role", ["system", "developer"])
def test_legacy_o1_rejects_system_and_developer_roles(client, model, role):
    r = chat(client, model, [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unsupported_value"
    assert err["param"] == "messages[0].role"
    assert err["type"] == "invalid_request_error"
    assert f"does not support '{role}' with this model" in err["message"]


def test_o3_mini_accepts_developer_role(client):
    r = chat(
        client,
        "o3-mini",
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_completion_tokens=5000,
    )
    assert r.status_code == 200


@pytest.mark.parametrize("model", ["o1-mini", "o1-preview", "o3-mini"])
def test_o_series_rejects_max_tokens(client, model):
    r = chat(client, model, max_tokens=100)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unsupported_parameter" and err["param"] == "max_tokens"
    assert "Use 'max_completion_tokens' instead" in err["message"]


def test_o_series_rejects_temperature_other_than_one(client):
    r = chat(client, "o3-mini", temperature=0.0)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_value" and r.json()["error"]["param"] == "temperature"
    assert chat(client, "o3-mini", temperature=1, max_completion_tokens=5000).status_code == 200


def test_legacy_o1_rejects_response_format(client):
    r = chat(client, "o1-mini", response_format={"type": "json_object"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format"


def test_o1_small_completion_cap_gives_empty_content(client):
    r = chat(client, "o1-mini", max_completion_tokens=50)
    body = r.json()
    assert r.status_code == 200
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 50
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 50


def test_o1_reasoning_tokens_counted_inside_completion(client):
    # The o1 adapter merges the system text into the user message; the simulator still finds the labels.
    merged = classify_messages("I love it, works great")
    user = {"role": "user", "content": merged[0]["content"] + "\n\n" + merged[1]["content"]}
    body = chat(client, "o1-mini", [user], max_completion_tokens=4096).json()
    usage = body["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 200 <= reasoning <= 2000
    assert usage["completion_tokens"] > reasoning
    assert body["choices"][0]["message"]["content"] == "positive"


def test_openai_cached_tokens_on_repeated_long_prefix(client):
    system = "You are a meticulous assistant. " * 200  # ~1600 tokens
    first = chat(client, "gpt-4o-mini", [{"role": "system", "content": system}, {"role": "user", "content": "a"}])
    second = chat(client, "gpt-4o-mini", [{"role": "system", "content": system}, {"role": "user", "content": "b"}])
    short = chat(client, "gpt-4o-mini", [{"role": "user", "content": "a"}])
    assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    usage = second.json()["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 1024 and cached % 128 == 0 and cached <= usage["prompt_tokens"]
    assert (
        chat(client, "gpt-4o-mini", [{"role": "user", "content": "a"}]).json()["usage"]["prompt_tokens_details"][
            "cached_tokens"
        ]
        == 0
    )
    assert short.status_code == 200


def test_openai_context_overflow(client):
    text = "word " * 110_000  # ~137k tokens > gpt-4o's 128k window
    r = chat(client, "gpt-4o", [{"role": "user", "content": text}])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # Prompt fits, but prompt + requested output does not.
    fits = "word " * 96_000  # ~120k tokens
    assert chat(client, "gpt-4o", [{"role": "user", "content": fits}]).status_code == 200
    r = chat(client, "gpt-4o", [{"role": "user", "content": fits}], max_tokens=16_000)
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_openai_vision_rejected_for_text_only_model(client):
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    r = chat(client, "llama-3.1-8b-instant", [{"role": "user", "content": parts}])
    assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]
    ok = chat(client, "gpt-4o", [{"role": "user", "content": parts}])
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] > 765


def test_openai_structured_output_is_valid_json(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = chat(
        client,
        "gpt-4o",
        [{"role": "user", "content": "Paris has a population of 2100000 people."}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    )
    out = json.loads(r.json()["choices"][0]["message"]["content"])
    jsonschema.validate(out, schema)
    assert out["population"] == 2100000


def test_catalog_models_from_openai_compatible_providers_are_known(client):
    for model in ("llama-3.1-8b-instant", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "mistral-small-latest"):
        assert chat(client, model).status_code == 200


# --- Anthropic --------------------------------------------------------------------------------------


def test_anthropic_success_shape(client):
    r = messages(client, system="Be terse.", max_tokens=100)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"]
    assert body["stop_reason"] == "end_turn"
    assert set(body["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    assert r.headers["request-id"].startswith("req_")
    assert_no_secret(r)


def test_anthropic_requires_max_tokens(client):
    r = messages(client)
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_anthropic_rejects_system_role_message(client):
    r = messages(client, msgs=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}], max_tokens=10)
    assert r.status_code == 400 and "system" in r.json()["error"]["message"]


def test_anthropic_requires_version_header(client):
    r = messages(client, headers={"x-api-key": "k"}, max_tokens=10)
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]


def test_anthropic_max_tokens_stop_reason(client):
    r = messages(client, msgs=[{"role": "user", "content": "Tell me everything about " + "rivers " * 30}], max_tokens=2)
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["usage"]["output_tokens"] <= 2


def test_anthropic_cache_write_then_read(client):
    system = [{"type": "text", "text": "Long shared instructions. " * 100, "cache_control": {"type": "ephemeral"}}]
    first = messages(client, system=system, max_tokens=50).json()["usage"]
    second = messages(
        client, system=system, max_tokens=50, msgs=[{"role": "user", "content": "A different question"}]
    ).json()["usage"]
    assert first["cache_creation_input_tokens"] > 600 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    # input_tokens excludes both kinds of cache token.
    plain = messages(client, system=system[0]["text"], max_tokens=50).json()["usage"]
    assert first["input_tokens"] + first["cache_creation_input_tokens"] == plain["input_tokens"]


def test_anthropic_image_rejected_for_text_only_model(client):
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    msgs = [{"role": "user", "content": [block, {"type": "text", "text": "describe"}]}]
    assert messages(client, "claude-3-5-haiku-20241022", msgs, max_tokens=10).status_code == 400
    assert messages(client, "claude-sonnet-4-20250514", msgs, max_tokens=10).status_code == 200


def test_anthropic_prompt_too_long(client):
    r = messages(client, msgs=[{"role": "user", "content": "word " * 170_000}], max_tokens=10)
    assert r.status_code == 400 and "prompt is too long" in r.json()["error"]["message"]


def test_anthropic_overloaded_is_529(sim, client):
    sim.configure(error_rate=1.0)
    seen = {}
    for _ in range(40):
        r = messages(client, max_tokens=10)
        seen[r.status_code] = r.json()
    assert set(seen) <= {429, 500, 529}
    assert seen[529] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": seen[529]["request_id"],
    }
    assert seen[429]["error"]["type"] == "rate_limit_error"


# --- Gemini -----------------------------------------------------------------------------------------


def test_gemini_success_shape_and_usage_metadata(client):
    r = gemini(client, systemInstruction={"parts": [{"text": "Be kind."}]})
    assert r.status_code == 200
    body = r.json()
    cand = body["candidates"][0]
    assert cand["content"]["role"] == "model" and cand["content"]["parts"][0]["text"]
    assert cand["finishReason"] == "STOP"
    usage = body["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert "thoughtsTokenCount" not in usage and "cachedContentTokenCount" not in usage
    assert body["modelVersion"] == "gemini-2.0-flash"
    assert_no_secret(r)


def test_gemini_key_in_query_is_accepted_and_never_echoed(client):
    r = gemini(client, headers={}, params={"key": "AIza-SECRET-abc123"})
    assert r.status_code == 200
    assert_no_secret(r)


def test_gemini_max_output_tokens(client):
    r = gemini(
        client,
        contents=[{"role": "user", "parts": [{"text": "Describe " + "mountains " * 30}]}],
        generationConfig={"maxOutputTokens": 3},
    )
    body = r.json()
    assert body["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert body["usageMetadata"]["candidatesTokenCount"] <= 3


def test_gemini_thinking_model_reports_thoughts(sim, client):
    sim.configure(extra_models={"gemini-2.5-flash": "mini"})
    usage = gemini(client, "gemini-2.5-flash", generationConfig={"maxOutputTokens": 8000}).json()["usageMetadata"]
    assert 200 <= usage["thoughtsTokenCount"] <= 2000
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )


def test_gemini_response_schema(client):
    schema = {
        "type": "OBJECT",
        "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}},
        "required": ["name", "age"],
    }
    r = gemini(
        client,
        contents=[{"role": "user", "parts": [{"text": "Alice Walker is 31 years old."}]}],
        generationConfig={"responseMimeType": "application/json", "responseSchema": schema},
    )
    out = json.loads(r.json()["candidates"][0]["content"]["parts"][0]["text"])
    assert out == {"name": "Alice Walker", "age": 31}


def test_gemini_rejects_bad_role_and_image_on_text_model(sim, client):
    r = gemini(client, contents=[{"role": "assistant", "parts": [{"text": "x"}]}])
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    sim.configure(extra_models={})
    img = [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}]
    assert gemini(client, contents=img).status_code == 200  # gemini-2.0-flash has vision


def test_gemini_429_error_shape(sim, client):
    sim.configure(rpm=1)
    assert gemini(client).status_code == 200
    r = gemini(client)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == 429 and err["status"] == "RESOURCE_EXHAUSTED"
    assert err["details"][0]["retryDelay"].endswith("s")


# --- shared behaviour -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_header", [{}, {"Authorization": "Bearer"}, {"Authorization": ""}, {"Authorization": "Basic abc"}]
)
def test_openai_401_without_key(client, key_header):
    r = chat(client, headers=key_header)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_and_gemini_401_without_key(client):
    r = messages(client, headers={"anthropic-version": "2023-06-01", "x-api-key": ""}, max_tokens=5)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = gemini(client, headers={})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


def test_unknown_model_404_in_each_shape(client):
    r = chat(client, "gpt-nope")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `gpt-nope` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    r = messages(client, "claude-nope", max_tokens=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = gemini(client, "gemini-nope")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    # A catalog model is only served on its own provider's API.
    assert chat(client, "claude-3-5-haiku-20241022").status_code == 404


def test_extra_models_are_served(sim, client):
    sim.configure(extra_models={"my-local-llm": "standard"})
    assert chat(client, "my-local-llm").status_code == 200
    assert messages(client, "my-local-llm", max_tokens=5).status_code == 200


def test_forced_label_error_via_override(sim, client):
    sim.configure(model_overrides={"gpt-4o-mini": {"label_error_rate": 1.0}})
    r = chat(client, "gpt-4o-mini", classify_messages("I love it"), max_tokens=16)
    assert r.json()["choices"][0]["message"]["content"] not in LABELS
    assert (
        chat(client, "gpt-4o", classify_messages("I love it"), max_tokens=16).json()["choices"][0]["message"]["content"]
        == "positive"
    )


def test_forced_json_error_via_override(sim, client):
    sim.configure(model_overrides={"gpt-4o-mini": {"json_error_rate": 1.0}})
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    msgs = build_request(TaskLine(id="x", task="extract", input="a is b", schema=schema)).messages
    text = chat(client, "gpt-4o-mini", msgs).json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(text)


def test_error_rate_injects_about_that_fraction(sim, client):
    sim.configure(error_rate=0.3, seed=7, retry_after_s=0.25)
    statuses = [chat(client).status_code for _ in range(300)]
    failed = [s for s in statuses if s != 200]
    assert 0.2 < len(failed) / len(statuses) < 0.4
    assert {429, 500} <= set(failed) <= {429, 500, 503}
    sim.configure(error_rate=1.0)
    r = next(r for r in (chat(client) for _ in range(20)) if r.status_code == 429)
    assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "250"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert sim.stats()["by_error"]["injected"] >= 20


def test_rpm_limit_gives_429_with_accurate_retry_after(sim, client):
    sim.configure(rpm=3)
    for expected_remaining in (2, 1, 0):
        r = chat(client)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == str(expected_remaining)
    r = chat(client)
    assert r.status_code == 429
    wait = int(r.headers["retry-after"])
    assert 58 <= wait <= 61
    assert abs(float(r.headers["retry-after-ms"]) / 1000 - wait) < 1
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "RPM" in r.json()["error"]["message"]
    assert chat(client, "gpt-4o").status_code == 200  # limits are per model
    sim.configure(model_overrides={"gpt-4o": {"rpm": 1}})
    assert chat(client, "gpt-4o").status_code == 429


def test_latency_is_applied(sim, client):
    sim.configure(latency_s=0.2)
    t = time.monotonic()
    assert chat(client).status_code == 200
    assert time.monotonic() - t >= 0.19


# --- fault modes ------------------------------------------------------------------------------------


def test_fault_reset_closes_connection(sim, client):
    sim.configure(faults={"reset": 1.0})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        chat(client)


def test_fault_malformed_is_200_with_non_json(sim, client):
    sim.configure(faults={"malformed": 1.0})
    r = chat(client)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()


def test_fault_truncated_body(sim, client):
    sim.configure(faults={"truncated": 1.0})
    outcomes = set()
    for _ in range(12):
        try:
            r = chat(client)
            with pytest.raises(ValueError):
                r.json()
            outcomes.add("short_json")
        except httpx.RemoteProtocolError:
            outcomes.add("incomplete_body")
    assert outcomes == {"short_json", "incomplete_body"}


def test_fault_slow_body(sim, client):
    sim.configure(faults={"slow_body": 1.0}, slow_body_s=0.4)
    t = time.monotonic()
    r = chat(client)
    assert time.monotonic() - t >= 0.35
    assert r.json()["object"] == "chat.completion"


def test_fault_hang_until_client_times_out(sim):
    sim.configure(faults={"hang": 1.0})
    with httpx.Client(base_url=sim.url, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            chat(c)
    deadline = time.monotonic() + 2
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = sim.stats()
    assert stats["in_flight"] == 0  # the hung handler was cancelled when the client left
    assert stats["by_fault"]["hang"] == 1


def test_fault_storm429_then_recovers(sim, client):
    sim.configure(faults={"storm429": 0.5}, storm_duration_s=0.4)
    r = chat(client)
    assert r.status_code == 429
    assert 0 < float(r.headers["retry-after-ms"]) <= 400
    time.sleep(float(r.headers["retry-after-ms"]) / 1000 + 0.02)
    assert chat(client).status_code == 200
    assert sim.stats()["by_fault"]["storm429"] >= 1


def test_fault_burst5xx(sim, client):
    sim.configure(faults={"burst5xx": 1.0})
    assert {chat(client).status_code for _ in range(10)} <= {500, 503}
    sim.configure(faults={})
    assert chat(client).status_code == 200


# --- control endpoints ------------------------------------------------------------------------------


def test_control_endpoints(sim, client):
    chat(client)
    r = client.post("/_sim/config", json={"latency_s": 0.01, "faults": {"malformed": 0.5}})
    assert r.status_code == 200 and r.json()["latency_s"] == 0.01 and r.json()["error_rate"] == 0.0
    assert client.post("/_sim/config", json={"faults": {"nope": 1}}).status_code == 400
    assert client.post("/_sim/config", json={"error_rate": 2}).status_code == 400
    stats = client.get("/_sim/stats").json()
    assert stats["total"] == 1 and stats["by_status"] == {"200": 1} and stats["by_model"] == {"gpt-4o-mini": 1}
    assert "SECRET" not in json.dumps(stats)
    client.post("/_sim/reset")
    assert client.get("/_sim/stats").json()["total"] == 0


def test_summarize_respects_word_budget(client):
    text = (
        "The river flooded the valley in spring. Farmers moved their herds to higher ground. "
        "By summer the water had receded and the fields were green again. "
    ) * 3
    msgs = build_request(TaskLine(id="s", task="summarize", input=text, max_output_tokens=20)).messages
    out = chat(client, "gpt-4o", msgs, max_tokens=20).json()["choices"][0]["message"]["content"]
    budget = max(10, int(20 * 0.6))
    assert 0 < len(out.split()) <= budget
    assert out.startswith("The river flooded the valley in spring.")
