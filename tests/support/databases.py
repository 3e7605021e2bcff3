"""Temporary databases on the test servers: a fresh PostgreSQL database per test or benchmark, a flushed Redis
database."""

from __future__ import annotations

import contextlib
import sys
import uuid
from typing import Iterator
from urllib.parse import unquote, urlsplit

from tests.support.services import psycopg_dsn, with_database


@contextlib.contextmanager
def temp_database(pg_url: str, prefix: str, template: str = "template0") -> Iterator[str]:
    """A new database on the server of `pg_url` (empty, or a copy of the database `template`), dropped on exit
    (connections other processes, e.g. workers, left open are refused and terminated first); yields its URL.
    pytest-postgresql's DatabaseJanitor does the creating and dropping."""
    from pytest_postgresql.janitor import DatabaseJanitor

    u = urlsplit(psycopg_dsn(pg_url))
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    # template0: nothing can be connected to it, so concurrent CREATEs never collide on it. Another template
    # must have no connection while it is copied (the session's migrated one: see tests/conftest.py).
    janitor = DatabaseJanitor(
        user=unquote(u.username or "postgres"),
        password=unquote(u.password or "") or None,
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        dbname=name,
        template_dbname=template,
        connection_timeout=10,
    )
    janitor.init()
    try:
        yield with_database(pg_url, name)
    finally:
        from llmbatch.store.db import dispose_all

        dispose_all()  # this process's pools on it
        try:
            janitor.drop()
        except Exception as e:  # noqa: BLE001 - a leftover database must not fail the test itself
            sys.stderr.write(f"could not drop database {name}: {e}\n")


def flushed_redis_db(redis_url: str, db: int | None = None) -> str:
    """FLUSHDB on the Redis database of `redis_url` (or database `db` of the same server); returns its URL."""
    import redis

    url = redis_url if db is None else with_database(redis_url, str(db))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url
