"""What a BatchRunner keeps per job and per model while lines gather, and the renewal of what it holds."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .. import channels
from ..catalog import ModelInfo
from ..models import TaskLine
from ..routing import Candidate
from ..store import batches, repo

log = logging.getLogger("llmbatch.batch")

RENEW_CHUNK = 1000


@dataclass
class Line:
    claimed: repo.ClaimedTask
    task: TaskLine
    cand: Candidate
    body: dict
    bound: int  # upper bound at the batch price
    size: int  # bytes in the provider's batch file


@dataclass
class Group:
    model: ModelInfo
    lines: list[Line] = field(default_factory=list)
    last: float = 0.0


@dataclass
class JobState:
    created_at: float
    deadline_at: float | None
    fallback_at: float | None  # when unfinished batch work is cancelled and run online
    waiting: list[Line] = field(default_factory=list)  # lines that did not fit the budget yet
    rows: set[int] = field(default_factory=set)  # provider batches this process owns
    held: set[int] = field(default_factory=set)  # seqs this process holds outside a batch (gathering, online)
    work: set[asyncio.Task] = field(default_factory=set)

    def timing(self, turnaround_s: float, flex_timeout_s: float) -> channels.Timing:
        """What channels.choose weighs now: the job's span and time left, and the fallback margin."""
        if self.deadline_at is None:
            return channels.Timing(None, None, turnaround_s, flex_timeout_s, 0.0)
        fallback = 0.0 if self.fallback_at is None else self.deadline_at - self.fallback_at
        return channels.Timing(
            self.deadline_at - self.created_at, self.deadline_at - time.time(), turnaround_s, flex_timeout_s, fallback
        )


async def renew_leases(e, job_id: str, job: JobState) -> None:
    """Keep this worker's hold on the job's batches and on the tasks it holds outside them (gathering, online)."""
    lease_s = e.settings.lease_seconds
    try:
        if job.rows:
            await e.store.write(batches.renew, sorted(job.rows), e.worker_id, lease_s)
        held = sorted(job.held)
        for i in range(0, len(held), RENEW_CHUNK):  # SQL IN lists stay small
            await e.store.call(
                repo.renew_leases, job_id, held[i : i + RENEW_CHUNK], worker=e.worker_id, lease_s=lease_s
            )
    except Exception as exc:  # noqa: BLE001 - a store blip; the next beat retries
        log.warning("batch lease renewal for job %s failed: %s", job_id, type(exc).__name__)
