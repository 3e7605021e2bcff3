"""Result lines of a job in input order: the task row, its final attempt's finish reason, cost and channel.
Streamed in pages; `result_jsonl` writes bytes without building dicts."""

from __future__ import annotations

import functools
from typing import Any, Iterator

import orjson
from sqlalchemy import Connection, bindparam, select

from ..money import json_default, usd_json
from ..store.schema import attempts, tasks


def usage_of(row) -> dict[str, int]:
    return {
        k: int(row[k] or 0)
        for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
    }


# The attempt columns a result line shows; the OpenAI export (with_final_attempt) wants the whole final attempt.
_FINAL_SHORT = (attempts.c.task_seq, attempts.c.finish_reason, attempts.c.channel)
_FINAL_FULL = (
    attempts.c.task_seq,
    attempts.c.attempt_no,
    attempts.c.model,
    attempts.c.served_model,
    attempts.c.finish_reason,
    attempts.c.provider_request_id,
    attempts.c.finished_at,
    attempts.c.started_at,
    attempts.c.input_tokens,
    attempts.c.cached_tokens,
    attempts.c.cache_write_tokens,
    attempts.c.output_tokens,
    attempts.c.reasoning_tokens,
    attempts.c.error_class,
    attempts.c.http_status,
    attempts.c.channel,
)
_RESULT_TASK = (
    tasks.c.seq,
    tasks.c.task_id,
    tasks.c.status,
    tasks.c.provider,
    tasks.c.model,
    tasks.c.output,
    tasks.c.error,
    tasks.c.input_tokens,
    tasks.c.cached_tokens,
    tasks.c.cache_write_tokens,
    tasks.c.output_tokens,
    tasks.c.reasoning_tokens,
    tasks.c.cost_picos,
    tasks.c.attempts,
    tasks.c.payload,
    tasks.c.skip_reason,
)


def _final_attempts(conn: Connection, job_id: str, lo: int, hi: int) -> dict[int, Any]:
    """The last attempt (highest attempt_no) of each task with lo <= seq <= hi: what the task's result is.
    Dicts of _FINAL_FULL's columns (the OpenAI export)."""
    rows = conn.execute(
        select(*_FINAL_FULL)
        .where(attempts.c.job_id == job_id, attempts.c.task_seq >= lo, attempts.c.task_seq <= hi)
        .order_by(attempts.c.task_seq, attempts.c.attempt_no)
    )
    final = {r.task_seq: r for r in rows}  # ordered by attempt_no: the last one stays
    return {seq: r._asdict() for seq, r in final.items()}


class _Raw:
    """A Core statement run on the connection's own DBAPI cursor, in the connection's transaction (one snapshot):
    plain tuples, none of SQLAlchemy's per-row work, which was half of `results`' time on a million tasks."""

    def __init__(self, conn: Connection, stmt) -> None:
        if not conn.in_transaction():
            conn.begin()  # as conn.execute would: on SQLite the reading() BEGIN, so every page sees one snapshot
        compiled = stmt.compile(dialect=conn.dialect)
        self.sql = compiled.string
        self.names = compiled.positiontup if compiled.positional else None
        self.defaults = compiled.params  # the statement's own (SQLite renders LIMIT ? OFFSET ?, offset 0)
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def all(self, params: dict[str, Any]) -> list[Any]:
        params = {**self.defaults, **params}
        self.cursor.execute(self.sql, tuple(params[n] for n in self.names) if self.names is not None else params)
        return list(self.cursor.fetchall())


_SEQ, _TASK_ID, _STATUS, _PROVIDER, _MODEL, _OUTPUT, _ERROR = range(7)  # _RESULT_TASK's positions
_IN, _CACHED, _WRITE, _OUT, _REASON, _COST, _ATTEMPTS, _PAYLOAD, _SKIP = range(7, 16)


