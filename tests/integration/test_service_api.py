"""`llmbatch serve` driven by the official openai SDK, unchanged except base_url and api_key."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import openai
import pytest
from openai.types import Batch, BatchError, FileObject
from openai.types.chat import ChatCompletion

from llmbatch.service.dashboard import money
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from tests.support.ci import unavailable
from tests.integration.service_helpers import ServiceProcess, batch_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One server for the module (it takes seconds to start); tests tell their batches apart by id."""
    with SimulatorThread(SimulatorConfig(latency_s=0.25, error_rate=0.0)) as sim:
        svc = ServiceProcess(tmp_path_factory.mktemp("service"), simulator_url=sim.url).start()
        try:
            yield svc
        finally:
            svc.stop()


def _client(svc, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.url + "/v1", api_key=key, max_retries=0)


def wait_batch(client, batch_id: str, statuses=("completed", "failed", "cancelled", "expired"), timeout=90) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {b.status}")


def test_sdk_upload_create_poll_download(service, tmp_path):
    client = _client(service)
    path = tmp_path / "in.jsonl"
    path.write_bytes(batch_lines(6) + batch_lines(2, model="auto", prefix="auto"))
    f = client.files.create(file=path.open("rb"), purpose="batch")
    assert isinstance(f, FileObject) and f.purpose == "batch" and f.bytes == path.stat().st_size
    assert client.files.retrieve(f.id).id == f.id
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "support"}
    )
    assert b.status in ("validating", "in_progress") and b.metadata == {"team": "support"}
    b = wait_batch(client, b.id)
    assert b.status == "completed", b
    assert b.request_counts.total == 8 and b.request_counts.completed == 8 and b.request_counts.failed == 0
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.output_file_id and b.error_file_id is None
    assert b.usage.input_tokens > 0 and b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens
    lines = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted([f"r-{i}" for i in range(6)] + ["auto-0", "auto-1"])
    models = {}
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.usage.total_tokens > 0
        assert completion.choices[0].message.content
        models[line["custom_id"]] = completion.model
    assert {models[f"r-{i}"] for i in range(6)} == {"gpt-4o-mini"}  # body.model honoured
    # "auto" went to the cheapest eligible model, which is not the one written on the other lines
    assert models["auto-0"] != "auto" and models["auto-0"] == models["auto-1"]
    ids = [m.id for m in client.models.list()]
    assert "openai/gpt-4o-mini" in ids and len(ids) > 5


def test_cancel_and_list_pagination(service, tmp_path):
    client = _client(service)
    path = tmp_path / "in.jsonl"
    path.write_bytes(batch_lines(400))
    f = client.files.create(file=path.open("rb"), purpose="batch")
    big = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_batch(client, big.id, statuses=("in_progress",))
    cancelling = client.batches.cancel(big.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, big.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert done.request_counts.completed < 400 and done.request_counts.failed > 0
    if done.output_file_id:  # what finished before the cancel is delivered (and billed)
        assert len(client.files.content(done.output_file_id).text.splitlines()) == done.request_counts.completed

    small = tmp_path / "small.jsonl"
    small.write_bytes(batch_lines(1))
    f2 = client.files.create(file=small.open("rb"), purpose="batch")
    made = [big.id] + [
        client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(4)
    ]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    seen = [b.id for b in client.batches.list(limit=2)]  # the SDK's auto-pagination walks `after`
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))  # newest first, no repeats
    assert [b for b in seen if b in made] == sorted(made, reverse=True)
    page = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in page.data] == seen[2:4]


