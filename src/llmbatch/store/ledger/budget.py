"""The budget statements: holds and releases on the job rows and the daily windows, applied at the end of the
transaction (the ledger's part of tx.Deferred).

A reservation's hold is a conditional UPDATE, `spent + reserved + amount <= cap`, on each row that caps it:
- the job row (`jobs.budget_picos`; no budget, no limit);
- the global day's row of `budget_windows` (the daily cap), keyed "2026-11-30";
- the owning API token's day, one more row of `budget_windows`, keyed "2026-11-30/tok_...", whose cap is the
  token's `daily_cap_picos`. The attempt records its window keys in `attempts.budget_window` (space-separated),
  so settlement releases each of them.
A hold that does not fit any of these is refused (BudgetExceeded, scope "job" or "daily"): the holds it took
on the rows before are given back and its attempt row is removed.

Lock order (tx.py): job rows sorted, then global windows sorted, then token windows sorted. Jobs without an
owner (the CLI's) cost one primary-key read per job per process, then nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar
from datetime import datetime, timezone

from sqlalchemy import Boolean, Connection, and_, bindparam, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ...errors import BudgetExceeded
from ...money import exact_usd
from .. import job_counts
from ..prepared import Prepared
from ..schema import JobStatus, api_tokens, attempts, budget_windows, jobs


def utc_day(now: float | None = None) -> str:
    """The global daily window's key."""
    return datetime.fromtimestamp(now if now is not None else time.time(), tz=timezone.utc).strftime("%Y-%m-%d")


def token_window(owner: str, now: float | None = None) -> str:
    """An API token's daily window's key."""
    return f"{utc_day(now)}/{owner}"


@dataclass
class PendingReservation:
    job_id: str
    task_seq: int
    amount: int
    window: str | None
    cap: int | None
    attempt_id: int


@dataclass
class BudgetRows:
    """Job-row and window-row work collected from the operations of one transaction; flush() applies it
    (tx.Deferred calls it just before commit)."""

    LOCK_RANK: ClassVar[int] = 0  # the only deferred part today

    job_deltas: dict[str, list[int]] = field(default_factory=dict)  # job -> [reserved delta, spent delta]
    window_deltas: dict[str, list[int]] = field(default_factory=dict)
    reservations: list[PendingReservation] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # jobs claimed from: queued -> running
    task_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # job -> finished-status deltas (job_counts)

    def add_settlement(self, job_id: str, window: str | None, reserved: int, cost: int) -> None:
        d = self.job_deltas.setdefault(job_id, [0, 0])
        d[0] -= reserved
        d[1] += cost
        for key in window.split() if window else ():  # the global day and/or a token's day
            w = self.window_deltas.setdefault(key, [0, 0])
            w[0] -= reserved
            w[1] += cost

    def flush(self, conn: Connection, refused: dict[int, Exception]) -> None:
        """Apply everything; the reservations refused go into `refused`, by attempt id (their rows are removed)."""
        now = time.time()
        by_job: dict[str, list[PendingReservation]] = {}
        for r in self.reservations:
            by_job.setdefault(r.job_id, []).append(r)
        # Every job listed gets its last_activity_at stamped (stalled-job detection) with its deltas.
        for job_id in sorted(set(self.job_deltas) | self.started | set(by_job) | set(self.task_counts)):
            reserved, spent = self.job_deltas.get(job_id, (0, 0))
            _JOB_ROW.run(
                conn,
                {
                    "b_job": job_id,
                    "b_reserved": reserved,
                    "b_spent": spent,
                    "b_now": now,
                    "b_started": job_id in self.started,
                    **job_counts.params(self.task_counts.get(job_id, {})),
                },
            )
            if job_id in by_job:
                _reserve_in_job(conn, by_job[job_id], refused)
        windows = {r.window for r in self.reservations if r.window and r.attempt_id not in refused}
        for window in sorted(set(self.window_deltas) | windows):
            reserved, spent = self.window_deltas.get(window, (0, 0))
            if reserved or spent:
                _WINDOW_DELTA.run(conn, {"b_window": window, "b_reserved": reserved, "b_spent": spent})
            if window in windows:
                _reserve_in_window(
                    conn, [r for r in self.reservations if r.window == window and r.attempt_id not in refused], refused
                )
        _reserve_in_token_windows(conn, [r for r in self.reservations if r.attempt_id not in refused], refused)
        if refused:  # never called: the attempt rows go (tasks.attempts counts settled attempts only)
            conn.execute(delete(attempts).where(attempts.c.id.in_(list(refused))))


