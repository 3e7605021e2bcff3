"""Opening the store: one engine per URL, SQLite tuned for concurrent writers, migrations applied on first use."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

from ..errors import StoreError, StoreWriteError

_MIGRATIONS = Path(__file__).with_name("migrations")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    # Users write postgres:// or postgresql://; we ship psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    # WAL lets readers (status --watch) run beside the writer; NORMAL sync is durable across process crashes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_READ_ONLY = "llmbatch_read_only"


def reading(engine: Engine) -> Connection:
    """A connection for reads only. On SQLite its transactions do not take the write lock, so `status --watch`
    beside a running job neither waits for the writer's batches nor delays them. Use as a context manager."""
    return engine.connect().execution_options(**{_READ_ONLY: True})


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)

        # pysqlite's own transaction handling defers BEGIN; issue BEGIN IMMEDIATE ourselves so a
        # read-then-write transaction takes the write lock up front instead of failing with SQLITE_BUSY.
        @event.listens_for(engine, "connect")
        def _no_pysqlite_tx(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Readers (status, report, results: see reading()) take no lock: in WAL mode a deferred
            # transaction reads a snapshot and neither waits for the writer nor holds it up.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")
    else:
        engine = create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True, pool_recycle=1800)
    return engine


def get_engine(url: str, *, migrate: bool = True) -> Engine:
    """The process-wide engine for `url`, migrated to the newest schema."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url)
            try:
                if migrate:
                    upgrade(engine)
            except Exception as e:  # noqa: BLE001 - surface a clear store error, keep the cause
                engine.dispose()
                known = classify_store_error(e, url)
                if known is not None:
                    raise known from e
                raise StoreError(f"cannot open the store at {redact_url(url)}: {_first_line(e)}") from e
            _engines[url] = engine
        return engine


# Store errors that retrying cannot fix, each with what to do. Matched on the driver's message (SQLite) or
# SQLSTATE (Postgres: 53100 disk_full, 53200 out_of_memory, 25006 read_only_sql_transaction).
_WRITE_FAILURES = (
    (
        ("database or disk is full", "53100", "could not extend file", "no space left on device"),
        "the disk holding the store is full",
        "free disk space, then `llmbatch resume`",
    ),
    (
        ("attempt to write a readonly database", "25006", "read-only transaction", "readonly database"),
        "the store is read-only",
        "make the database (and its directory) writable, then `llmbatch resume`",
    ),
    (
        ("database is locked", "database table is locked"),
        "the store is locked by another process",
        "stop the other process holding it, then `llmbatch resume`",
    ),
)


def classify_store_error(e: BaseException, url: str | None = None) -> StoreError | None:
    """A StoreWriteError with its own message for a full disk, a read-only or a locked database; None for
    anything else (a genuine connection drop is retried by the caller)."""
    text_ = f"{getattr(getattr(e, 'orig', None), 'sqlstate', '') or ''} {e}".lower()
    for needles, what, fix in _WRITE_FAILURES:
        if any(n in text_ for n in needles):
            where = f" ({redact_url(url)})" if url else ""
            return StoreWriteError(f"{what}{where}: {fix}")
    return None


# Postgres aborts one of two transactions that wait on each other's rows (deadlock_detected) or that a
# serializable snapshot cannot order (serialization_failure); run again, the aborted one succeeds.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


def is_transient_conflict(e: BaseException) -> bool:
    """Whether `e` is a lock conflict the store resolved by aborting this transaction: worth running again."""
    return getattr(getattr(e, "orig", None), "sqlstate", None) in _CONFLICT_SQLSTATES


def dispose_all() -> None:
    with _lock:
        for e in _engines.values():
            e.dispose()
        _engines.clear()


def _first_line(e: BaseException) -> str:
    """A driver error's first line, without SQLAlchemy's '[SQL: ...]' and background-link tail."""
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<database url>"


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str | None:
    """The newest migration. Read from the migration files' `revision`/`down_revision` lines: loading
    alembic's script directory costs ~150 ms, and every command (`status` too) checks this on start.
    Falls back to alembic when the files are not a simple chain."""
    from ..status_reader import head_revision_from_files

    head = head_revision_from_files()
    if head is not None:
        return head
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Apply pending migrations. Cheap when already at head; serialized across processes on Postgres."""
    if current_revision(engine) == head_revision():
        return
    from alembic import command

    if is_sqlite(engine):
        command.upgrade(_alembic_config(engine), "head")
        return
    # Several workers may start at once: one advisory lock makes the upgrade happen once.
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(7351001)"))
        try:
            conn.commit()
            cfg = _alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7351001)"))
            conn.commit()
