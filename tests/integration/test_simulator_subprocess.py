"""The simulator as a separate process (`python -m llmbatch.simulator`), as benchmarks run it."""

from __future__ import annotations

import httpx
import pytest

from llmbatch.models import TaskLine
from llmbatch.prompts import build_request
from llmbatch.simulator import SimulatorConfig, SimulatorThread, start_subprocess

KEY = {"Authorization": "Bearer sk-sim"}


@pytest.fixture
def proc_url():
    config = SimulatorConfig(
        rpm=2,
        seed=3,
        faults={"malformed": 0.0},
        model_overrides={"gpt-4o-mini": {"label_error_rate": 1.0}},
        extra_models={"local-llm": "standard"},
    )
    proc, url = start_subprocess(config)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _classify_body(model: str) -> dict:
    msgs = build_request(
        TaskLine(id="1", task="classify", input="It broke, what a waste", labels=["positive", "negative"])
    ).messages
    return {"model": model, "messages": msgs, "max_tokens": 16}


def test_subprocess_applies_flags_and_config_json(proc_url):
    with httpx.Client(base_url=proc_url, timeout=10, headers=KEY) as c:
        config = c.get("/_sim/config").json()
        assert config["rpm"] == 2 and config["seed"] == 3
        assert config["extra_models"] == {"local-llm": "standard"}
        forced = c.post("/v1/chat/completions", json=_classify_body("gpt-4o-mini")).json()
        assert forced["choices"][0]["message"]["content"] not in ("positive", "negative")
        assert c.post("/v1/chat/completions", json=_classify_body("local-llm")).status_code == 200
        assert c.post("/v1/chat/completions", json=_classify_body("local-llm")).status_code == 200
        limited = c.post("/v1/chat/completions", json=_classify_body("local-llm"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 58
        assert c.get("/_sim/stats").json()["by_status"] == {"200": 3, "429": 1}


def test_answers_are_identical_across_processes(proc_url):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Name three uses of copper."}]}
    with httpx.Client(base_url=proc_url, timeout=10, headers=KEY) as c:
        remote = c.post("/v1/chat/completions", json=body).json()
    with SimulatorThread() as sim, httpx.Client(base_url=sim.url, timeout=10, headers=KEY) as c:
        local = c.post("/v1/chat/completions", json=body).json()
    assert remote["choices"][0]["message"]["content"] == local["choices"][0]["message"]["content"]
    assert remote["usage"] == local["usage"]
