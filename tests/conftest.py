"""Session fixtures shared by every test: real Redis and PostgreSQL, fresh databases, worker processes.

Where the servers come from:
- `LLMBATCH_TEST_REDIS_URL` / `LLMBATCH_TEST_DATABASE_URL`, as exported by `scripts/test.sh`;
- else this file runs `scripts/services.sh start` once per session (and stops what it started);
- else the tests that need them are skipped locally, and fail under CI=true.

Under CI=true any skipped test fails the run: CI must never pass without the real services.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES_SH = REPO / "scripts" / "services.sh"

REDIS_ENV = "LLMBATCH_TEST_REDIS_URL"
DATABASE_ENV = "LLMBATCH_TEST_DATABASE_URL"

# Seconds a worker gets to exit after SIGTERM (Celery's warm shutdown) before SIGKILL.
WORKER_STOP_GRACE_S = 5.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(what: str, why: str):
    """Fail under CI, skip locally."""
    msg = f"{what} is not available: {why}"
    if in_ci():
        pytest.fail(f"{msg}. CI must run against real services: run `bash scripts/test.sh`.", pytrace=False)
    pytest.skip(f"{msg} (run `bash scripts/test.sh`, or `scripts/services.sh start` and export its URLs)")


# ------------------------------------------------------------------ starting the services


class _Services:
    """Starts the throwaway servers at most once per session, only when no URL was given."""

    def __init__(self) -> None:
        self.attempted = False
        self.error: str | None = None
        self.started: list[str] = []

    def ensure(self) -> None:
        if self.attempted or (os.environ.get(REDIS_ENV) and os.environ.get(DATABASE_ENV)):
            return
        self.attempted = True
        if not SERVICES_SH.exists():
            self.error = f"{SERVICES_SH} is missing"
            return
        down = [s for s in ("redis", "postgres") if not self._up(s)]
        try:
            p = subprocess.run(["bash", str(SERVICES_SH), "start"], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"scripts/services.sh start: {e}"
            return
        if p.returncode != 0:
            self.error = f"scripts/services.sh start exited {p.returncode}: {p.stderr.strip()[-2000:]}"
            return
        self.started = down
        for line in p.stdout.splitlines():
            key, sep, value = line.partition("=")
            # A URL given by the caller wins over the default one.
            if sep and key in (REDIS_ENV, DATABASE_ENV) and not os.environ.get(key):
                os.environ[key] = value.strip()

    @staticmethod
    def _up(service: str) -> bool:
        try:
            return subprocess.run(["bash", str(SERVICES_SH), "status", service], capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def stop_started(self) -> None:
        # Parallel runners share the servers; only a lone session may stop them.
        if not self.started or os.environ.get("LLMBATCH_KEEP_SERVICES") or os.environ.get("PYTEST_XDIST_WORKER"):
            return
        for s in self.started:
            subprocess.run(["bash", str(SERVICES_SH), "stop", s], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=120)
        self.started = []


_services = _Services()


def psycopg_dsn(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy) -> `postgresql://...` (libpq)."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name (query string kept)."""
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] if base.count("/") >= 3 else base
    return f"{base}/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def temp_database(pg_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server of `pg_url`, dropped on exit; yields its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin_dsn = psycopg_dsn(with_database(pg_url, "postgres"))
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        # template0: nothing can be connected to it, so concurrent CREATEs never collide on it.
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
    try:
        yield with_database(pg_url, name)
    finally:
        from llmbatch.store.db import dispose_all

        dispose_all()  # this process's pools on it
        try:
            with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
                # FORCE: pools other processes (workers) left open must not keep the database alive.
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as e:  # noqa: BLE001 - a leftover database must not fail the test itself
            sys.stderr.write(f"could not drop database {name}: {e}\n")


def flushed_redis_db(redis_url: str, db: int | None = None) -> str:
    """FLUSHDB on the Redis database of `redis_url` (or database `db` of the same server); returns its URL."""
    import redis

    url = redis_url
    if db is not None:
        base = redis_url.split("?", 1)[0].rstrip("/")
        if base.count("/") >= 3:
            base = base.rsplit("/", 1)[0]
        url = f"{base}/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file per test."""
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture
def fresh_postgres_url(postgres_url: str):
    """A new, empty database on the test server for this test only; dropped afterwards."""
    with temp_database(postgres_url, "llmbatch_t") as url:
        yield url


