"""Submitting: the runner's sending side. Lines gather per job and model, are split to the provider's limits,
reserved with their batch's row in one transaction and sent; a batch that could not be created runs online,
and lines the budget cannot hold wait for a batch of the job to settle or are skipped (steps 1-3 of the
package's docstring)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from ..catalog import ModelInfo
from ..errors import BudgetExceeded, ProviderError
from ..providers.batch import BatchClient
from ..store import batches
from ..store.schema import TaskStatus
from .base import RunnerBase
from .poll import TICK_S
from .state import Group, JobState, Line

log = logging.getLogger("llmbatch.batch")


class Submitting(RunnerBase):
    # ------------------------------------------------------------------------------------ gathering

    def _gather(self, ctx, job: JobState, line: Line) -> None:
        key = (ctx.job_id, line.cand.model.key)
        group = self.groups.get(key)
        fresh = group is None
        if group is None:
            group = self.groups[key] = Group(line.cand.model)
        group.lines.append(line)
        group.last = time.monotonic()
        job.held.add(line.claimed.seq)
        if fresh:
            self._spawn(ctx, job, self._linger(ctx, job, key))

    async def _linger(self, ctx, job: JobState, key) -> None:
        while True:
            group = self.groups[key]
            client = self._client(ctx.simulate, group.model.provider)
            assert client is not None  # _plan batches a line only for a provider with a batch client
            limit = client.limits.max_requests
            wait = group.last + self.s.batch_linger_s - time.monotonic()
            if wait <= 0 or len(group.lines) >= limit:
                break
            await asyncio.sleep(min(wait, TICK_S))
        group = self.groups.pop(key)
        await self._send_all(ctx, job, group.model, group.lines)

    def _split(self, client: BatchClient, lines: list[Line]) -> list[list[Line]]:
        out: list[list[Line]] = [[]]
        size = 0
        for line in lines:
            if out[-1] and (len(out[-1]) >= client.limits.max_requests or size + line.size > client.limits.max_bytes):
                out.append([])
                size = 0
            out[-1].append(line)
            size += line.size
        return [chunk for chunk in out if chunk]

    async def _send_all(self, ctx, job: JobState, model: ModelInfo, lines: list[Line]) -> None:
        client = self._client(ctx.simulate, model.provider)
        assert client is not None  # _plan batches a line only for a provider with a batch client
        for chunk in self._split(client, lines):
            await self._send(ctx, job, client, model, chunk)

    # ------------------------------------------------------------------------------------ sending

    async def _send(self, ctx, job: JobState, client: BatchClient, model: ModelInfo, lines: list[Line]) -> None:
        if await self.e.is_cancelled(ctx):
            await self._finish_many(ctx, job, lines, TaskStatus.cancelled, "job cancelled", skip="cancelled")
            return
        n = await self.e.store.read(batches.affordable, ctx.job_id, [ln.bound for ln in lines])
        send, rest = lines[:n], lines[n:]
        if rest:
            job.waiting.extend(rest)
        if not send:
            await self._budget_check(ctx, job)
            return
        tag = f"llmbatch-{ctx.job_id}-{uuid.uuid4().hex[:10]}"
        try:
            row_id, attempt_ids = await self.e.store.with_engine(
                batches.open_batch,
                job_id=ctx.job_id,
                provider=model.provider,
                model=model.model,
                tag=tag,
                lines=[(ln.claimed.seq, ln.claimed.task_id, ln.bound) for ln in send],
                worker=self.e.worker_id,
                lease_s=self.s.lease_seconds,
                daily_cap_picos=self.e.daily_cap_picos,
            )
        except BudgetExceeded:  # another worker took the room meanwhile
            job.waiting.extend(send)
            await self._budget_check(ctx, job)
            return
        job.rows.add(row_id)
        for ln in send:
            job.held.discard(ln.claimed.seq)  # the batch's renewal holds them now
        try:
            pid = await client.create(model, [(str(ln.claimed.seq), ln.body) for ln in send], tag)
        except ProviderError as e:
            found = await self._find_after_failed_create(client, e, tag, len(send))
            if found is None:
                log.warning(
                    "job %s: creating a %s batch failed (%s); its %d task(s) run online",
                    ctx.job_id,
                    model.key,
                    e.error_class,
                    len(send),
                )
                await self._release_row(ctx, job, row_id, f"{e.error_class}: {e.message}")
                return
            pid = found
        await self.e.store.write(batches.record_submitted, row_id, pid)
        log.info("job %s: %s batch %s sent with %d line(s)", ctx.job_id, model.key, pid, len(send))
        await self._poll(ctx, job, client, model, row_id, pid)

    @staticmethod
    async def _find_after_failed_create(client: BatchClient, e: ProviderError, tag: str, total: int) -> str | None:
        if not e.request_sent or (e.status_code is not None and e.status_code < 500 and e.status_code != 429):
            return None
        try:
            return await client.find(tag, since=time.time() - 3600, total=total)
        except ProviderError:
            return None

    async def _budget_check(self, ctx, job: JobState) -> None:
        """Waiting lines go out when a batch of the job settles; with none in flight here, nothing will free
        money for them, so those that still do not fit are skipped as budget."""
        if job.rows or not job.waiting:
            return
        lines, job.waiting = job.waiting, []
        n = await self.e.store.read(batches.affordable, ctx.job_id, [ln.bound for ln in lines])
        if n:
            await self._send_all(ctx, job, lines[0].cand.model, lines[:n])
        if lines[n:]:
            await self._finish_many(
                ctx,
                job,
                lines[n:],
                TaskStatus.skipped,
                "the job budget cannot hold this task's batch line "
                "(reserved at its upper bound at the batch price); raise it with `llmbatch retry JOB --budget USD`",
                skip="budget",
            )
