"""RunnerBase: what BatchRunner's two sides share. The runner is split by concern: submit.py gathers lines
and sends batches, collect.py takes batches over, polls them and settles their results, runner.py is the
engine's hook and the planning; this module holds their state and the helpers both sides use (a provider's
batch client, the guarded background work, the online fallback of tasks a batch does not carry)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..catalog import ModelInfo
from ..providers.batch import BatchClient, batch_client
from ..store import batches, repo
from .settle import SETTLE_CHUNK, release_never_sent
from .state import Group, JobState, Line

log = logging.getLogger("llmbatch.batch")


class RunnerBase:
    def __init__(self, engine) -> None:
        self.e = engine
        self.s = engine.settings
        self.groups: dict[tuple[str, str], Group] = {}
        self.jobs: dict[str, JobState] = {}
        self._clients: dict[tuple[bool, str], BatchClient | None] = {}
        self._turnaround: dict[str, tuple[float, float]] = {}
        self._renewer: asyncio.Task | None = None

    if TYPE_CHECKING:
        # The two sides call each other: a sent batch is polled (collect.py), and a settled one lets the lines
        # waiting for money go out (submit.py). Declared here for the type checker only.
        async def _poll(
            self, ctx, job: JobState, client: BatchClient, model: ModelInfo, row_id: int, pid: str
        ) -> None: ...

        async def _send_all(self, ctx, job: JobState, model: ModelInfo, lines: list[Line]) -> None: ...

        async def _budget_check(self, ctx, job: JobState) -> None: ...

    def _client(self, simulate: bool, provider: str) -> BatchClient | None:
        key = (simulate, provider)
        if key not in self._clients:
            adapter = self.e.providers.get(simulate)[0].get(provider)
            self._clients[key] = batch_client(adapter) if adapter is not None else None
        return self._clients[key]

    # ------------------------------------------------------------------------------------ falling back online

    async def _release_row(self, ctx, job: JobState, row_id: int, why: str) -> None:
        """A batch that was never created: release every line and run the tasks online."""
        lines = await self.e.store.read(batches.open_lines, row_id)
        await release_never_sent(self.e, lines, why)
        await self.e.store.write(batches.mark, row_id, batches.FAILED, error=why, ended=True)
        job.rows.discard(row_id)
        for ln in lines:
            c = repo.ClaimedTask(ctx.job_id, ln["seq"], ln["task_id"], ln["payload"], ln["deliveries"])
            job.held.add(c.seq)
            self._spawn(ctx, job, self._online(ctx, job, c))

    async def _online(self, ctx, job: JobState, claimed: repo.ClaimedTask) -> None:
        try:
            await self.e.run_claimed(ctx, claimed)
        finally:
            job.held.discard(claimed.seq)
        await self.e.store.write(repo.finish_job_if_done, ctx.job_id)

    async def _record(self, ctx, claimed, status: str, *, error: str, skip: str | None = None) -> None:
        await self.e._finish(ctx, claimed, status=status, error=error, skip_reason=skip)

    async def _finish_many(self, ctx, job: JobState, lines: list[Line], status: str, error: str, *, skip: str) -> None:
        for i in range(0, len(lines), SETTLE_CHUNK):
            await asyncio.gather(
                *(self._record(ctx, ln.claimed, status, error=error, skip=skip) for ln in lines[i : i + SETTLE_CHUNK])
            )
        for ln in lines:
            job.held.discard(ln.claimed.seq)
        await self.e.store.write(repo.finish_job_if_done, ctx.job_id)

    # ------------------------------------------------------------------------------------ plumbing

    def _spawn(self, ctx, job: JobState, coro) -> None:
        t = asyncio.create_task(self._guard(ctx, coro))
        job.work.add(t)
        t.add_done_callback(job.work.discard)

    @staticmethod
    async def _guard(ctx, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a batch's bug must not kill the loop; its leases lapse and it is resumed
            log.exception(
                "job %s: batch work failed; its tasks are picked up again when their leases lapse", ctx.job_id
            )
