"""The embedded executor: one process, one event loop, the store on SQLite (or anything). No broker."""

from __future__ import annotations

import asyncio
import math

from ..engine import Engine
from ..store import ledger, repo


async def run_job(engine: Engine, job_id: str, *, chunk_size: int) -> str | None:
    """Run every unfinished task of the job; returns the job's terminal status."""
    ranges = await engine.store.read(repo.open_seq_ranges, job_id, chunk_size)
    # Claim a little ahead of the in-flight limit so the slots never starve, but not the whole job:
    # claimed tasks hold leases, and a huge job would otherwise sit leased in memory.
    window = math.ceil(engine.concurrency / chunk_size) + 1
    pending: set[asyncio.Task] = set()
    for lo, hi in ranges:
        while len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()
        pending.add(asyncio.create_task(engine.run_range(job_id, lo, hi)))
    if pending:
        for d in asyncio.as_completed(pending):
            await d
    await engine.batches.drain(job_id)  # batch-channel work of this job still polling in this process
    # Units of a concurrent worker (or leases that lapsed) may still hold tasks; report what the store says.
    await engine.store.with_engine(ledger.reconcile, job_id=job_id)
    return await engine.store.write(repo.finish_job_if_done, job_id)
