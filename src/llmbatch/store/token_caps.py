"""Each API token's daily cap, held by the same conditional reservation as the job budget and the global
daily cap (tx.py): a token's day is one more row of `budget_windows`, keyed "2026-11-30/tok_...", reserved
into at the end of the transaction with `spent + reserved + amount <= cap`. The attempt records the key
beside the global day in `attempts.budget_window`, so settlement releases both.

Jobs without an owner (the CLI's) cost one primary-key read per job per process, then nothing.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, func, select, update

from ..errors import BudgetExceeded
from .schema import api_tokens, attempts, jobs
from .tx import _JOB_DELTA, _RESERVE_WINDOW, _WINDOW_DELTA, PendingReservation, _window_upsert

# job id -> owner token id. A job's owner is set before it runs and never changes.
_OWNERS: dict[str, str | None] = {}
_OWNERS_MAX = 100_000


def _owner(conn: Connection, job_id: str) -> str | None:
    if job_id not in _OWNERS:
        if len(_OWNERS) >= _OWNERS_MAX:
            _OWNERS.clear()
        _OWNERS[job_id] = conn.execute(select(jobs.c.owner).where(jobs.c.id == job_id)).scalar()
    return _OWNERS[job_id]


def token_window(owner: str, now: float | None = None) -> str:
    from .repo import utc_day  # repo imports tx, which imports this module

    return f"{utc_day(now)}/{owner}"


def reserve_token_windows(conn: Connection, pending: list[PendingReservation], refused: dict) -> None:
    """Hold each reservation of an owned job in its token's daily window too; a reservation that does not
    fit is refused (scope "daily") and its job and global-window holds are given back."""
    by_owner: dict[str, list[PendingReservation]] = {}
    for r in pending:
        owner = _owner(conn, r.job_id)
        if owner is not None:
            by_owner.setdefault(owner, []).append(r)
    if not by_owner:
        return
    caps = dict(conn.execute(select(api_tokens.c.id, api_tokens.c.daily_cap_picos)
                             .where(api_tokens.c.id.in_(sorted(by_owner)),
                                    api_tokens.c.daily_cap_picos.is_not(None))).all())
    now = time.time()
    for owner in sorted(caps):  # lock order: token windows after the global ones, sorted
        window, cap, rs = token_window(owner, now), caps[owner], by_owner[owner]
        _window_upsert(conn, window, cap)
        held = {"b_window": window, "b_cap": cap}
        if conn.execute(_RESERVE_WINDOW, {**held, "b_amount": sum(r.amount for r in rs)}).rowcount:
            accepted = rs
        else:
            accepted = []
            for r in rs:
                if conn.execute(_RESERVE_WINDOW, {**held, "b_amount": r.amount}).rowcount:
                    accepted.append(r)
                    continue
                conn.execute(_JOB_DELTA, {"b_job": r.job_id, "b_reserved": -r.amount, "b_spent": 0, "b_now": now})
                if r.window is not None:
                    conn.execute(_WINDOW_DELTA, {"b_window": r.window, "b_reserved": -r.amount, "b_spent": 0})
                refused[r.attempt_id] = BudgetExceeded(
                    f"the API token's daily cap for {window.split('/')[0]} (UTC) is reached", scope="daily")
        if accepted:
            conn.execute(update(attempts).where(attempts.c.id.in_([r.attempt_id for r in accepted]))
                         .values(budget_window=func.coalesce(attempts.c.budget_window + " " + window, window)))
