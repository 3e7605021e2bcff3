"""The read side of a job for reports and exports: its tasks and ledger rows in bulk (keyset pages, so
memory stays flat at any job size), its rejected input lines, and its ledger per model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from .. import reads
from ..schema import attempts, input_errors, tasks


def _pages(conn: Connection, table, key, job_id: str, batch: int, start):
    """Rows of one job in `key` order, fetched in keyset pages: memory stays flat at any job size."""
    last = start
    while True:
        rows = (
            conn.execute(select(table).where(table.c.job_id == job_id, key > last).order_by(key).limit(batch))
            .mappings()
            .all()
        )
        if not rows:
            return
        yield from rows
        last = rows[-1][key.name]


def iter_task_rows(conn: Connection, job_id: str, batch: int = 2000):
    """All tasks of a job in input order."""
    return _pages(conn, tasks, tasks.c.seq, job_id, batch, -1)


def iter_attempt_rows(conn: Connection, job_id: str, batch: int = 5000):
    """All ledger rows of a job in the order they were written."""
    return _pages(conn, attempts, attempts.c.id, job_id, batch, 0)


def input_error_rows(conn: Connection, job_id: str, limit: int | None = 1000) -> list[dict[str, Any]]:
    q = select(input_errors).where(input_errors.c.job_id == job_id).order_by(input_errors.c.line_no)
    rows = conn.execute(q.limit(limit) if limit is not None else q).mappings().all()
    return [dict(r) for r in rows]


def by_model(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    """Ledger aggregated per provider/model: attempts (failed ones included), tasks touched, tokens, cost; most
    expensive first. From the ledger groups (reads.py: one pass over the job's attempts, exact integers)."""
    return reads.by_model(reads.ledger_groups(conn, job_id))