@pytest.fixture
def flush_redis(redis_url: str) -> str:
    """FLUSHDB on the test Redis database before the test; returns the URL."""
    return flushed_redis_db(redis_url)


# ------------------------------------------------------------------ worker processes


@dataclass
class WorkerProcs:
    """Real `llmbatch worker` processes for one test; all of them are stopped at teardown.

    Each worker runs in its own session (process group), so SIGKILL takes its pool children with
    it, as a machine dying would. Output goes to `<tmp_path>/worker-<i>.log` (see `.log(i)`).
    """

    request: Any
    tmp_path: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    _launch: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)

    def command(self, concurrency: int, args: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "llmbatch.cli", "worker"]
        if "--concurrency" not in args and not any(a.startswith("--concurrency=") for a in args):
            cmd += ["--concurrency", str(concurrency)]
        return cmd + list(args)

    def start(self, n: int = 1, *, env: dict[str, str] | None = None, args: list[str] | None = None,
              concurrency: int = 4, argv: list[str] | None = None) -> list[subprocess.Popen]:
        """Start `n` workers. `env` is added to this process's environment; LLMBATCH_BROKER_URL and
        LLMBATCH_DATABASE_URL default to `redis_url` and `postgres_url`. `argv` replaces the whole
        command (for tests of this fixture)."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        if not full_env.get("LLMBATCH_BROKER_URL"):
            full_env["LLMBATCH_BROKER_URL"] = self.request.getfixturevalue("redis_url")
        if not full_env.get("LLMBATCH_DATABASE_URL"):
            full_env["LLMBATCH_DATABASE_URL"] = self.request.getfixturevalue("postgres_url")
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = list(argv) if argv is not None else self.command(concurrency, list(args or []))
        started = []
        for _ in range(n):
            self._launch.append((cmd, full_env))
            self._logs.append(self.tmp_path / f"worker-{len(self._logs)}.log")
            proc = self._spawn(len(self._launch) - 1)
            self.procs.append(proc)
            started.append(proc)
        return started

    def _spawn(self, i: int) -> subprocess.Popen:
        cmd, env = self._launch[i]
        with open(self._logs[i], "ab") as out:
            return subprocess.Popen(cmd, env=env, cwd=str(self.tmp_path), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, i: int, sig: int = signal.SIGKILL, *, group: bool | None = None) -> None:
        """Send `sig` to worker `i`. SIGKILL goes to its whole process group by default (a crash);
        other signals go to the main process only (SIGTERM = Celery's warm shutdown)."""
        proc = self.procs[i]
        if group is None:
            group = sig == signal.SIGKILL
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, i: int, grace: float = WORKER_STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL the group. Returns the exit code."""
        proc = self.procs[i]
        if proc.poll() is None:
            self.kill(i, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Pool children outlive a parent that died or ignored SIGTERM; reap the whole group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, i: int, grace: float = WORKER_STOP_GRACE_S) -> subprocess.Popen:
        """Stop worker `i` (gracefully if it is alive) and start it again with the same command."""
        self.stop(i, grace)
        self.procs[i] = self._spawn(i)
        return self.procs[i]

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def log(self, i: int) -> str:
        try:
            return self._logs[i].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, i: int, text: str, timeout: float = 30.0) -> None:
        """Wait until worker `i`'s output contains `text` (e.g. Celery's "ready")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(i):
                return
            if self.procs[i].poll() is not None:
                raise AssertionError(f"worker {i} exited with {self.procs[i].returncode} before printing "
                                     f"{text!r}:\n{self.log(i)[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker {i} did not print {text!r} within {timeout}s:\n{self.log(i)[-4000:]}")

    def stop_all(self, grace: float = WORKER_STOP_GRACE_S) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(i, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for i in range(len(self.procs)):
            self.stop(i, grace=0)


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
