"""Task-level flow: claimed tasks go onto the engine's in-flight slots one by one, whatever unit they came in.

A unit (a seq range of a job) stays the claim and delivery granularity: `feed()` leases a unit's unfinished
tasks in one store transaction and schedules each of them as its own asyncio task. Each call waits for an
in-flight slot (`Engine.slots`, held from the rate-limit wait to the answer: see Engine.run_claimed), so a
slot freed by any task is taken at once by the next claimed task that is ready to call, and a unit's
slowest task never holds the other slots idle (the convoy of issue 14).

The claim-ahead is bounded: `feed()` returns (and the caller fetches the next unit) only once the tasks
claimed and not finished (in flight or waiting for a slot) leave room for another unit under
`concurrency + ahead`. So memory and leases stay flat on a million-task job, and another worker gets the rest. One heartbeat renews
the leases of every claimed, unfinished task.

`stop_claiming()` is THE place that stops new work: `feed()` claims nothing after it (and says so), and
`release_unfinished()` hands back the leases of the tasks not finished.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ..engine import Engine
from ..store import repo

log = logging.getLogger("llmbatch.flow")


class TaskFlow:
    def __init__(
        self, engine: Engine, *, ahead: int | None = None, on_unit_done: Callable[[str], Awaitable[None]] | None = None
    ):
        """`ahead`: how many claimed tasks may wait for a slot beyond `engine.concurrency` (at least one unit is
        always allowed). The default is a whole set of slots: at a fixed latency every slot's answer comes in
        the same few milliseconds, and each freed slot must find a claimed, looked-up task ready to call, or it
        idles while units are claimed one store round trip at a time behind the wave's records (measured: with
        one unit ahead, ~0.3 s of half-empty slots at every wave). `on_unit_done(job_id)` runs when the last
        task of a fed unit finishes (Celery: the job may be done)."""
        self.engine = engine
        self.ahead = engine.concurrency if ahead is None else max(0, ahead)
        self.on_unit_done = on_unit_done
        self.held: dict[str, set[int]] = {}  # job -> seqs claimed here and not finished (leases to renew)
        self.waiting: dict[str, set[int]] = {}  # job -> claimed seqs not yet started (waiting for a slot)
        self.open = 0  # claimed tasks not finished
        self.claiming = True
        self._room = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------- claiming

    def stop_claiming(self) -> None:
        """No more claims from now on (a stopping worker, an interrupted run). Feeds waiting for room return."""
        self.claiming = False
        asyncio.ensure_future(self._wake())

    async def feed(self, job_id: str, lo: int, hi: int) -> int | None:
        """Claim the unit's unfinished tasks and schedule them, then wait until there is room for a next unit
        of this size. Returns how many were claimed, or None when claiming has stopped (nothing was claimed;
        the caller hands the unit back).

        Claim first, wait after: a unit in hand is always leased, so if this process dies while it waits, the
        lease expires and the sweeper re-queues the tasks (a Celery message is acked only when this returns).
        The wait is the back-pressure: a Celery worker takes its next message only after it."""
        if not self.claiming:
            return None
        ctx, claimed = await self.engine.claim(job_id, lo, hi)
        if claimed:
            self.open += len(claimed)
            held = self.held.setdefault(job_id, set())
            waiting = self.waiting.setdefault(job_id, set())
            unit = _Unit(len(claimed))
            for c in claimed:
                held.add(c.seq)
                waiting.add(c.seq)
                t = asyncio.create_task(self._run(ctx, c, unit))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            if self._heartbeat is None:
                self._heartbeat = asyncio.create_task(self._renew_forever())
        # Room for the next unit: with it, at most `ahead` (or one unit, if units are bigger) wait beyond the slots.
        width = hi - lo + 1
        limit = self.engine.concurrency + max(self.ahead, width)
        async with self._room:
            await self._room.wait_for(lambda: not self.claiming or self.open + width <= limit)
        return len(claimed)

    async def _run(self, ctx, claimed: repo.ClaimedTask, unit: "_Unit") -> None:
        job_id = ctx.job_id
        try:
            await self.engine.run_claimed(ctx, claimed, started=lambda: self.waiting[job_id].discard(claimed.seq))
        finally:
            self.waiting[job_id].discard(claimed.seq)
            self.held[job_id].discard(claimed.seq)
            self.open -= 1
            unit.left -= 1
            await self._wake()
        if unit.left == 0 and self.on_unit_done is not None:
            try:
                await self.on_unit_done(job_id)
            except Exception as e:  # noqa: BLE001 - a store blip here only delays the job's final status
                log.warning("job %s: unit-done check failed: %s", job_id, type(e).__name__)

    async def _wake(self) -> None:
        async with self._room:
            self._room.notify_all()

    # -------------------------------------------------------------------------------------- leases

    async def _renew_forever(self) -> None:
        settings = self.engine.settings
        interval = max(1.0, settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            for job_id, seqs in list(self.held.items()):
                if not seqs:
                    continue
                try:
                    await self.engine.renew_leases(job_id, sorted(seqs))
                except Exception as e:  # noqa: BLE001 - a store blip must not kill the flow; the next beat retries
                    log.warning("lease renewal for job %s failed: %s", job_id, type(e).__name__)

    # ------------------------------------------------------------------------------------ finishing

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every claimed task has finished (True), or `timeout` seconds passed (False; the tasks
        keep running). A task that failed outside the engine's own handling (the store is gone) is re-raised."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            done, _ = await asyncio.wait(list(self._tasks), timeout=left)
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if isinstance(exc, Exception):
                    raise exc
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        return True

    async def release_unfinished(self) -> dict[str, list[int]]:
        """Cancel what still runs and give every unfinished claim back to the queue (status queued, lease
        cleared) so another worker takes it now instead of after the lease expires. Exactly-once holds: a
        cancelled task's late record is refused (no lease), and a task that recorded first is not released.
        Returns job -> released seqs."""
        self.claiming = False
        held = {job_id: sorted(seqs) for job_id, seqs in self.held.items() if seqs}
        unstarted = {job_id: sorted(seqs) for job_id, seqs in self.waiting.items() if seqs}
        for t in list(self._tasks):  # a cancelled task leaves `held` as it ends: the snapshot above is what to release
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        out: dict[str, list[int]] = {}
        for job_id, seqs in held.items():
            n = await self.engine.store.call(
                repo.release_claims, job_id, seqs, worker=self.engine.worker_id, unstarted=unstarted.get(job_id, ())
            )
            if n:
                out[job_id] = seqs
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        return out


class _Unit:
    __slots__ = ("left",)

    def __init__(self, left: int):
        self.left = left
