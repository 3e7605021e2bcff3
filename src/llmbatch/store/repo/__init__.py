"""Repository functions for jobs and tasks: creation, leased claims, outcomes and the read side.
Synchronous SQLAlchemy Core. The money-moving operations and the `attempts` table belong to the ledger
(ledger/); transaction helpers are in tx.py.

By concern:
- jobs.py: the job rows: create, read, task counts, the terminal status, cancel and retry;
- leases.py: the tasks' leases: seq ranges to dispatch, claim, renew, release, record the outcome, and the
  work a dead worker or a lost message left (stalled jobs, expired leases);
- reading.py: a job's rows in bulk for reports and exports (tasks, ledger rows, input errors, per model).
Callers use `repo.<name>`, re-exported here (TaskOutcome too: it is defined in outcomes.py).
"""

from __future__ import annotations

from ..outcomes import TaskOutcome
from .jobs import (
    create_job,
    finish_job_if_done,
    get_job,
    has_open_tasks,
    is_cancel_requested,
    latest_job_id,
    list_jobs,
    new_job_id,
    request_cancel,
    requeue_for_retry,
    set_job_counts,
    skip_reason_counts,
    task_counts,
)
from .leases import (
    ClaimedTask,
    claim_tasks,
    expired_lease_ranges,
    open_seq_ranges,
    record_outcome,
    release_claims,
    renew_leases,
    seq_ranges,
    stalled_jobs,
)
from .reading import by_model, input_error_rows, iter_attempt_rows, iter_task_rows

__all__ = [
    "ClaimedTask",
    "TaskOutcome",
    "by_model",
    "claim_tasks",
    "create_job",
    "expired_lease_ranges",
    "finish_job_if_done",
    "get_job",
    "has_open_tasks",
    "input_error_rows",
    "is_cancel_requested",
    "iter_attempt_rows",
    "iter_task_rows",
    "latest_job_id",
    "list_jobs",
    "new_job_id",
    "open_seq_ranges",
    "record_outcome",
    "release_claims",
    "renew_leases",
    "request_cancel",
    "requeue_for_retry",
    "seq_ranges",
    "set_job_counts",
    "skip_reason_counts",
    "stalled_jobs",
    "task_counts",
]
