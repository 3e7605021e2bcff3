"""Per-job task counts kept on the job row, so `status` (and report, jobs, the watch bar) read them in O(1).

A job's total is `jobs.total_tasks` (set in the transaction that ingests its tasks; tasks are never added
or removed afterwards). The finished tasks are counted in `jobs.succeeded_tasks`, `failed_tasks`,
`skipped_tasks` and `cancelled_tasks`, moved in the same transaction as the task UPDATE that changes a task's
status, through the transaction's job-row part (ledger.budget.BudgetRows, flushed by tx.Deferred): like the
money deltas, the job row is touched once, last,
so the lock order stays "task rows first, then job rows". The unfinished tasks are not counted there: their
transitions (claim, release, lease takeover) are the hot path and would make every claim write the job row.
`running` is counted live instead (the (job_id, status) index: bounded by the leases held), and
queued = total - finished - running.

Every statement that can move a task into or out of a finished status calls one of:
  - note(rows, job_id, status, n): a task UPDATE with a known new status (record the outcome, poison), `rows`
    being the transaction's deferred.part(BudgetRows);
  - add(conn, job_id, status, n): the same, applied at once (request_cancel, which has no Deferred);
  - recount(conn, job_id): the rare bulk change whose old statuses are mixed (retry), and the migration.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from .prepared import Prepared
from .schema import TaskStatus, jobs, tasks

# finished task status -> its counter column on the job row
COLUMNS = {
    TaskStatus.succeeded: jobs.c.succeeded_tasks,
    TaskStatus.failed: jobs.c.failed_tasks,
    TaskStatus.skipped: jobs.c.skipped_tasks,
    TaskStatus.cancelled: jobs.c.cancelled_tasks,
}

# The finished-count deltas as SET clauses, each from a bind parameter `b_<status>` (see params()): _ADD here,
# and the job-row UPDATE at the end of a transaction (ledger.budget), which moves them with the money.
SET_DELTAS = {col: col + bindparam(f"b_{status}") for status, col in COLUMNS.items()}

_ADD = Prepared(update(jobs).where(jobs.c.id == bindparam("b_job")).values(SET_DELTAS))


def params(deltas: dict[str, int]) -> dict[str, int]:
    """SET_DELTAS' bind parameters for these finished-status deltas (0 for a status not in them)."""
    return {f"b_{s}": deltas.get(s, 0) for s in COLUMNS}


def note(rows: Any, job_id: str, status: str, n: int = 1) -> None:
    """`n` tasks of `job_id` just became `status` (queued/running before): counted at the end of the
    transaction (BudgetRows.flush, in its one job-row UPDATE). Not a finished status: nothing to count."""
    if n and status in COLUMNS:
        d = rows.task_counts.setdefault(job_id, {})
        d[status] = d.get(status, 0) + n


def add(conn: Connection, job_id: str, status: str, n: int) -> None:
    """note() applied at once, for a statement that runs outside a Deferred transaction."""
    if n and status in COLUMNS:
        _ADD.run(conn, {"b_job": job_id, **params({status: n})})


def exact_counts(conn: Connection, job_id: str) -> dict[str, int]:
    """Tasks of the job per status, counted from the tasks table (one GROUP BY over the (job_id, status) index)."""
    counts = {s: 0 for s in TaskStatus.all}
    for status, n in conn.execute(
        select(tasks.c.status, func.count()).where(tasks.c.job_id == job_id).group_by(tasks.c.status)
    ):
        counts[status] = n
    return counts


def recount(conn: Connection, job_id: str) -> None:
    """Set the job's finished counts from the tasks table (after a change whose old statuses are mixed)."""
    counts = exact_counts(conn, job_id)
    conn.execute(update(jobs).where(jobs.c.id == job_id).values({col: counts[s] for s, col in COLUMNS.items()}))


_RUNNING = (
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.job_id == bindparam("b_job"), tasks.c.status == TaskStatus.running)
    .scalar_subquery()
)
_SUMMARY = select(jobs.c.total_tasks, *COLUMNS.values(), _RUNNING.label("running")).where(
    jobs.c.id == bindparam("b_job")
)


def counts(conn: Connection, job_id: str) -> dict[str, int]:
    """The `status` counts (total, queued, running and each finished status) from the job row and a count
    of the running tasks, in one statement (one snapshot). Same keys as repo.task_counts."""
    row = conn.execute(_SUMMARY, {"b_job": job_id}).mappings().first()
    if row is None:
        return {s: 0 for s in (*TaskStatus.all, "total")}
    out = {s: int(row[col.name] or 0) for s, col in COLUMNS.items()}
    out["running"] = int(row["running"] or 0)
    out["total"] = int(row["total_tasks"] or 0)
    out["queued"] = out["total"] - out["running"] - sum(out[s] for s in COLUMNS)
    return out