def test_errors_have_openai_shape(service, tmp_path):
    client = _client(service)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(batch_lines(2) + b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}\n')
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=bad.open("rb"), purpose="batch")
    assert "line 3" in e.value.message and e.value.code == "invalid_file"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    good = tmp_path / "good.jsonl"
    good.write_bytes(batch_lines(1))
    f = client.files.create(file=good.open("rb"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert e.value.param == "endpoint"
    r = httpx.post(service.url + "/v1/batches", content=b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    err = BatchError.model_validate({"code": "x", "message": "y"})  # the SDK type our batch.errors carry
    assert err.code == "x"


def _all_batches_ended(client) -> list[Batch]:
    deadline = time.monotonic() + 90
    while True:
        batches = list(client.batches.list(limit=100))
        if all(b.status in ("completed", "failed", "cancelled", "expired") for b in batches):
            return batches
        assert time.monotonic() < deadline, [b.status for b in batches]
        time.sleep(0.2)


def _finished_job(service, tmp_path) -> str:
    client = _client(service)
    path = tmp_path / "in.jsonl"
    path.write_bytes(batch_lines(5, prefix="dash") + batch_lines(3, model="auto", prefix="dash-auto"))
    f = client.files.create(file=path.open("rb"), purpose="batch")
    b = wait_batch(
        client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert b.status == "completed"
    return b.model_extra["llmbatch_job_id"]


def test_metrics_parse_and_spend_equals_report(service, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    _finished_job(service, tmp_path)
    job_ids = {b.model_extra["llmbatch_job_id"] for b in _all_batches_ended(_client(service))} - {None}
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(service.url + "/metrics").text)}
    spend = families["llmbatch_spend_usd"].samples
    by_model: dict[str, float] = {}
    for s in spend:
        if s.name == "llmbatch_spend_usd_total":
            by_model[s.labels["model"]] = by_model.get(s.labels["model"], 0) + s.value
    reports = [service.cli_json("report", job_id, "--json") for job_id in job_ids]  # every job of this store
    assert len(reports) >= 3
    total_report = sum(r["spent_usd"] for r in reports)
    assert total_report > 0 and round(sum(by_model.values()), 6) == round(total_report, 6)
    report_by_model: dict[str, float] = {}
    for r in reports:
        for m in r["by_model"]:
            report_by_model[m["model"]] = report_by_model.get(m["model"], 0) + m["cost_usd"]
    assert {k: round(v, 6) for k, v in by_model.items()} == {k: round(v, 6) for k, v in report_by_model.items()}
    assert all(s.value == 0 for s in families["llmbatch_reserved_usd"].samples)  # everything settled
    tasks = {s.labels["status"]: s.value for s in families["llmbatch_tasks"].samples}
    assert tasks["succeeded"] > 0 and tasks.get("cancelled", 0) > 0
    assert sum(tasks.values()) == sum(r["counts"]["total"] for r in reports)
    assert any(
        s.name == "llmbatch_attempts_total" and s.labels["error_class"] == "none"
        for s in families["llmbatch_attempts"].samples
    )
    latency = [s for s in families["llmbatch_provider_latency_seconds"].samples if s.name.endswith("_count")]
    assert latency and sum(s.value for s in latency) > 0
    assert "store_tasks" in {s.labels["queue"] for s in families["llmbatch_queue_depth"].samples}


def test_dashboard_in_headless_chromium(service, tmp_path):
    job_id = _finished_job(service, tmp_path)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("chromium", "install it with `apt-get install -y chromium` (.ci/run does)")
    report = service.cli_json("report", job_id, "--json")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    run = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{service.url}/dashboard/jobs/{job_id}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = run.stdout
    assert run.returncode == 0 and dom, run.stderr[-2000:]
    assert f'<span id="job-id">{job_id}</span>' in dom
    assert f'<span id="job-spent">{money(report["spent_picos"])}</span>' in dom
    # Frappe Charts drew SVG charts in the browser (the page itself ships only their data)
    assert dom.count('class="frappe-chart chart"') >= 3, dom[:3000]
    assert "<path" in dom or "<rect" in dom
    listing = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            f"{service.url}/dashboard",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f'href="/dashboard/jobs/{job_id}"' in listing


def test_a_restarted_server_finishes_its_batches(tmp_path):
    """The server stops mid-batch (its job threads die with it); started again, it resumes the job: every
    line ends up in the output exactly once."""
    with SimulatorThread(SimulatorConfig(latency_s=0.1, error_rate=0.0)) as sim:
        svc = ServiceProcess(
            tmp_path, simulator_url=sim.url, extra_env={"LLMBATCH_LEASE_SECONDS": "2", "LLMBATCH_CONCURRENCY": "8"}
        ).start()
        try:
            client = _client(svc)
            path = tmp_path / "in.jsonl"
            path.write_bytes(batch_lines(120))
            f = client.files.create(file=path.open("rb"), purpose="batch")
            b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            deadline = time.monotonic() + 60
            while client.batches.retrieve(b.id).request_counts.completed < 10:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            svc.stop()
            svc.start()
            client = _client(svc)
            assert client.batches.retrieve(b.id).request_counts.completed < 120  # stopped mid-way indeed
            done = wait_batch(client, b.id, timeout=120)
            assert done.status == "completed" and done.request_counts.completed == 120
            ids = [json.loads(x)["custom_id"] for x in client.files.content(done.output_file_id).text.splitlines()]
            assert sorted(ids) == sorted(f"r-{i}" for i in range(120))
        finally:
            svc.stop()
