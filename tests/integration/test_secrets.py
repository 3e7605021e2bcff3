"""Reliability, secrets: provider keys never reach the store, results, reports, CLI output or worker logs.

The jobs run WITHOUT --simulate: the real provider adapters, with distinctive fake keys in the usual
environment variables, and every provider's base_url pointed at the simulator through llmbatch.toml
[providers.NAME] overrides (the simulator accepts any non-empty key). Lines are pinned to every routable
model, so each provider's key is sent. Runs include injected errors (429/5xx, resets, malformed bodies) so
error messages are produced and stored, and -vv (debug) logging. Then every artifact is grepped as raw bytes.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from llmbatch.catalog import builtin_catalog
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store.db import get_engine
from tests.support.cli import cli_env, run_cli, run_json
from tests.support.jobs import check_ledger, reconcile, wait_terminal

pytestmark = pytest.mark.integration

PROVIDER_KEYS = {  # provider -> (env var, key shape); shapes like real keys, so pattern redaction is not the only guard
    "openai": ("OPENAI_API_KEY", "sk-test-SECRET-openai-{}"),
    "anthropic": ("ANTHROPIC_API_KEY", "sk-ant-test-SECRET-anthropic-{}"),
    "gemini": ("GEMINI_API_KEY", "AIzaTEST-SECRET-gemini-{}"),
    "groq": ("GROQ_API_KEY", "gsk_test_SECRET_groq_{}"),
    "mistral": ("MISTRAL_API_KEY", "mistral-test-SECRET-{}"),
    "together": ("TOGETHER_API_KEY", "together-test-SECRET-{}"),
}


def _fake_keys() -> tuple[dict[str, str], list[bytes]]:
    """Env vars with fresh fake keys, and the byte strings that must appear nowhere: each full key, its
    random part (catches a truncated or masked echo) and the marker SECRET."""
    env, needles = {}, [b"SECRET"]
    for var, shape in PROVIDER_KEYS.values():
        rand = pysecrets.token_hex(10)
        key = shape.format(rand)
        env[var] = key
        needles += [key.encode(), rand.encode()]
    return env, needles


def _providers_toml(sim_url: str, retry: str = "") -> str:
    cat = builtin_catalog()
    out = [retry]
    for name, p in cat.providers.items():
        base = f"{sim_url}/v1" if p.api == "openai" else sim_url
        out.append(f'[providers.{name}]\nbase_url = "{base}"\n')
    return "\n".join(out)


def _pinned_lines(path: Path, copies: int, tag: str) -> int:
    """`copies` lines per routable model (active or deprecated), pinned with `model`; classify, extract, chat."""
    models = [m for m in builtin_catalog() if m.status != "retired"]
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for m in models:
            for i in range(copies):
                kind = i % 3
                line: dict = {"id": f"{tag}-{m.provider}-{m.model}-{i}", "model": m.key, "max_output_tokens": 60}
                if kind == 0:
                    line.update(
                        task="classify",
                        input=f"Great product, works well. Order {i}.",
                        labels=["positive", "negative", "neutral"],
                    )
                elif kind == 1 and "json_schema" in m.capabilities:
                    line.update(
                        task="extract",
                        input=f"Ada Lovelace, born 1815, order {i}.",
                        schema={
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
                            "required": ["name", "year"],
                        },
                    )
                else:
                    line.update(
                        task="chat",
                        messages=[
                            {"role": "system", "content": "Be brief."},
                            {"role": "user", "content": f"Say hello number {i}."},
                        ],
                    )
                f.write(json.dumps(line) + "\n")
                n += 1
    return n


def _find(needles: list[bytes], blobs: dict[str, bytes]) -> list[str]:
    return [f"{name}: {needle.decode()!r}" for name, blob in blobs.items() for needle in needles if needle in blob]


def _outputs(job_id: str, env: dict, tmp_path: Path, blobs: dict[str, bytes]) -> None:
    """Every way a user reads a job back, at -vv, into `blobs` (stdout and stderr of each command too).
    The read-only commands run 4 at a time (each is a child process, mostly interpreter start-up)."""
    files = {fmt: tmp_path / f"{job_id}.{fmt}" for fmt in ("jsonl", "csv", "openai")}
    reads = [
        ["report", job_id],
        ["report", job_id, "--json"],
        ["report", job_id, "--csv"],
        ["report", job_id, "--attempts"],
        ["status", job_id, "--json"],
        ["status", job_id],
    ]
    commands = [["results", job_id, "--format", fmt, "-o", str(out)] for fmt, out in files.items()]
    commands += [["results", job_id]] + reads  # results to stdout
    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(map(tuple, commands), pool.map(lambda args: run_cli(["-vv", *args], env), commands)))
    for fmt, out in files.items():
        p = done[("results", job_id, "--format", fmt, "-o", str(out))]
        assert p.returncode == 0, p.stderr
        blobs[f"{job_id} results {fmt} file"] = out.read_bytes()
        blobs[f"{job_id} results {fmt} stderr"] = p.stderr.encode()
    p = done[("results", job_id)]
    assert p.returncode == 0, p.stderr
    blobs[f"{job_id} results stdout"] = (p.stdout + p.stderr).encode()
    for args in reads:
        p = done[tuple(args)]
        assert p.returncode in (0, 3), (args, p.stderr)
        blobs[" ".join(args) + " output"] = (p.stdout + p.stderr).encode()


def test_keys_never_leak_embedded(tmp_path, sqlite_url):
    keys, needles = _fake_keys()
    blobs: dict[str, bytes] = {}
    with SimulatorThread(SimulatorConfig(latency_s=0.01, seed=9, mini_error_rate=0.0)) as sim:
        cfg = tmp_path / "llmbatch.toml"
        cfg.write_text(
            _providers_toml(
                sim.url,
                "[retry]\nbase_delay_s = 0.02\nmax_delay_s = 0.1\n"
                "max_attempts_per_model = 2\nmax_attempts_per_task = 3\n"
                "call_timeout_s = 5\n",
            )
        )
        env = cli_env(sqlite_url, LLMBATCH_CONFIG=str(cfg), **keys)

        # 1. A clean run at -v.
        clean = tmp_path / "clean.jsonl"
        n1 = _pinned_lines(clean, 3, "clean")
        p, st1 = run_json(["-v", "run", str(clean)], env)
        blobs["run 1 stdout+stderr"] = (p.stdout + p.stderr).encode()
        assert p.returncode == 0, p.stderr[-3000:]
        assert st1["counts"]["succeeded"] == n1
        seen = sim.stats()

        # 2. A run with errors at -vv: 429/5xx answers, resets and malformed bodies produce error messages.
        sim.configure(error_rate=0.35, faults={"reset": 0.05, "malformed": 0.05})
        noisy = tmp_path / "noisy.jsonl"
        n2 = _pinned_lines(noisy, 4, "noisy")
        p, st2 = run_json(["-vv", "run", str(noisy)], env)
        blobs["run 2 stdout+stderr"] = (p.stdout + p.stderr).encode()
        assert p.returncode in (0, 3), p.stderr[-3000:]
        assert st2["counts"]["total"] == n2

    # The keys really were used: not simulated, and every API (hence every provider's adapter) was called.
    assert set(seen["by_api"]) == {"openai", "anthropic", "gemini"}, seen["by_api"]
    engine = get_engine(sqlite_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM jobs WHERE simulate")).scalar() == 0
        providers = {r[0] for r in c.execute(text("SELECT DISTINCT provider FROM attempts WHERE status = 'succeeded'"))}
        n_errors = c.execute(text("SELECT count(*) FROM attempts WHERE error_message IS NOT NULL")).scalar()
    assert providers == set(PROVIDER_KEYS), providers
    assert n_errors >= 10, "the noisy run should have stored error messages"
    # -vv is on (nothing in llmbatch's own call path emits DEBUG records today; INFO ones prove the level).
    assert b" INFO httpx: HTTP Request: POST" in blobs["run 2 stdout+stderr"], "-vv should log requests"
    check_ledger(sqlite_url, st2["job_id"])

    for job_id in (st1["job_id"], st2["job_id"]):
        _outputs(job_id, env, tmp_path, blobs)
    engine.dispose()
    db_path = Path(sqlite_url.removeprefix("sqlite:///"))
    for f in db_path.parent.glob(db_path.name + "*"):  # the database and any -wal / -journal beside it
        blobs[f"sqlite file {f.name}"] = f.read_bytes()
    assert any(k.startswith("sqlite file") for k in blobs)

    leaks = _find(needles, blobs)
    print(
        f"\nsecrets (embedded): searched {len(blobs)} artifacts ({sum(map(len, blobs.values())) // 1024} KiB) "
        f"for {len(needles)} needles; {n_errors} stored error messages; leaks: {leaks or 'none'}"
    )
    assert not leaks, "API keys leaked:\n" + "\n".join(leaks)


def test_keys_never_leak_scale_out(tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    keys, needles = _fake_keys()
    blobs: dict[str, bytes] = {}
    with SimulatorThread(SimulatorConfig(latency_s=0.02, seed=10, error_rate=0.3, faults={"reset": 0.05})) as sim:
        cfg = tmp_path / "llmbatch.toml"
        cfg.write_text(
            _providers_toml(
                sim.url,
                "[retry]\nbase_delay_s = 0.02\nmax_delay_s = 0.1\n"
                "max_attempts_per_model = 2\nmax_attempts_per_task = 3\n",
            )
        )
        env = cli_env(fresh_postgres_url, LLMBATCH_CONFIG=str(cfg), LLMBATCH_BROKER_URL=redis_url, **keys)
        src = tmp_path / "pinned.jsonl"
        n = _pinned_lines(src, 3, "celery")
        worker_procs.start(2, env=env, args=["--concurrency", "20", "--loglevel", "DEBUG"])
        p = run_cli(["-vv", "submit", str(src)], env)
        blobs["submit stdout+stderr"] = (p.stdout + p.stderr).encode()
        assert p.returncode == 0, p.stderr[-3000:]
        job_id = p.stdout.strip().splitlines()[-1]
        job = wait_terminal(fresh_postgres_url, job_id, timeout=90)
        stats = sim.stats()
    worker_procs.stop_all()
    assert job["status"] in ("succeeded", "failed") and not job["simulate"]
    assert set(stats["by_api"]) == {"openai", "anthropic", "gemini"}
    reconcile(fresh_postgres_url, job_id)  # the reset calls' reservations (the sweeper waits lease_seconds)
    figures = check_ledger(fresh_postgres_url, job_id)
    assert figures["tasks"].get("succeeded", 0) >= n * 0.8

    for i in range(len(worker_procs.procs)):
        blobs[f"worker-{i} log"] = worker_procs.log(i).encode()
    assert any(b"DEBUG" in blobs[f"worker-{i} log"] for i in range(2))
    _outputs(job_id, env, tmp_path, blobs)
    # The whole Postgres database, every row of every table, as text.
    engine = get_engine(fresh_postgres_url)
    with engine.connect() as c:
        tables = [r[0] for r in c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        for t in tables:
            rows = c.execute(text(f'SELECT t::text FROM "{t}" t')).scalars().all()
            blobs[f"postgres table {t}"] = "\n".join(rows).encode()
        n_errors = c.execute(text("SELECT count(*) FROM attempts WHERE error_message IS NOT NULL")).scalar()
    assert "attempts" in tables and n_errors > 0

    leaks = _find(needles, blobs)
    print(
        f"\nsecrets (celery): searched {len(blobs)} artifacts ({sum(map(len, blobs.values())) // 1024} KiB) incl. "
        f"{len(tables)} Postgres tables and DEBUG worker logs; {n_errors} stored error messages; "
        f"leaks: {leaks or 'none'}"
    )
    assert not leaks, "API keys leaked:\n" + "\n".join(leaks)
