"""API tokens over HTTP: each token sees only its own files, batches and jobs (others' ids answer 404),
requests without a valid token answer 401, and a token's daily cap stops its own batches
(budget_exhausted) while another token's batch runs to the end."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import BatchError

from llmbatch.service.tokens import create_token
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store.db import get_engine
from tests.integration.service_helpers import ServiceProcess, batch_lines
from tests.integration.test_service_api import wait_batch

pytestmark = pytest.mark.integration

CAP_USD = "0.002"


@pytest.fixture
def served(tmp_path):
    with SimulatorThread(SimulatorConfig(latency_s=0.02, error_rate=0.0)) as sim:
        svc = ServiceProcess(tmp_path, simulator_url=sim.url)
        created = svc.cli("tokens", "create", "alice", "--daily-cap", CAP_USD)
        assert created.returncode == 0, created.stderr
        bob = create_token(get_engine(svc.env["LLMBATCH_DATABASE_URL"]), "bob")  # the CLI's own function
        listing = svc.cli_json("tokens", "list", "--json")
        assert [t["name"] for t in listing] == ["alice", "bob"] and listing[0]["daily_cap_usd"] == float(CAP_USD)
        assert created.stdout.strip() not in (tmp_path / "service.db").read_bytes().decode("latin-1")  # hashed
        svc.start("--host", "0.0.0.0")  # tokens exist: any interface may be served
        try:
            yield svc, created.stdout.strip(), bob
        finally:
            svc.stop()


def _client(svc, key):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key=key, max_retries=0)


def test_tokens_isolate_and_cap(served, tmp_path):
    svc, alice_key, bob_key = served
    alice, bob = _client(svc, alice_key), _client(svc, bob_key)
    path = tmp_path / "in.jsonl"
    path.write_bytes(batch_lines(40, model="gpt-4o"))
    a_file = alice.files.create(file=path.open("rb"), purpose="batch")
    a_batch = alice.batches.create(input_file_id=a_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    b_file = bob.files.create(file=path.open("rb"), purpose="batch")
    b_batch = bob.batches.create(input_file_id=b_file.id, endpoint="/v1/chat/completions", completion_window="24h")

    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(a_file.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(a_file.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(a_batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(a_batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(input_file_id=a_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [b.id for b in bob.batches.list()] == [b_batch.id]
    assert [f.id for f in bob.files.list()] == [b_file.id]
    with pytest.raises(openai.AuthenticationError):
        _client(svc, "lb-wrong").batches.list()
    assert httpx.get(svc.url + "/v1/batches").status_code == 401

    a_done, b_done = wait_batch(alice, a_batch.id), wait_batch(bob, b_batch.id)
    a_job, b_job = a_done.model_extra["llmbatch_job_id"], b_done.model_extra["llmbatch_job_id"]
    auth = {"Authorization": f"Bearer {bob_key}"}
    assert httpx.get(f"{svc.url}/v1/jobs/{a_job}", headers=auth).status_code == 404
    assert httpx.get(f"{svc.url}/dashboard/jobs/{a_job}", headers=auth).status_code == 404
    assert httpx.get(f"{svc.url}/v1/jobs/{b_job}", headers=auth).json()["status"] == "succeeded"

    # alice's cap stopped her batch; bob's ran every line
    a_status = httpx.get(f"{svc.url}/v1/jobs/{a_job}", headers={"Authorization": f"Bearer {alice_key}"}).json()
    assert a_status["status"] == "budget_exhausted" and a_done.model_extra["llmbatch_job_status"] == "budget_exhausted"
    assert 0 < a_done.request_counts.completed < 40 and a_done.request_counts.failed > 0
    assert a_status["spent_usd"] <= float(CAP_USD)
    errors = [json.loads(x) for x in alice.files.content(a_done.error_file_id).text.splitlines()]
    assert len(errors) == a_done.request_counts.failed
    for line in errors:
        assert line["response"] is None and "daily cap" in BatchError.model_validate(line["error"]).message
    assert b_done.status == "completed" and b_done.request_counts.completed == 40

    revoked = svc.cli("tokens", "revoke", "alice")
    assert revoked.returncode == 0
    with pytest.raises(openai.AuthenticationError):
        alice.batches.list()


def test_no_token_binds_loopback_only(tmp_path):
    svc = ServiceProcess(tmp_path).start("--host", "0.0.0.0")
    try:
        log = svc.read_log()
        assert "no API token exists" in log and "127.0.0.1 only" in log
        assert httpx.get(svc.url + "/v1/models").status_code == 200
    finally:
        svc.stop()
