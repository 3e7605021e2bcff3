"""`llmbatch --help` and `status` start fast (issue 14): heavy modules load only in the commands that use them.

Each check runs the command in a fresh interpreter and reads its sys.modules: what it imported, not how long it
took (a timing bound would be flaky on a loaded machine; an import that creeps back fails here every time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.cli import REPO, cli_env

_PROBE = """
import contextlib, io, json, sys
from llmbatch.cli import entrypoint
sys.argv = ["llmbatch", *json.loads(sys.argv[1])]
out = io.StringIO()
code = None
try:
    with contextlib.redirect_stdout(out):
        entrypoint()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "stdout": out.getvalue(), "modules": sorted(sys.modules)}))
"""

# Never needed to print help or a job's status.
NOT_FOR_HELP_OR_STATUS = (
    "httpx",
    "aiohttp",
    "celery",
    "kombu",
    "redis",
    "alembic",
    "jsonschema",
    "rich",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "yaml",
    "llmbatch.models",
    "llmbatch.ingest",
    "llmbatch.catalog",
    "llmbatch.executors",
    "llmbatch.providers",
    "llmbatch.engine",
    "sqlalchemy.orm",  # the schema is Core tables: the ORM is a third of SQLAlchemy's import time
)
# status reads its store through the sqlite3 module (or psycopg): no SQLAlchemy, no pydantic, no settings model
# (status_reader.py; together they cost most of a second to import).
NOT_FOR_STATUS = NOT_FOR_HELP_OR_STATUS + (
    "sqlalchemy",
    "pydantic",
    "pydantic_settings",
    "llmbatch.config",
    "llmbatch.jobs",
    "llmbatch.store",
    "llmbatch.reporting",
    "psycopg",
)
# --help reads no settings and opens no store either.
NOT_FOR_HELP = NOT_FOR_STATUS + ("orjson", "sqlite3", "llmbatch.status_reader")


def _probe(args: list[str], env: dict[str, str]) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def _loaded(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]


def test_help_imports_no_store_no_pydantic_no_http(tmp_path: Path):
    got = _probe(["--help"], cli_env(f"sqlite:///{tmp_path / 'unused.db'}"))
    assert got["code"] == 0 and "Commands:" in got["stdout"] and "status" in got["stdout"]
    assert _loaded(got["modules"], NOT_FOR_HELP) == []  # every command module is imported, none of what they run
    assert not (tmp_path / "unused.db").exists()


def test_status_opens_the_store_without_http_models_or_migrations(tmp_path: Path):
    from llmbatch.store import repo
    from llmbatch.store.db import dispose_all, get_engine

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = get_engine(url)  # migrated here: the status below finds the schema at head
    with engine.begin() as conn:
        job_id = repo.create_job(
            conn,
            name="probe",
            spec={},
            input_path=None,
            executor="local",
            simulate=True,
            budget_picos=None,
            max_cost_per_task_picos=None,
        )
    dispose_all()
    for args in (["--name", "probe"], [job_id, "--json"], []):
        got = _probe(["status", *args], cli_env(url))
        assert got["code"] == 0, got  # queued: not final
        assert got["stdout"].startswith(f"{job_id}  queued  total=0 ") or json.loads(got["stdout"])["job_id"] == job_id
        assert _loaded(got["modules"], NOT_FOR_STATUS) == []
        assert "sqlite3" in got["modules"]  # the probe did read the store
