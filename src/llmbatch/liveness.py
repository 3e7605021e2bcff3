"""Worker liveness from the event loop: keep this process's presence row alive, notice when it lapsed, and
hand the tasks of dead workers back to the queue (see store/presence.py for the rules).

Why the event loop renews it (and not a side thread): a worker whose loop is stuck cannot run its tasks either,
so for its tasks it is as good as dead. Renewals bypass the group-commit queue (their own thread and
transaction), so a busy store queue does not make a healthy worker look dead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections import defaultdict
from typing import Callable

from .store import presence, repo

log = logging.getLogger("llmbatch.liveness")

# Renewals per TTL: a worker must miss this many in a row before it is taken for dead.
BEATS_PER_TTL = 4


class Presence:
    """This process's presence record. `epoch` grows each time the record is found lapsed: a task claimed
    under an older epoch may have been handed to another worker, so it must not start new calls."""

    def __init__(
        self,
        store,
        worker_id: str,
        *,
        ttl_s: float,
        chunk_size: int,
        publish: Callable[[str, int, int], None] | None = None,
    ):
        self.store = store
        self._chunk_size, self._publish = chunk_size, publish
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.epoch = 0
        self._started_at = time.time()
        self._host, self._pid = socket.gethostname(), os.getpid()
        self._last_ok = 0.0  # monotonic time of the last renewal that committed
        self._task: asyncio.Task | None = None
        self._renewing: asyncio.Future | None = None  # the renewal under way, shared by every caller

    async def start(self) -> None:
        """Write the record before the first claim, then keep renewing it."""
        await self.renew()
        self._task = asyncio.create_task(self._renew_forever(), name="llmbatch-presence")

    def fresh(self) -> bool:
        """True while the last renewal is recent enough that no sweeper can have taken our tasks: counted from
        when that renewal STARTED (its row expires a TTL after that), with half a TTL to spare."""
        return time.monotonic() - self._last_ok < self.ttl_s * 0.5

    async def renew(self) -> None:
        """One renewal at a time: a caller that comes while one is under way waits for that one (hundreds of
        tasks finding the presence stale at once under load used to start hundreds of renewals)."""
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew())
            self._renewing.add_done_callback(self._renewed)
        await asyncio.shield(self._renewing)

    def _renewed(self, fut: asyncio.Future) -> None:
        self._renewing = None
        if not fut.cancelled():
            fut.exception()  # seen by the callers that waited; retrieved here for those cancelled meanwhile

    async def _renew(self) -> None:
        started = time.monotonic()
        b = await self.store.with_engine(self._beat)
        self._last_ok = started
        if b.lapsed:
            self.epoch += 1
            log.warning(
                "worker %s: its presence had lapsed (frozen or cut off for over %.0fs); the tasks it "
                "held may now run elsewhere and will not be recorded here",
                self.worker_id,
                self.ttl_s,
            )

    async def confirm(self) -> int:
        """The current epoch, after a renewal if the last one is not fresh (a frozen process just woke up)."""
        if not self.fresh():
            await self.renew()
        return self.epoch

    def _beat(self, engine):
        with engine.begin() as conn:
            return presence.beat(
                conn,
                worker_id=self.worker_id,
                host=self._host,
                pid=self._pid,
                started_at=self._started_at,
                ttl_s=self.ttl_s,
            )

    async def _renew_forever(self) -> None:
        interval = self.ttl_s / BEATS_PER_TTL
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except Exception as e:  # noqa: BLE001 - a store blip: the next beat tries again
                log.warning("presence renewal failed: %s", type(e).__name__)

    async def stop(self) -> int:
        """Leave on purpose: hand back every task this process still holds (re-published when this is a Celery
        worker). Returns how many."""
        if self._task is not None:
            self._task.cancel()
        try:
            released = await self.store.with_engine(presence.leave, self.worker_id)
            _publish_ranges(released, self._chunk_size, self._publish)
            return len(released)
        except Exception as e:  # noqa: BLE001 - the leases then expire as before
            log.warning("could not hand back this worker's tasks on stop: %s: %s", type(e).__name__, e)
            return 0


def _publish_ranges(
    released: list[tuple[str, int]], chunk_size: int, publish: Callable[[str, int, int], None] | None
) -> list[tuple[str, int, int]]:
    by_job: dict[str, list[int]] = defaultdict(list)
    for job_id, seq in released:
        by_job[job_id].append(seq)
    ranges = [
        (job_id, lo, hi) for job_id, seqs in by_job.items() for lo, hi in repo.seq_ranges(sorted(seqs), chunk_size)
    ]
    if publish is not None:
        for job_id, lo, hi in ranges:
            publish(job_id, lo, hi)
    return ranges


def release_dead_workers(
    engine, *, lease_s: float, ttl_s: float, chunk_size: int, publish: Callable[[str, int, int], None] | None = None
) -> list[tuple[str, int, int]]:
    """One sweep: requeue the tasks of dead workers, settle the calls they left in flight (billed at their
    reservation: the most they can have cost), and (Celery) publish
    a unit for each released range. Returns the released (job_id, lo, hi) ranges. Safe to run from every
    worker at once: each task is released by exactly one sweeper (a conditional UPDATE)."""
    released = presence.release_dead(engine, lease_s=lease_s, ttl_s=ttl_s)
    with engine.begin() as conn:
        presence.prune(conn)
    return _publish_ranges(released, chunk_size, publish)


async def sweep_forever(store, settings, publish: Callable[[str, int, int], None] | None) -> None:
    """Every `sweep_interval_s` (jittered), hand dead workers' tasks back. Runs in each worker's loop."""
    interval = settings.sweep_interval_s
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            ranges = await store.with_engine(
                release_dead_workers,
                lease_s=settings.lease_seconds,
                ttl_s=settings.presence_ttl_s,
                chunk_size=settings.chunk_size,
                publish=publish,
            )
            if ranges:
                n = sum(hi - lo + 1 for _, lo, hi in ranges)
                log.warning("handed back %d task(s) of dead worker(s) in %d unit(s)", n, len(ranges))
        except Exception as e:  # noqa: BLE001 - the sweeper must survive store/broker outages
            log.warning("dead-worker sweep failed: %s: %s", type(e).__name__, e)
