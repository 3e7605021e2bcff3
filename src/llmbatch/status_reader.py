"""`llmbatch status` without SQLAlchemy, pydantic or the settings model (issue 14: status starts in well under
300 ms; those three cost most of a second to import).

- database_url(): the store URL load_settings() would give, read from the same sources in the same order
  (LLMBATCH_DATABASE_URL, then `database_url` in $LLMBATCH_CONFIG or ./llmbatch.toml, then the default).
- read_status(): the job's row and counts straight through the sqlite3 module or psycopg (imported only for a
  Postgres store), in one read transaction; the same dict as reporting.status_dict.

Anything this path cannot answer exactly as the full one would raises Fallback, and the caller runs the full
path, which then gives its own answer or error: a config file or URL it cannot read, an unknown top-level key,
a store that does not exist yet or is not at the newest migration (the full path creates or migrates it), a
job that is not found (the full path names the store), a URL form other than sqlite:///PATH or postgresql://.
Settings other than the store URL are not validated here (status does not use them), as with --help.
Tested against load_settings and the full status in tests/unit/test_status_reader.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .env_names import TABLES, unknown_variable

DEFAULT_DATABASE_URL = "sqlite:///llmbatch.db"  # config.DEFAULT_DATABASE_URL (tested equal)
# Settings' top-level keys (tested equal to config.Settings.model_fields): any other key in the config file is an
# error load_settings reports, so the full path runs and reports it.
SETTINGS_KEYS = frozenset(
    {
        "database_url",
        "broker_url",
        "simulator_url",
        "redis_url",
        "daily_cap_usd",
        "baseline_model",
        "retry",
        "rate_limits",
        "providers",
        "models",
        "catalog_file",
        "lease_seconds",
        "chunk_size",
        "max_units_per_dispatch",
        "max_deliveries",
        "concurrency",
        "shutdown_grace_s",
        "max_line_bytes",
        "max_labels_per_line",
        "max_schema_bytes",
        "max_schema_depth",
        "max_images_per_line",
        "max_image_bytes",
        "allow_http_images",
        "allow_local_images",
        "max_spec_bytes",
        "max_spec_nodes",
        "schema_validation_timeout_s",
        "presence_ttl_s",
        "sweep_interval_s",
        "cache_ttl_s",
        "cache_max_entries",
        "prompt_cache_scheduling",
        "batch_turnaround_s",
        "batch_linger_s",
        "batch_poll_s",
        "batch_poll_max_s",
        "batch_fallback_s",
        "flex_timeout_s",
        "service_files_dir",
        "service_parallel_jobs",
        "metrics_port",
        "http_client",
    }
)
MIGRATIONS = Path(__file__).with_name("store") / "migrations" / "versions"
_REVISION = re.compile(r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:['"]([^'"]*)['"]|None)""", re.M)


class Fallback(Exception):
    """The lean path cannot answer exactly as the full one: run the full one."""


