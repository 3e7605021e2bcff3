"""Running the CLI as a real subprocess, the input files the tests feed it, a job written straight to the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]

POSITIVE = [
    "Love it, works perfectly and arrived early.",
    "Excellent quality, great value, would buy again.",
    "Fantastic battery life and a great screen.",
]
NEGATIVE = [
    "Broke after two days, terrible build quality.",
    "Awful support and the refund never came.",
    "Worst purchase this year; it stopped working.",
]
NEUTRAL = [
    "It is a phone case. It fits the phone.",
    "Arrived on Tuesday in a brown box.",
    "The manual is twelve pages long.",
]


def write_reviews(path: Path, n: int = 200) -> list[str]:
    banks = [POSITIVE, NEGATIVE, NEUTRAL]
    ids = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            bank = banks[i % 3]
            text = f"{bank[i % len(bank)]} Order number {1000 + i}."
            tid = f"r-{i:04d}"
            ids.append(tid)
            f.write(
                json.dumps(
                    {
                        "id": tid,
                        "task": "classify",
                        "input": text,
                        "labels": ["positive", "negative", "neutral"],
                        "metadata": {"n": i},
                    }
                )
                + "\n"
            )
    return ids


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    env["LLMBATCH_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def custom_provider_toml(base_url: str) -> str:
    """llmbatch.toml sections for an OpenAI-compatible provider `house` (key in HOUSE_KEY) serving one cheap
    mini-tier model, `house/house-llama`."""
    return f'''
[providers.house]
api = "openai"
base_url = "{base_url}"
key_env = "HOUSE_KEY"

[models."house/house-llama"]
api = "openai"
tier = "mini"
input_per_mtok = "0.01"
output_per_mtok = "0.01"
context_window = 32768
max_output_tokens = 4096
capabilities = ["system_role", "temperature"]
'''


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 300, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "llmbatch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd or REPO),
    )


def run_json(args: list[str], env: dict[str, str], **kw):
    p = run_cli(args + ["--json"], env, **kw)
    try:
        return p, orjson.loads(p.stdout)
    except orjson.JSONDecodeError as e:
        raise AssertionError(
            f"not one JSON object on stdout (exit {p.returncode}):\n{p.stdout}\n--- stderr\n{p.stderr}"
        ) from e


def results(job_id: str, env: dict[str, str]) -> list[dict]:
    p = run_cli(["results", job_id], env)
    assert p.returncode == 0, p.stderr
    return [orjson.loads(line) for line in p.stdout.splitlines() if line.strip()]


def make_store_job(engine, n_tasks: int, budget_picos: int | None, *, executor: str = "local") -> str:
    """A job with n queued placeholder tasks written straight to the store, for store-level tests."""
    from sqlalchemy import insert

    from llmbatch.store import repo
    from llmbatch.store.schema import tasks

    with engine.begin() as c:
        job = repo.create_job(
            c,
            name=None,
            spec={},
            input_path=None,
            executor=executor,
            simulate=True,
            budget_picos=budget_picos,
            max_cost_per_task_picos=None,
        )
        c.execute(
            insert(tasks),
            [
                {
                    "job_id": job,
                    "seq": i,
                    "task_id": f"t{i}",
                    "line_no": i + 1,
                    "task_type": "chat",
                    "payload": "{}",
                    "status": "queued",
                }
                for i in range(n_tasks)
            ],
        )
        repo.set_job_counts(c, job, total=n_tasks, invalid=0)  # as ingest does: the job row's total
    return job
