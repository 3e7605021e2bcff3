"""The hottest store statements, run on SQLite's driver cursor.

Each task of an embedded run sends about four statements (cache claim, reservation, settlement, outcome).
Through SQLAlchemy each costs ~60 µs of Python (execution context, parameter dict, result object) to ~5 µs
for the driver's own `execute`, and the store thread's Python competes with the event loop for the GIL.
A Prepared statement is the SQLAlchemy construct, kept as the one definition, compiled once for SQLite
(SQL text, bind order, literal values, type processors); on SQLite it runs on the connection's driver
cursor, inside the same transaction. Elsewhere (Postgres) it runs through SQLAlchemy as before.

Driver errors are raised as SQLAlchemy's (DBAPIError.instance), so the group-commit store classifies them
as it does every other store error.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


class _Compiled:
    __slots__ = ("sql", "order", "fixed", "processors", "caller_processors", "pick", "lists", "_sql_by_sizes")

    def __init__(self, stmt: Any, dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        if compiled.insert_prefetch or compiled.update_prefetch:
            # A Python-side column default is computed by SQLAlchemy's execution, which this path skips.
            raise ValueError(f"a Prepared statement must give every column it writes: {compiled.string}")
        names: Sequence[str] = compiled.positiontup or ()
        self.sql: str = compiled.string
        self.order = tuple(names)  # qmark: one entry per placeholder, a name repeats where the bind repeats
        processors: dict[str, Callable[[Any], Any]] = {}
        for name in set(names):
            bind = compiled.binds[name]
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                processors[name] = proc
        self.processors = processors
        # Binds with a value in the statement itself (`status == TaskStatus.running`, `settled=False`): not the
        # caller's. Their driver values are computed here, once, not at every call.
        fixed = {n: b.effective_value for n, b in compiled.binds.items() if not b.required and n in names}
        self.fixed = {n: processors[n](v) if n in processors else v for n, v in fixed.items()}
        self.caller_processors = tuple((n, p) for n, p in processors.items() if n not in fixed)
        # The positional arguments, in placeholder order, from the bound values (one C call)
        self.pick: Callable[[dict], tuple] = (
            operator.itemgetter(*names) if len(names) > 1 else lambda values: tuple(values[n] for n in names)
        )
        # IN lists (`bindparam(..., expanding=True)`): SQLAlchemy leaves a `__[POSTCOMPILE_name]` mark in the
        # SQL, rendered at each call as one placeholder per value; the SQL is kept per list length.
        self.lists = frozenset(n for n in names if compiled.binds[n].expanding)
        self._sql_by_sizes: dict[tuple[int, ...], str] = {}

    def bind(self, params: dict[str, Any]) -> tuple[str, tuple]:
        """(SQL, positional arguments) for one call."""
        if self.lists:
            return self._bind_lists({**params, **self.fixed})
        if self.caller_processors:
            values = {**params, **self.fixed}
            for name, proc in self.caller_processors:
                values[name] = proc(values[name])
        else:
            values = {**params, **self.fixed} if self.fixed else params
        return self.sql, self.pick(values)

    def _bind_lists(self, values: dict[str, Any]) -> tuple[str, tuple]:
        args: list[Any] = []
        sizes: list[int] = []
        for n in self.order:
            proc = self.processors.get(n) if n not in self.fixed else None  # fixed values are processed already
            if n in self.lists:
                items = list(values[n])
                if not items:
                    raise ValueError(f"a Prepared statement's IN list must not be empty: {n}")
                sizes.append(len(items))
                args.extend(map(proc, items) if proc is not None else items)
            else:
                args.append(proc(values[n]) if proc is not None else values[n])
        key = tuple(sizes)
        sql = self._sql_by_sizes.get(key)
        if sql is None:
            sql = self.sql
            lists = iter(sizes)
            for n in self.order:
                if n in self.lists:
                    sql = sql.replace(f"__[POSTCOMPILE_{n}]", ", ".join("?" * next(lists)), 1)
            if len(self._sql_by_sizes) < 256:  # a few list lengths recur (a unit's size); bounded all the same
                self._sql_by_sizes[key] = sql
        return sql, tuple(args)


def on_driver(conn: Connection) -> bool:
    """Whether Prepared statements run on this connection's driver cursor (SQLite) or through SQLAlchemy."""
    return conn.dialect.name == "sqlite"


class Prepared:
    """One statement (a SQLAlchemy construct with named bind parameters), run on the driver on SQLite."""

    __slots__ = ("stmt", "_sqlite")

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt  # the SQLAlchemy construct (an insert, update...): what other dialects run
        self._sqlite: _Compiled | None = None

    def first(self, conn: Connection, params: dict[str, Any]) -> tuple | None:
        """The first row the statement returns (RETURNING), or None."""
        if not on_driver(conn):
            row = conn.execute(self.stmt, params).first()
            return tuple(row) if row is not None else None
        rows = self._cursor(conn, params).fetchall()  # read to the end: the statement is finished, not pending
        return rows[0] if rows else None

    def all(self, conn: Connection, params: dict[str, Any]) -> list[tuple]:
        """Every row the statement returns (a SELECT, or RETURNING)."""
        if not on_driver(conn):
            return [tuple(row) for row in conn.execute(self.stmt, params)]
        return self._cursor(conn, params).fetchall()

    def run(self, conn: Connection, params: dict[str, Any]) -> int:
        """Run the statement; returns the number of rows it changed."""
        if not on_driver(conn):
            return conn.execute(self.stmt, params).rowcount
        return self._cursor(conn, params).rowcount

    def _compiled(self, conn: Connection) -> _Compiled:
        c = self._sqlite
        if c is None:
            c = self._sqlite = _Compiled(self.stmt, conn.dialect)
        return c

    def _cursor(self, conn: Connection, params: dict[str, Any]):
        sql, args = self._compiled(conn).bind(params)
        dbapi_conn = conn.connection.dbapi_connection  # pysqlite's connection (the driver's own, on SQLite)
        assert dbapi_conn is not None  # a live connection, inside its transaction
        dialect = conn.dialect
        try:
            return dbapi_conn.execute(sql, args)
        except dialect.loaded_dbapi.Error as e:
            raise DBAPIError.instance(sql, args, e, dialect.loaded_dbapi.Error, dialect=dialect) from e


def json_rows(rows: list[dict[str, Any]]) -> str:
    """A batch's rows as the one json parameter of a set-based statement on Postgres (`json_to_recordset`,
    see ledger/_bulk.py): one orjson call, where an array per column costs psycopg a Python loop per element."""
    return orjson.dumps(rows).decode()
