"""A task's terminal record: TaskOutcome and the one statement that writes it. Only the lease holder of a
running task can; a redelivered copy that lost its lease records nothing. Used by repo.record_outcome and by
the ledger's settle_and_record (which charges the task in the same UPDATE)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, update

from . import job_counts
from .prepared import Prepared
from .schema import TaskStatus, tasks

# Hot-path statements are built once: constructing a SQLAlchemy statement per call costs ~10x executing it.
# Bind names carry a b_ prefix because SQLAlchemy reserves column names for SET clauses.
FINISH_TASK = Prepared(
    update(tasks)
    .where(
        tasks.c.job_id == bindparam("b_job"),
        tasks.c.seq == bindparam("b_seq"),
        tasks.c.lease_owner == bindparam("b_worker"),
        tasks.c.status == TaskStatus.running,
    )
    .values(
        status=bindparam("b_status"),
        provider=bindparam("b_provider"),
        model=bindparam("b_model"),
        output=bindparam("b_output"),
        error=bindparam("b_error"),
        skip_reason=bindparam("b_skip"),
        escalations=tasks.c.escalations + bindparam("b_escalations"),
        lease_owner=None,
        lease_expires_at=None,
        finished_at=bindparam("b_now"),
    )
)


@dataclass(frozen=True)
class TaskOutcome:
    """A task's terminal record, written once by the lease holder."""

    job_id: str
    seq: int
    worker: str
    status: str
    provider: str | None = None
    model: str | None = None
    output: Any = None
    error: str | None = None
    skip_reason: str | None = None
    escalations: int = 0

    def params(self) -> dict[str, Any]:
        return {
            "b_job": self.job_id,
            "b_seq": self.seq,
            "b_worker": self.worker,
            "b_status": self.status,
            "b_provider": self.provider,
            "b_model": self.model,
            "b_output": orjson.dumps(self.output).decode() if self.output is not None else None,
            "b_error": self.error,
            "b_skip": self.skip_reason,
            "b_escalations": self.escalations,
            "b_now": time.time(),
        }


def finish_task(conn: Connection, outcome: TaskOutcome, rows: Any) -> bool:
    """FINISH_TASK; when it recorded, the job's finished count moves too (`rows`: the transaction's
    ledger.budget.BudgetRows, see job_counts)."""
    if FINISH_TASK.run(conn, outcome.params()) != 1:
        return False
    job_counts.note(rows, outcome.job_id, outcome.status)
    return True