def _reserve_in_job(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    """All of a job's reservations in this transaction with one conditional UPDATE when they fit together;
    one by one, in order, when they do not (near the cap)."""
    job_id = pending[0].job_id
    if _RESERVE_JOB.run(conn, {"b_job": job_id, "b_amount": sum(r.amount for r in pending)}):
        return
    for r in pending:
        if not _RESERVE_JOB.run(conn, {"b_job": job_id, "b_amount": r.amount}):
            refused[r.attempt_id] = BudgetExceeded(
                f"the job budget cannot hold another {exact_usd(r.amount)} call", scope="job"
            )


def _reserve_in_window(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    window, cap = pending[0].window, pending[0].cap
    assert window is not None and cap is not None  # only reservations under a daily cap are grouped here
    _window_upsert(conn, window, cap)
    if _RESERVE_WINDOW.run(conn, {"b_window": window, "b_cap": cap, "b_amount": sum(r.amount for r in pending)}):
        return
    for r in pending:
        if not _RESERVE_WINDOW.run(conn, {"b_window": window, "b_cap": cap, "b_amount": r.amount}):
            # The job row already holds it (locked by this transaction): give it back there.
            _JOB_DELTA.run(conn, {"b_job": r.job_id, "b_reserved": -r.amount, "b_spent": 0, "b_now": time.time()})
            refused[r.attempt_id] = BudgetExceeded(f"the global daily cap for {window} (UTC) is reached", scope="daily")


# job id -> owner token id. A job's owner is set before it runs and never changes.
_OWNERS: dict[str, str | None] = {}
_OWNERS_MAX = 100_000


def _owner(conn: Connection, job_id: str) -> str | None:
    if job_id not in _OWNERS:
        if len(_OWNERS) >= _OWNERS_MAX:
            _OWNERS.clear()
        _OWNERS[job_id] = conn.execute(select(jobs.c.owner).where(jobs.c.id == job_id)).scalar()
    return _OWNERS[job_id]


def _reserve_in_token_windows(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    """Hold each reservation of an owned job in its token's daily window too; a reservation that does not
    fit is refused (scope "daily") and its job and global-window holds are given back."""
    by_owner: dict[str, list[PendingReservation]] = {}
    for r in pending:
        owner = _owner(conn, r.job_id)
        if owner is not None:
            by_owner.setdefault(owner, []).append(r)
    if not by_owner:
        return
    caps = dict(
        conn.execute(
            select(api_tokens.c.id, api_tokens.c.daily_cap_picos).where(
                api_tokens.c.id.in_(sorted(by_owner)), api_tokens.c.daily_cap_picos.is_not(None)
            )
        ).all()
    )
    now = time.time()
    for owner in sorted(caps):  # lock order: token windows after the global ones, sorted
        window, cap, rs = token_window(owner, now), caps[owner], by_owner[owner]
        _window_upsert(conn, window, cap)
        held = {"b_window": window, "b_cap": cap}
        if _RESERVE_WINDOW.run(conn, {**held, "b_amount": sum(r.amount for r in rs)}):
            accepted = rs
        else:
            accepted = []
            for r in rs:
                if _RESERVE_WINDOW.run(conn, {**held, "b_amount": r.amount}):
                    accepted.append(r)
                    continue
                _JOB_DELTA.run(conn, {"b_job": r.job_id, "b_reserved": -r.amount, "b_spent": 0, "b_now": now})
                if r.window is not None:
                    _WINDOW_DELTA.run(conn, {"b_window": r.window, "b_reserved": -r.amount, "b_spent": 0})
                refused[r.attempt_id] = BudgetExceeded(
                    f"the API token's daily cap for {window.split('/')[0]} (UTC) is reached", scope="daily"
                )
        if accepted:
            conn.execute(
                update(attempts)
                .where(attempts.c.id.in_([r.attempt_id for r in accepted]))
                .values(budget_window=func.coalesce(attempts.c.budget_window + " " + window, window))
            )


def _window_upsert(conn: Connection, window: str, cap_picos: int) -> None:
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(budget_windows)
    conn.execute(
        ins.values(window=window, cap_picos=cap_picos, spent_picos=0, reserved_picos=0).on_conflict_do_nothing(
            index_elements=["window"]
        )
    )


# Built once: constructing a SQLAlchemy statement per call costs ~10x executing it; run on SQLite's driver
# (prepared.py). Bind names carry a b_ prefix because SQLAlchemy reserves column names for SET clauses.
_JOB_DELTA = Prepared(
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"))
    .values(
        reserved_picos=jobs.c.reserved_picos + bindparam("b_reserved"),
        spent_picos=jobs.c.spent_picos + bindparam("b_spent"),
        last_activity_at=bindparam("b_now"),
    )
)
# A transaction's unconditional work on a job row, in one statement (each is a round trip on Postgres): the
# money deltas and activity (as _JOB_DELTA), the finished-task counts (job_counts), and, when tasks were
# claimed (`b_started`), queued -> running. SET expressions read the row as it was before the UPDATE.
_STARTS_NOW = and_(bindparam("b_started", type_=Boolean), jobs.c.status == JobStatus.queued)
_JOB_ROW = Prepared(
    update(jobs)
    .where(jobs.c.id == bindparam("b_job"))
    .values(
        {
            jobs.c.reserved_picos: jobs.c.reserved_picos + bindparam("b_reserved"),
            jobs.c.spent_picos: jobs.c.spent_picos + bindparam("b_spent"),
            jobs.c.last_activity_at: bindparam("b_now"),
            **job_counts.SET_DELTAS,
            jobs.c.status: case((_STARTS_NOW, JobStatus.running), else_=jobs.c.status),
            jobs.c.started_at: case((_STARTS_NOW, bindparam("b_now")), else_=jobs.c.started_at),
        }
    )
)
_RESERVE_JOB = Prepared(
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_job"),
        (jobs.c.budget_picos.is_(None))
        | (jobs.c.spent_picos + jobs.c.reserved_picos + bindparam("b_amount") <= jobs.c.budget_picos),
    )
    .values(reserved_picos=jobs.c.reserved_picos + bindparam("b_amount"))
)
_WINDOW_DELTA = Prepared(
    update(budget_windows)
    .where(budget_windows.c.window == bindparam("b_window"))
    .values(
        reserved_picos=budget_windows.c.reserved_picos + bindparam("b_reserved"),
        spent_picos=budget_windows.c.spent_picos + bindparam("b_spent"),
    )
)
_RESERVE_WINDOW = Prepared(
    update(budget_windows)
    .where(
        budget_windows.c.window == bindparam("b_window"),
        budget_windows.c.spent_picos + budget_windows.c.reserved_picos + bindparam("b_amount") <= bindparam("b_cap"),
    )
    .values(reserved_picos=budget_windows.c.reserved_picos + bindparam("b_amount"), cap_picos=bindparam("b_cap"))
)