def _result_pages(conn: Connection, job_id: str, page: int = 2000, *, full: bool = False):
    """(task rows, final attempt by seq) a page of tasks at a time, in input order: the result columns of the
    tasks (tuples in _RESULT_TASK's order) by keyset pages (an index range each), and their attempts (one
    range query per page). Memory stays flat at any job size, and no statement stays open across pages.
    The final attempt is (seq, finish_reason, channel), or with `full` a dict of _FINAL_FULL's columns."""
    task_q = _Raw(
        conn,
        select(*_RESULT_TASK)
        .where(tasks.c.job_id == bindparam("b_job"), tasks.c.seq > bindparam("b_last"))
        .order_by(tasks.c.seq)
        .limit(bindparam("b_page", literal_execute=False)),
    )
    final_q = _Raw(
        conn,
        select(*_FINAL_SHORT)
        .where(
            attempts.c.job_id == bindparam("b_job"),
            attempts.c.task_seq >= bindparam("b_lo"),
            attempts.c.task_seq <= bindparam("b_hi"),
        )
        .order_by(attempts.c.task_seq, attempts.c.attempt_no),
    )
    last = -1
    while True:
        rows = task_q.all({"b_job": job_id, "b_last": last, "b_page": page})
        if not rows:
            return
        lo, last = rows[0][_SEQ], rows[-1][_SEQ]
        if full:
            yield rows, _final_attempts(conn, job_id, lo, last)
        else:  # ordered by attempt_no: the last one stays
            yield rows, {a[0]: a for a in final_q.all({"b_job": job_id, "b_lo": lo, "b_hi": last})}


def result_lines(conn: Connection, job_id: str, *, with_final_attempt: bool = False) -> Iterator[dict[str, Any]]:
    """One dict per task in input order: the `results --format jsonl` shape. `usage` and `cost_usd` are the
    task's totals over all its billed attempts; `finish_reason` is the final attempt's, as the provider sent it.
    with_final_attempt adds `_final` (that attempt's ledger row) for the OpenAI export."""
    usd = functools.lru_cache(maxsize=4096)(usd_json)  # a job's task costs repeat: one Decimal per distinct cost
    for rows, finals in _result_pages(conn, job_id, full=with_final_attempt):
        for row in rows:
            final = finals.get(row[_SEQ])
            if with_final_attempt:
                finish, channel = (final["finish_reason"], channel_of(final)) if final else (None, None)
            else:
                finish, channel = (final[1], _channel_name(final[2])) if final else (None, None)
            line = _line(row, finish, usd(row[_COST]), channel)
            if with_final_attempt:
                line["_final"] = final
                line["_skip_reason"] = row[_SKIP]
            yield line


def result_jsonl(conn: Connection, job_id: str) -> Iterator[bytes]:
    """`results --format jsonl`, as bytes: a page of lines at a time, each exactly dumps_json(result line) + newline
    (cost_usd rendered once per distinct cost, as json_default renders the Decimal)."""
    dumps = orjson.dumps
    costs: dict[int, orjson.Fragment] = {}
    for rows, finals in _result_pages(conn, job_id):
        out = []
        for row in rows:
            final = finals.get(row[_SEQ])
            cost = costs.get(row[_COST])
            if cost is None and row[_COST] is not None:
                if len(costs) >= 65536:  # a job of many distinct costs: bounded memory
                    costs.clear()
                cost = costs[row[_COST]] = json_default(usd_json(row[_COST]))
            if final is None:
                out.append(dumps(_line(row, None, cost, None)))
            else:
                out.append(dumps(_line(row, final[1], cost, _channel_name(final[2]))))
        out.append(b"")
        yield b"\n".join(out)


def _line(row: tuple, finish_reason: str | None, cost_usd: Any, channel: str | None) -> dict[str, Any]:
    """A result line from a task row (_RESULT_TASK's tuple). The payload is only read for its metadata: parsed
    only when it can hold one."""
    payload, output = row[_PAYLOAD], row[_OUTPUT]
    return {
        "id": row[_TASK_ID],
        "status": row[_STATUS],
        "provider": row[_PROVIDER],
        "model": row[_MODEL],
        "output": orjson.loads(output) if output is not None else None,
        "error": row[_ERROR],
        "finish_reason": finish_reason,
        "usage": {
            "input_tokens": int(row[_IN] or 0),
            "cached_tokens": int(row[_CACHED] or 0),
            "cache_write_tokens": int(row[_WRITE] or 0),
            "output_tokens": int(row[_OUT] or 0),
            "reasoning_tokens": int(row[_REASON] or 0),
        },
        "cost_usd": cost_usd,
        "attempts": row[_ATTEMPTS],
        "metadata": orjson.loads(payload).get("metadata") if '"metadata"' in payload else None,
        "channel": channel,
    }


def _channel_name(channel: str | None) -> str:
    return "online" if channel is None or channel == "sync" else channel


def channel_of(attempt: dict[str, Any] | None) -> str | None:
    """The channel that answered a task: its final attempt's (online, flex, batch, cache); rows written before
    channels existed say "sync", which was online."""
    if attempt is None:
        return None
    return "online" if attempt["channel"] in (None, "sync") else attempt["channel"]