def head_revision_from_files() -> str | None:
    """The newest migration, from the migration files' `revision`/`down_revision` lines (loading alembic costs
    ~150 ms); None when they are not a simple chain."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for f in MIGRATIONS.glob("*.py"):
        for key, value in _REVISION.findall(f.read_text("utf-8")):
            (revisions if key == "revision" else downs).add(value)
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def database_url() -> str:
    """The store URL load_settings() would give (before normalize_url); Fallback where it would raise."""
    env = os.environ.get("LLMBATCH_CONFIG")
    path: Path | None
    if env:
        path = Path(env)
        if not path.is_file():
            raise Fallback("LLMBATCH_CONFIG is not a file")
    else:
        path = Path("llmbatch.toml")
        path = path if path.is_file() else None
    value: Any = None
    if path is not None:
        import tomllib

        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, OSError, ValueError) as e:
            raise Fallback(f"cannot read {path}") from e
        if not set(data) <= SETTINGS_KEYS:
            raise Fallback(f"unknown key in {path}")
        value = data.get("database_url")
    if unknown_variable(os.environ, SETTINGS_KEYS - TABLES) is not None:
        raise Fallback("an LLMBATCH_ variable that is no setting")  # load_settings words it
    env_value = os.environ.get("LLMBATCH_DATABASE_URL")
    if env_value is not None and env_value.strip() != "":
        value = env_value
    if value is None:
        return DEFAULT_DATABASE_URL
    if not isinstance(value, str):
        raise Fallback("database_url is not a string")
    value = value.strip()
    if not value:
        return DEFAULT_DATABASE_URL
    if "://" not in value:
        raise Fallback("database_url is not a URL")
    return value


_JOB_COLUMNS = (
    "id, status, spent_picos, reserved_picos, budget_picos, invalid_lines, stop_reason, "
    "total_tasks, succeeded_tasks, failed_tasks, skipped_tasks, cancelled_tasks"
)
_FINISHED = ("succeeded", "failed", "skipped", "cancelled")


def _sqlite(url: str):
    rest = url[len("sqlite:///") :]
    if not rest or "?" in rest or "%" in rest or rest.startswith(":memory:") or not Path(rest).is_file():
        raise Fallback("not a SQLite file this path opens as SQLAlchemy would (or none yet: created there)")
    import sqlite3

    conn = sqlite3.connect(rest, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN")  # deferred: a read snapshot, no write lock (as store.db.reading)
    return conn, "?"


class _Libpq:
    """The two read queries over libpq itself, through ctypes: psycopg costs ~0.3 s to import, more than the rest
    of `status` together. The libpq psycopg ships (psycopg_binary) or the system's; text results, parsed here.
    Anything unexpected raises, and the psycopg path runs instead."""

    OK, TUPLES_OK, COMMAND_OK = 0, 2, 1

    def __init__(self, kwargs: dict[str, Any]) -> None:
        import ctypes

        lib = ctypes.CDLL(self._find())
        c_p, c_s, c_i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("PQconnectdb", c_p, [c_s]),
            ("PQstatus", c_i, [c_p]),
            ("PQfinish", None, [c_p]),
            ("PQexecParams", c_p, [c_p, c_s, c_i, c_p, ctypes.POINTER(c_s), c_p, c_p, c_i]),
            ("PQresultStatus", c_i, [c_p]),
            ("PQntuples", c_i, [c_p]),
            ("PQnfields", c_i, [c_p]),
            ("PQgetvalue", c_s, [c_p, c_i, c_i]),
            ("PQgetisnull", c_i, [c_p, c_i, c_i]),
            ("PQclear", None, [c_p]),
        ):
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        self.lib, self.c_s = lib, c_s

        def quote(v: Any) -> str:
            return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"

        info = " ".join(f"{k}={quote(v)}" for k, v in {**kwargs, "client_encoding": "UTF8"}.items())
        self.conn = lib.PQconnectdb(info.encode())
        if not self.conn or lib.PQstatus(self.conn) != self.OK:
            self.close()
            raise ConnectionError("libpq could not connect")

    @staticmethod
    def _find() -> str:
        from importlib.util import find_spec

        spec = find_spec("psycopg_binary")
        for where in (spec.submodule_search_locations or []) if spec else []:
            libs = sorted(Path(where).parent.glob("psycopg_binary.libs/libpq*.so*"))
            if libs:
                return str(libs[0])
        import ctypes.util

        found = ctypes.util.find_library("pq")
        if not found:
            raise OSError("no libpq")
        return found

    def execute(self, sql: str, params: tuple = ()) -> _Libpq:
        lib = self.lib
        n = 0
        while "%s" in sql:  # psycopg's placeholders -> libpq's
            n += 1
            sql = sql.replace("%s", f"${n}", 1)
        values = (self.c_s * len(params))(*(str(v).encode() for v in params))
        res = lib.PQexecParams(self.conn, sql.encode(), len(params), None, values, None, None, 0)
        try:
            status = lib.PQresultStatus(res)
            if status not in (self.TUPLES_OK, self.COMMAND_OK):
                raise RuntimeError(f"libpq: {sql.split()[0]} failed ({status})")
            self.rows = [
                tuple(
                    None if lib.PQgetisnull(res, r, c) else lib.PQgetvalue(res, r, c).decode()
                    for c in range(lib.PQnfields(res))
                )
                for r in range(lib.PQntuples(res))
            ]
        finally:
            lib.PQclear(res)
        return self

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        if self.conn:
            self.lib.PQfinish(self.conn)
            self.conn = None


def _postgres(url: str):
    from urllib.parse import parse_qsl, unquote, urlsplit

    u = urlsplit(url)
    query = parse_qsl(u.query, keep_blank_values=True)
    if "," in u.netloc or len({k for k, _ in query}) != len(query) or u.fragment:
        raise Fallback("a URL form left to SQLAlchemy")
    kwargs: dict[str, Any] = dict(query)
    if u.username:
        kwargs["user"] = unquote(u.username)
    if u.password:
        kwargs["password"] = unquote(u.password)
    if u.hostname:
        kwargs["host"] = u.hostname
    if u.port:
        kwargs["port"] = u.port
    if u.path and u.path != "/":
        kwargs["dbname"] = unquote(u.path[1:])
    try:
        conn = _Libpq(kwargs)
        conn.execute("BEGIN")
        return conn, "%s"
    except Exception:  # noqa: BLE001 - no usable libpq here, or it refused: psycopg, which words any error
        import psycopg

        return psycopg.connect(**kwargs), "%s"


def _connect(url: str):
    if url.startswith("sqlite:///"):
        return _sqlite(url)
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return _postgres("postgresql://" + url[len(prefix) :])
    raise Fallback("another driver")


def read_status(url: str, job: str | None, name: str | None) -> dict[str, Any]:
    """The job addressed as jobs.find_job addresses it (by --name; by id, else as a name; else the newest), and
    reporting.status_dict of it, from one read transaction."""
    try:
        return _read_status(url, job, name)
    except Fallback:
        raise
    except Exception as e:  # noqa: BLE001 - the store's error: the full path reads it again and words it
        raise Fallback(f"the store answered {type(e).__name__}") from e


def _read_status(url: str, job: str | None, name: str | None) -> dict[str, Any]:
    from .money import usd_json

    conn, p = _connect(url)
    try:
        try:
            (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
        except Exception as e:  # noqa: BLE001 - no schema yet
            raise Fallback("no schema") from e
        if revision is None or revision != head_revision_from_files():
            raise Fallback("the store is not at the newest migration: the full path migrates it")
        newest = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE name = {p} ORDER BY created_at DESC LIMIT 1"
        if name is not None:
            row = conn.execute(newest, (name,)).fetchone()
        elif job is not None:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = {p}", (job,)).fetchone()
            row = row or conn.execute(newest, (job,)).fetchone()
        else:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT 1").fetchone()
        if row is None:
            raise Fallback("no such job: the full path says so, naming the store")
        (job_id, status, spent, reserved, budget, invalid, stop_reason, total, *finished) = row
        (running,) = conn.execute(
            f"SELECT count(*) FROM tasks WHERE job_id = {p} AND status = 'running'", (job_id,)
        ).fetchone()
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()
    spent, reserved, budget, invalid = (None if v is None else int(v) for v in (spent, reserved, budget, invalid))
    counts = {s: int(n or 0) for s, n in zip(_FINISHED, finished)}
    counts["running"] = int(running or 0)
    counts["total"] = int(total or 0)
    counts["queued"] = counts["total"] - counts["running"] - sum(counts[s] for s in _FINISHED)
    return {
        "job_id": job_id,
        "status": status,
        "counts": {k: counts[k] for k in ("total", "queued", "running", "succeeded", "failed", "skipped", "cancelled")},
        "spent_usd": usd_json(spent),
        "reserved_usd": usd_json(reserved),
        "budget_usd": usd_json(budget),
        "invalid_lines": invalid,
        "stop_reason": stop_reason,
    }
