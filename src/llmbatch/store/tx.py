"""Transactions: the engine-level/connection-level forms of an operation, and the job-row work deferred to the
end of a transaction.

Why defer: every reservation and settlement changes its job's row (and the daily window's row). Done where
the operation runs, the first such UPDATE takes the row lock and holds it while the rest of the transaction
(a whole batch of operations, under group commit) is sent, so workers queue on one row. Deferred, each
transaction touches each job row once or twice, last, just before commit. Lock order is then the same
everywhere: task and attempt rows first, then job rows in sorted order, then window rows in sorted order.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine, bindparam, delete, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import BudgetExceeded
from ..money import exact_usd
from . import job_counts
from .schema import JobStatus, attempts, budget_windows, jobs

T = TypeVar("T")


@dataclass
class PendingReservation:
    job_id: str
    task_seq: int
    amount: int
    window: str | None
    cap: int | None
    attempt_id: int


@dataclass
class Deferred:
    """Job-row and window-row work collected from the operations of one transaction, applied by flush()."""

    job_deltas: dict[str, list[int]] = field(default_factory=dict)  # job -> [reserved delta, spent delta]
    window_deltas: dict[str, list[int]] = field(default_factory=dict)
    reservations: list[PendingReservation] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # jobs claimed from: queued -> running
    task_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # job -> finished-status deltas (job_counts)

    def add_settlement(self, job_id: str, window: str | None, reserved: int, cost: int) -> None:
        d = self.job_deltas.setdefault(job_id, [0, 0])
        d[0] -= reserved
        d[1] += cost
        for key in window.split() if window else ():  # the global day and/or a token's day (token_caps.py)
            w = self.window_deltas.setdefault(key, [0, 0])
            w[0] -= reserved
            w[1] += cost

    def flush(self, conn: Connection) -> dict[int, BudgetExceeded]:
        """Apply everything; returns the reservations refused, by attempt id (their rows are removed)."""
        now = time.time()
        refused: dict[int, BudgetExceeded] = {}
        by_job: dict[str, list[PendingReservation]] = {}
        for r in self.reservations:
            by_job.setdefault(r.job_id, []).append(r)
        # Every job listed gets its last_activity_at stamped (stalled-job detection) with its deltas.
        for job_id in sorted(set(self.job_deltas) | self.started | set(by_job) | set(self.task_counts)):
            reserved, spent = self.job_deltas.get(job_id, (0, 0))
            conn.execute(_JOB_DELTA, {"b_job": job_id, "b_reserved": reserved, "b_spent": spent, "b_now": now})
            if job_id in self.task_counts:
                job_counts.apply(conn, job_id, self.task_counts[job_id])
            if job_id in self.started:
                conn.execute(_JOB_STARTED, {"b_job": job_id, "b_now": now})
            if job_id in by_job:
                _reserve_in_job(conn, by_job[job_id], refused)
        windows = {r.window for r in self.reservations if r.window and r.attempt_id not in refused}
        for window in sorted(set(self.window_deltas) | windows):
            reserved, spent = self.window_deltas.get(window, (0, 0))
            if reserved or spent:
                conn.execute(_WINDOW_DELTA, {"b_window": window, "b_reserved": reserved, "b_spent": spent})
            if window in windows:
                _reserve_in_window(conn, [r for r in self.reservations
                                          if r.window == window and r.attempt_id not in refused], refused)
        reserve_token_windows(conn, [r for r in self.reservations if r.attempt_id not in refused], refused)
        if refused:  # never called: the attempt rows go (tasks.attempts counts settled attempts only)
            conn.execute(delete(attempts).where(attempts.c.id.in_(list(refused))))
        return refused


def _reserve_in_job(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    """All of a job's reservations in this transaction with one conditional UPDATE when they fit together;
    one by one, in order, when they do not (near the cap)."""
    job_id = pending[0].job_id
    if conn.execute(_RESERVE_JOB, {"b_job": job_id, "b_amount": sum(r.amount for r in pending)}).rowcount:
        return
    for r in pending:
        if not conn.execute(_RESERVE_JOB, {"b_job": job_id, "b_amount": r.amount}).rowcount:
            refused[r.attempt_id] = BudgetExceeded(
                f"the job budget cannot hold another {exact_usd(r.amount)} call", scope="job")


def _reserve_in_window(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    window, cap = pending[0].window, pending[0].cap
    _window_upsert(conn, window, cap)
    if conn.execute(_RESERVE_WINDOW, {"b_window": window, "b_cap": cap,
                                      "b_amount": sum(r.amount for r in pending)}).rowcount:
        return
    for r in pending:
        if not conn.execute(_RESERVE_WINDOW, {"b_window": window, "b_cap": cap, "b_amount": r.amount}).rowcount:
            # The job row already holds it (locked by this transaction): give it back there.
            conn.execute(_JOB_DELTA, {"b_job": r.job_id, "b_reserved": -r.amount, "b_spent": 0, "b_now": time.time()})
            refused[r.attempt_id] = BudgetExceeded(f"the global daily cap for {window} (UTC) is reached", scope="daily")


def _window_upsert(conn: Connection, window: str, cap_picos: int) -> None:
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(budget_windows)
    conn.execute(ins.values(window=window, cap_picos=cap_picos, spent_picos=0, reserved_picos=0)
                 .on_conflict_do_nothing(index_elements=["window"]))


# Built once: constructing a SQLAlchemy statement per call costs ~10x executing it. Bind names carry a b_
# prefix because SQLAlchemy reserves column names for SET clauses.
_JOB_DELTA = (
    update(jobs).where(jobs.c.id == bindparam("b_job"))
    .values(reserved_picos=jobs.c.reserved_picos + bindparam("b_reserved"),
            spent_picos=jobs.c.spent_picos + bindparam("b_spent"), last_activity_at=bindparam("b_now"))
)
_JOB_STARTED = (
    update(jobs).where(jobs.c.id == bindparam("b_job"), jobs.c.status == JobStatus.queued)
    .values(status=JobStatus.running, started_at=bindparam("b_now"))
)
_RESERVE_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"),
           (jobs.c.budget_picos.is_(None))
           | (jobs.c.spent_picos + jobs.c.reserved_picos + bindparam("b_amount") <= jobs.c.budget_picos))
    .values(reserved_picos=jobs.c.reserved_picos + bindparam("b_amount"))
)
_WINDOW_DELTA = (
    update(budget_windows).where(budget_windows.c.window == bindparam("b_window"))
    .values(reserved_picos=budget_windows.c.reserved_picos + bindparam("b_reserved"),
            spent_picos=budget_windows.c.spent_picos + bindparam("b_spent"))
)
_RESERVE_WINDOW = (
    update(budget_windows)
    .where(budget_windows.c.window == bindparam("b_window"),
           budget_windows.c.spent_picos + budget_windows.c.reserved_picos + bindparam("b_amount")
           <= bindparam("b_cap"))
    .values(reserved_picos=budget_windows.c.reserved_picos + bindparam("b_amount"), cap_picos=bindparam("b_cap"))
)


def in_transaction(fn: Callable[..., T]) -> Callable[..., T]:
    """Write `fn(conn, ...)`, call `fn(engine, ...)`: one transaction per call. The connection-level form
    stays reachable as `fn.on_conn` (the group-commit store runs many in one transaction). A function with a
    `deferred` parameter gets a Deferred, flushed before commit; a refused reservation raises (rolling back)."""
    takes_deferred = "deferred" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def run(engine: Engine, *args: Any, **kwargs: Any) -> T:
        with engine.begin() as conn:
            if not takes_deferred:
                return fn(conn, *args, **kwargs)
            deferred = Deferred()
            result = fn(conn, *args, deferred=deferred, **kwargs)
            refused = deferred.flush(conn)
            if refused:
                raise next(iter(refused.values()))
            return result

    run.on_conn = fn  # type: ignore[attr-defined]
    run.takes_deferred = takes_deferred  # type: ignore[attr-defined]
    return run


# At the end: token_caps builds on the statements above.
from .token_caps import reserve_token_windows  # noqa: E402
