"""The embedded executor: one process, one event loop, the store on SQLite (or anything). No broker."""

from __future__ import annotations

from ..engine import Engine
from ..store import ledger, repo
from .flow import TaskFlow


async def run_job(engine: Engine, job_id: str, *, chunk_size: int) -> str | None:
    """Run every unfinished task of the job; returns the job's terminal status."""
    ranges = await engine.store.read(repo.open_seq_ranges, job_id, chunk_size)
    # Units are claimed (leased) one at a time, up to a set of slots ahead of the in-flight limit; their tasks
    # take the in-flight slots one by one (flow.py), so a slow task holds its own slot and nothing else.
    flow = TaskFlow(engine)
    for lo, hi in ranges:
        if await flow.feed(job_id, lo, hi) is None:  # flow.stop_claiming() was called
            break
    await flow.drain()
    await engine.batches.drain(job_id)  # batch-channel work of this job still polling in this process
    # Units of a concurrent worker (or leases that lapsed) may still hold tasks; report what the store says.
    await engine.store.with_engine(ledger.reconcile, job_id=job_id)
    return await engine.store.write(repo.finish_job_if_done, job_id)
