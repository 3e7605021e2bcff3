"""Session fixtures shared by every test: real Redis and PostgreSQL, fresh databases, worker processes.
The machinery behind them is the package tests/support/ (shared with the benchmarks and scripts/services.sh).

Where the servers come from:
- `LLMBATCH_TEST_REDIS_URL` / `LLMBATCH_TEST_DATABASE_URL`, when the caller gives them;
- else this file starts the test servers once per session (tests/support/services.py, ports LLMBATCH_REDIS_PORT /
  LLMBATCH_PG_PORT), exports their URLs to the processes the tests start, and stops at the end what it started
  (LLMBATCH_KEEP_SERVICES=1 keeps them);
- else the tests that need them are skipped locally, and fail under CI=true.

Under CI=true any skipped test fails the run: CI must never pass without the real services.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.ci import in_ci, unavailable
from tests.support.databases import flushed_redis_db, temp_database
from tests.support.procs import WorkerProcs
from tests.support.services import DATABASE_ENV, REDIS_ENV, SessionServices, psycopg_dsn

_services = SessionServices()


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (AOF on, noeviction); a test owns its keys or uses `flush_redis`."""
    _services.ensure()
    url = os.environ.get(REDIS_ENV)
    if not url:
        unavailable("Redis", _services.error or f"{REDIS_ENV} is not set")
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        unavailable("Redis", f"{url}: {e}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL (`postgresql+psycopg://...`) of the shared test database `llmbatch_test`."""
    _services.ensure()
    url = os.environ.get(DATABASE_ENV)
    if not url:
        unavailable("PostgreSQL", _services.error or f"{DATABASE_ENV} is not set")
    try:
        import psycopg

        with psycopg.connect(psycopg_dsn(url), connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # noqa: BLE001
        unavailable("PostgreSQL", f"{url}: {e}")
    return url


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory) -> Path:
    """One SQLite store migrated to the newest schema, copied by `sqlite_url` (migrating costs ~0.9 s of CPU)."""
    from llmbatch.store.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("migrated_sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    assert not list(path.parent.glob("template.db-*")), "the template must be one file (no WAL left behind)"
    return path


@pytest.fixture(scope="session")
def _migrated_postgres_template(postgres_url: str):
    """A database on the test server migrated to the newest schema, the template of `fresh_postgres_url`."""
    from llmbatch.store.db import make_engine, upgrade

    with temp_database(postgres_url, "llmbatch_tmpl") as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()  # CREATE DATABASE ... TEMPLATE needs it without connections
        yield url


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A SQLite path per test with no file yet (the first command creates and migrates it)."""
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture
def sqlite_url(tmp_path: Path, _migrated_sqlite_file: Path) -> str:
    """A fresh SQLite store per test, already at the newest schema (a copy of one migrated once per session)."""
    shutil.copyfile(_migrated_sqlite_file, tmp_path / "test.db")
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture
def empty_postgres_url(postgres_url: str):
    """A new, empty database on the test server for this test only; dropped afterwards."""
    with temp_database(postgres_url, "llmbatch_t") as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_url: str, _migrated_postgres_template: str):
    """A new database on the test server for this test only, already at the newest schema (created from a
    template migrated once per session); dropped afterwards."""
    template = _migrated_postgres_template.rsplit("/", 1)[1].partition("?")[0]
    with temp_database(postgres_url, "llmbatch_t", template=template) as url:
        yield url


@pytest.fixture
def flush_redis(redis_url: str) -> str:
    """FLUSHDB on the test Redis database before the test; returns the URL."""
    return flushed_redis_db(redis_url)


@pytest.fixture
def worker_procs(request, tmp_path: Path):
    """Factory for real worker processes: `.start(n, env=..., args=[...])`, `.procs`, `.kill(i, sig)`,
    `.restart(i)`, `.log(i)`, `.wait_for_log(i, text)`. Stopped (SIGTERM, then SIGKILL) at teardown;
    a failed test gets the tail of each worker's output in its report."""
    workers = WorkerProcs(request=request, tmp_path=tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for i in range(len(workers.procs)):
                request.node.add_report_section("teardown", f"worker-{i} output", workers.log(i)[-4000:])


# ------------------------------------------------------------------ hooks

_skipped: list[str] = []


def pytest_sessionstart(session):
    # CI must run against real services: if they cannot come up, fail before any test runs.
    if in_ci():
        _services.ensure()
        if _services.error:
            pytest.exit(f"CI=true: Redis/PostgreSQL could not be started: {_services.error}", returncode=1)


def pytest_report_header(config):
    return (
        f"{REDIS_ENV}={os.environ.get(REDIS_ENV, '<unset: started on first use>')} "
        f"{DATABASE_ENV}={os.environ.get(DATABASE_ENV, '<unset: started on first use>')}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)  # lets fixtures see whether the test failed
    return rep


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_collectreport(report):
    if report.skipped:
        _skipped.append(report.nodeid or "<collection>")


def pytest_sessionfinish(session, exitstatus):
    _services.stop_started()
    if in_ci() and _skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if in_ci() and _skipped:
        tr = terminalreporter
        tr.write_sep("=", f"CI=true: {len(_skipped)} skipped test(s) fail this run", red=True, bold=True)
        tr.write_line("Skips are allowed locally only; in CI every test must run against the real services.")
        for nodeid in _skipped[:50]:
            tr.write_line(f"  SKIPPED {nodeid}")
        if len(_skipped) > 50:
            tr.write_line(f"  ... and {len(_skipped) - 50} more")
