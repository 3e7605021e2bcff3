"""The fixtures give real servers, configured as production needs them. If these fail or skip, no
integration result means anything (and under CI=true a skip fails the run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest

from tests.support.services import SERVICES_SH, psycopg_dsn

pytestmark = pytest.mark.integration


def test_redis_is_real_and_durable(redis_url):
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = f"llmbatch:test:services:{uuid.uuid4().hex}"
        r.set(key, "ok", ex=60)
        assert r.get(key) == "ok"
        # The broker's queues must survive a restart and never be evicted.
        assert r.config_get("appendonly")["appendonly"] == "yes"
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert int(r.info("server")["redis_version"].split(".")[0]) >= 7
    finally:
        r.close()


def test_flush_redis_empties_the_test_db(redis_url):
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        r.set("llmbatch:test:leftover", "1")
    finally:
        r.close()


def test_flush_redis_runs_before_the_test(flush_redis):
    import redis

    r = redis.Redis.from_url(flush_redis)
    try:
        assert r.dbsize() == 0
    finally:
        r.close()


def test_postgres_is_real_15(postgres_url):
    import psycopg

    assert postgres_url.startswith("postgresql+psycopg://"), "SQLAlchemy URLs name the psycopg 3 driver"
    with psycopg.connect(psycopg_dsn(postgres_url)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        version = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]
    assert version // 10000 >= 15, f"PostgreSQL 15 or newer is required, got {version}"


def test_empty_postgres_url_is_an_empty_private_database(empty_postgres_url, postgres_url):
    import psycopg

    name = urlsplit(empty_postgres_url).path.lstrip("/")
    assert name != urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(psycopg_dsn(empty_postgres_url)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
        assert tables == 0
        conn.execute("CREATE TABLE t (x int)")  # dropped with the database


def test_fresh_postgres_url_is_a_private_database_at_the_newest_schema(fresh_postgres_url, postgres_url):
    assert urlsplit(fresh_postgres_url).path.lstrip("/") != urlsplit(postgres_url).path.lstrip("/")
    _at_newest_schema_with_no_rows(fresh_postgres_url)


def test_sqlite_url_is_a_fresh_file(sqlite_url, tmp_path):
    assert sqlite_url == f"sqlite:///{tmp_path}/test.db"
    _at_newest_schema_with_no_rows(sqlite_url)


def test_empty_sqlite_url_has_no_file_yet(empty_sqlite_url, tmp_path):
    assert empty_sqlite_url == f"sqlite:///{tmp_path}/test.db"
    assert not (tmp_path / "test.db").exists()


def _at_newest_schema_with_no_rows(url: str) -> None:
    """The store fixtures hand out a copy of a store migrated once per session: the newest schema, no rows."""
    from sqlalchemy import text

    from llmbatch.store.db import current_revision, head_revision, make_engine

    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision() is not None
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
            assert c.execute(text("SELECT count(*) FROM attempts")).scalar() == 0
    finally:
        engine.dispose()


def test_worker_procs_start_kill_restart_and_teardown(worker_procs):
    # The fixture's own machinery, with a stand-in process instead of `llmbatch worker`: it prints
    # its env and then waits; its child stands for a pool process.
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('ready', os.environ['LLMBATCH_BROKER_URL'], os.environ['EXTRA'], child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    procs = worker_procs.start(
        2,
        env={"EXTRA": "x", "LLMBATCH_BROKER_URL": "redis://example/0", "LLMBATCH_DATABASE_URL": "sqlite:///w.db"},
        argv=[sys.executable, "-c", script],
    )
    assert len(procs) == 2 and worker_procs.procs == procs
    for i in range(2):
        worker_procs.wait_for_log(i, "ready", timeout=30)
    assert "redis://example/0 x" in worker_procs.log(0)
    child = int(worker_procs.log(0).split()[-1])

    worker_procs.kill(0, signal.SIGKILL)  # a crash takes the whole process group
    assert procs[0].wait(10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "SIGKILL must reach the worker's pool children too"

    old = worker_procs.procs[1]
    new = worker_procs.restart(1, grace=2)
    assert old.poll() is not None and new.poll() is None and worker_procs.procs[1] is new
    assert worker_procs.alive() == [False, True]
    # The restarted process's own output is waited for, not the "ready" its predecessor left in the same log
    # (that one made wait_for_log return at once, before the new process had started).
    worker_procs.wait_for_log(1, "ready", timeout=30)
    assert worker_procs.log(1).count("ready") == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_restart_redis_keeps_acknowledged_writes(redis_url):
    """`services.sh restart-redis --kill` is what reliability tests use to crash the broker."""
    port = urlsplit(redis_url).port
    if port != int(os.environ.get("LLMBATCH_REDIS_PORT", "56379")):
        pytest.skip(f"{redis_url} is not the server scripts/services.sh manages")
    import redis

    key = f"llmbatch:test:aof:{uuid.uuid4().hex}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        r.rpush(key, "a", "b")
        r.expire(key, 120)
    finally:
        r.close()
    p = subprocess.run(
        ["bash", str(SERVICES_SH), "restart-redis", "--kill"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert r.lrange(key, 0, -1) == ["a", "b"], "the AOF must bring back writes Redis acknowledged"
        r.delete(key)
    finally:
        r.close()
