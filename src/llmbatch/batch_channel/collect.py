"""Collecting: the runner's receiving side. A batch is polled until it ends (or is cancelled at the deadline's
fallback point), then each line is settled from its result and its task recorded; lines without a usable
result run online. A batch whose owner died is taken over, found again by its tag or sent anew (steps 4-6 of
the package's docstring)."""

from __future__ import annotations

import asyncio
import logging

from ..catalog import ModelInfo
from ..errors import ProviderError
from ..models import TaskLine
from ..prompts import build_request
from ..providers.batch import SUCCEEDED, BatchClient, LineResult
from ..store import batches, repo
from ..store.schema import TaskStatus
from .base import RunnerBase
from .poll import wait_until_ended
from .settle import SETTLE_CHUNK, settle_failed, settle_succeeded
from .state import JobState

log = logging.getLogger("llmbatch.batch")


class Collecting(RunnerBase):
    # ------------------------------------------------------------------------------------ polling

    async def _adopt(self, ctx, job: JobState, row_id: int) -> None:
        row = await self.e.store.read(batches.take_over, row_id, self.e.worker_id, self.s.lease_seconds)
        if row is None:
            return  # a live worker owns it
        job.rows.add(row_id)
        model = self.e.catalog.find(f"{row['provider']}/{row['model']}")
        client = self._client(ctx.simulate, row["provider"])
        if model is None or client is None:
            await self._release_row(ctx, job, row_id, "model or provider no longer configured")
            return
        pid = row["provider_batch_id"]
        if pid is None:  # the worker died between create and record: find it, or send it now
            try:
                pid = await client.find(row["tag"], since=row["created_at"], total=row["lines"])
            except ProviderError as e:
                log.warning("job %s: looking up batch %s failed: %s", ctx.job_id, row["tag"], e.message)
                job.rows.discard(row_id)
                return  # the lease lapses; a later claim tries again
            if pid is None:
                pid = await self._recreate(ctx, job, client, model, row)
                if pid is None:
                    return
            await self.e.store.write(batches.record_submitted, row_id, pid)
        log.info("job %s: took over %s batch %s", ctx.job_id, model.key, pid)
        await self._poll(ctx, job, client, model, row_id, pid)

    async def _recreate(self, ctx, job: JobState, client: BatchClient, model: ModelInfo, row: dict) -> str | None:
        lines = await self.e.store.read(batches.open_lines, row["id"])
        bodies = []
        for ln in lines:
            task = TaskLine.model_validate_json(ln["payload"])
            request = build_request(task)
            cand = next((c for c in self.e._route(ctx, task, request).candidates if c.model.key == model.key), None)
            if cand is None:
                await self._release_row(ctx, job, row["id"], f"{model.key} is no longer a candidate")
                return None
            bodies.append((str(ln["seq"]), client.body(model, self.e._request_for(request, cand))))
        try:
            return await client.create(model, bodies, row["tag"])
        except ProviderError as e:
            await self._release_row(ctx, job, row["id"], f"{e.error_class}: {e.message}")
            return None

    async def _poll(self, ctx, job: JobState, client: BatchClient, model: ModelInfo, row_id: int, pid: str) -> None:
        cancelled_for = await wait_until_ended(self.e, ctx, client, row_id, pid, job.fallback_at)
        try:
            results = await client.results(model, pid)
        except ProviderError as e:
            log.warning("job %s: reading batch %s results failed: %s; retrying later", ctx.job_id, pid, e.message)
            job.rows.discard(row_id)
            return
        await self._settle(ctx, job, model, row_id, results, cancelled=cancelled_for == "cancel")

    # ------------------------------------------------------------------------------------ settling

    async def _settle(
        self, ctx, job: JobState, model: ModelInfo, row_id: int, results: list[LineResult], *, cancelled: bool
    ) -> None:
        lines = await self.e.store.read(batches.open_lines, row_id)
        by_id = {r.custom_id: r for r in results}

        async def one(ln: dict) -> repo.ClaimedTask | None:
            claimed = repo.ClaimedTask(ctx.job_id, ln["seq"], ln["task_id"], ln["payload"], ln["deliveries"])
            r = by_id.get(str(ln["seq"]))
            if r is not None and r.kind == SUCCEEDED:
                if await settle_succeeded(self.e, ctx, model, ln, claimed, r):
                    return None
            else:
                await settle_failed(self.e, model, ln, r)
            if cancelled:
                await self._record(ctx, claimed, TaskStatus.cancelled, error="job cancelled", skip="cancelled")
                return None
            return claimed

        again: list[repo.ClaimedTask] = []
        for i in range(0, len(lines), SETTLE_CHUNK):  # concurrently, so group commit batches the settlements
            again += [c for c in await asyncio.gather(*(one(ln) for ln in lines[i : i + SETTLE_CHUNK])) if c]
        await self.e.store.write(batches.mark, row_id, batches.SETTLED, ended=True)
        job.rows.discard(row_id)
        self._turnaround.pop(model.provider, None)
        for c in again:  # errored, expired, cancelled for the deadline, or invalid: online
            job.held.add(c.seq)
            self._spawn(ctx, job, self._online(ctx, job, c))
        if job.waiting and not cancelled:
            lines_waiting, job.waiting = job.waiting, []
            await self._send_all(ctx, job, lines_waiting[0].cand.model, lines_waiting)
        await self._budget_check(ctx, job)
        await self.e.store.write(repo.finish_job_if_done, ctx.job_id)
