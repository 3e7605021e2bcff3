"""The simulator's batch APIs and flex tier, driven by the official SDKs (openai, anthropic, google-genai):
their batch methods must parse what the simulator answers. Also turnaround, expiry, cancellation (finished
lines kept), the line failure rate and the counters tests rely on."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest

from llmbatch.simulator import SimulatorConfig, SimulatorThread


@pytest.fixture(scope="module")
def _server():
    with SimulatorThread() as sim:
        yield sim


@pytest.fixture
def sim(_server):
    _server.configure(**{**SimulatorConfig().to_dict(), "batch_turnaround_s": 0.0})
    _server.reset()
    return _server


def counters(sim) -> dict:
    return httpx.get(f"{sim.url}/_sim/batches").json()


def openai_client(sim):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="sk-sim", max_retries=0)


def _jsonl(n: int, model: str = "gpt-4o-mini") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": f"Say hello {i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def test_openai_sdk_batch_round_trip(sim):
    client = openai_client(sim)
    before = counters(sim)["created"].get("openai", 0)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(5))), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes > 0
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"llmbatch_tag": "job-1:g0"},
    )
    assert b.metadata == {"llmbatch_tag": "job-1:g0"}
    got = client.batches.retrieve(b.id)
    assert got.status == "completed" and got.request_counts.total == 5 and got.request_counts.completed == 5
    lines = [json.loads(x) for x in client.files.content(got.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"r{i}" for i in range(5)]
    body = lines[0]["response"]["body"]
    assert lines[0]["response"]["status_code"] == 200 and body["usage"]["prompt_tokens"] > 0
    assert got.error_file_id is None
    listed = client.batches.list(limit=10)
    assert b.id in [x.id for x in listed.data]
    assert counters(sim)["created"]["openai"] == before + 1


def test_openai_turnaround_cancel_keeps_finished_lines(sim):
    sim.configure(batch_turnaround_s=2.0)
    client = openai_client(sim)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(10))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(b.id).status in ("validating", "in_progress")
    time.sleep(1.1)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelled"
    done = c.request_counts.completed
    assert 4 <= done <= 7, done  # about half had finished: they are in the output file (billed)
    out = client.files.content(c.output_file_id).text.splitlines()
    errs = [json.loads(x) for x in client.files.content(c.error_file_id).text.splitlines()]
    assert len(out) == done and len(errs) == 10 - done
    assert {e["error"]["code"] for e in errs} == {"batch_cancelled"}
    assert counters(sim)["cancelled"]["openai"] >= 1


def test_openai_never_finishing_batch_expires(sim):
    sim.configure(batch_turnaround_s=-1.0, batch_expiry_s=0.3)
    client = openai_client(sim)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(3))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(b.id).status in ("validating", "in_progress")
    time.sleep(0.4)
    got = client.batches.retrieve(b.id)
    assert got.status == "expired" and got.output_file_id is None
    errs = [json.loads(x) for x in client.files.content(got.error_file_id).text.splitlines()]
    assert [e["error"]["code"] for e in errs] == ["batch_expired"] * 3


def test_openai_batch_fail_rate(sim):
    sim.configure(batch_fail_rate=1.0)
    client = openai_client(sim)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(3))), purpose="batch")
    got = client.batches.retrieve(
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert got.status == "completed" and got.request_counts.failed == 3
    errs = [json.loads(x) for x in client.files.content(got.error_file_id).text.splitlines()]
    assert {e["response"]["status_code"] for e in errs} == {500}


def test_openai_flex_tier(sim):
    client = openai_client(sim)
    openai = pytest.importorskip("openai")
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], service_tier="flex"
    )
    assert r.service_tier == "flex" and r.usage.prompt_tokens > 0
    sim.configure(flex_unavailable=1.0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], service_tier="flex"
        )
    assert e.value.code == "resource_unavailable"
    # the standard tier is unaffected
    assert (
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).service_tier
        == "default"
    )
    assert counters(sim)["flex"] == {"served": 1, "unavailable": 1}


def test_anthropic_sdk_messages_and_a_raw_x_api_key(sim):
    """The official SDK (2.x) sends its key as a bearer token; curl and older SDKs send x-api-key. Both are keys."""
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-sim", max_retries=0)
    m = client.messages.create(
        model="claude-3-5-haiku-20241022", max_tokens=20, messages=[{"role": "user", "content": "hello"}]
    )
    assert m.content[0].text and m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    body = b'{"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    ok = httpx.post(f"{sim.url}/v1/messages", content=body, headers={**headers, "x-api-key": "sk-ant-sim"})
    assert ok.status_code == 200, ok.text
    missing = httpx.post(f"{sim.url}/v1/messages", content=body, headers=headers)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"


def test_anthropic_sdk_message_batches(sim):
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-sim", max_retries=0)
    reqs = [
        {
            "custom_id": f"a{i}",
            "params": {
                "model": "claude-3-5-haiku-20241022",
                "max_tokens": 30,
                "messages": [{"role": "user", "content": f"hello {i}"}],
            },
        }
        for i in range(4)
    ]
    b = client.messages.batches.create(requests=reqs)
    assert b.id.startswith("msgbatch_")
    got = client.messages.batches.retrieve(b.id)
    assert got.processing_status == "ended" and got.request_counts.succeeded == 4
    results = list(client.messages.batches.results(b.id))
    assert sorted(r.custom_id for r in results) == [f"a{i}" for i in range(4)]
    assert results[0].result.type == "succeeded" and results[0].result.message.usage.input_tokens > 0
    assert b.id in [x.id for x in client.messages.batches.list(limit=20).data]

    sim.configure(batch_turnaround_s=-1.0)
    b2 = client.messages.batches.create(requests=reqs)
    assert client.messages.batches.retrieve(b2.id).processing_status == "in_progress"
    c = client.messages.batches.cancel(b2.id)
    assert c.processing_status == "ended" and c.request_counts.canceled == 4
    assert {r.result.type for r in client.messages.batches.results(b2.id)} == {"canceled"}


def test_gemini_sdk_inline_batch(sim):
    genai = pytest.importorskip("google.genai")
    client = genai.Client(api_key="AIza-sim", http_options={"base_url": sim.url, "api_version": "v1beta"})
    src = [{"contents": [{"role": "user", "parts": [{"text": f"hello {i}"}]}]} for i in range(3)]
    job = client.batches.create(model="gemini-2.0-flash", src=src, config={"display_name": "job-1:g0"})
    assert job.name.startswith("batches/") and job.display_name == "job-1:g0"
    got = client.batches.get(name=job.name)
    assert got.state.name == "JOB_STATE_SUCCEEDED"
    responses = got.dest.inlined_responses
    assert len(responses) == 3 and responses[0].response.usage_metadata.prompt_token_count > 0
    assert job.name in [j.name for j in client.batches.list()]

    sim.configure(batch_turnaround_s=-1.0)
    job2 = client.batches.create(model="gemini-2.0-flash", src=src)
    client.batches.cancel(name=job2.name)
    assert client.batches.get(name=job2.name).state.name == "JOB_STATE_CANCELLED"
    assert counters(sim)["created"]["gemini"] == 2
