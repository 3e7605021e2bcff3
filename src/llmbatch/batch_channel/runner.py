"""BatchRunner: the batch channel's work inside the engine's event loop (see the package's docstring). This
module is the engine's hook (take, drain, flex) and the planning of which tasks go to a batch; the sending
side is submit.py, the polling and settling side collect.py, their shared state and helpers base.py."""

from __future__ import annotations

import asyncio
import time

from .. import channels
from ..catalog import ModelInfo
from ..errors import PricingError
from ..flex import FlexCall, flex_adapter
from ..models import TaskLine
from ..prompts import build_request
from ..routing import Candidate
from ..store import batches, repo
from .collect import Collecting
from .pricing import batch_upper_bound
from .state import JobState, Line, renew_leases
from .submit import Submitting

TURNAROUND_CACHE_S = 60.0


class BatchRunner(Submitting, Collecting):
    # ------------------------------------------------------------------------------------ the hook

    @staticmethod
    def wanted(ctx) -> bool:
        spec = ctx.spec
        return spec.channel in (channels.BATCH, channels.FLEX) or (spec.channel == "auto" and spec.deadline is not None)

    async def take(self, ctx, claimed: list[repo.ClaimedTask]) -> list[repo.ClaimedTask]:
        """Keep the tasks that go to the batch channel (or already have a line in a batch); return the rest."""
        if not self.wanted(ctx) or not claimed:
            return claimed
        job = await self._job(ctx)
        if ctx.spec.channel == channels.FLEX:
            return claimed  # flex calls are the engine's (flex_call); the job's deadline is known now
        self._ensure_renewer()
        refs = await self.e.store.read(batches.refs_of, ctx.job_id, [c.seq for c in claimed])
        online: list[repo.ClaimedTask] = []
        for c in claimed:
            if c.seq in refs:
                continue  # its batch's owner settles it (or we take the batch over, below)
            line = await self._plan(ctx, job, c)
            if line is None:
                online.append(c)
            else:
                self._gather(ctx, job, line)
        for ref in set(refs.values()):
            if ref not in job.rows:
                self._spawn(ctx, job, self._adopt(ctx, job, ref))
        return online

    async def drain(self, job_id: str) -> None:
        """Wait until this process has no batch work of the job left (embedded mode, before finishing)."""
        job = self.jobs.get(job_id)
        while job is not None and (job.work or any(k[0] == job_id for k in self.groups)):
            await asyncio.gather(*list(job.work), return_exceptions=True)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------------------------ planning

    async def _job(self, ctx) -> JobState:
        job = self.jobs.get(ctx.job_id)
        if job is None:
            row = await self.e.store.read(repo.get_job, ctx.job_id)
            created = row["created_at"]
            deadline_at = fallback_at = None
            if ctx.spec.deadline:
                span = channels.parse_duration(ctx.spec.deadline)
                deadline_at = created + span
                fallback_at = deadline_at - channels.fallback_s(span, self.s.batch_fallback_s)
            # Concurrent units of the job may have read the row too: the first one's JobState wins.
            job = self.jobs.setdefault(ctx.job_id, JobState(created, deadline_at, fallback_at))
        return job

    async def _timing(self, job: JobState, provider: str) -> channels.Timing:
        now = time.time()
        cached = self._turnaround.get(provider)
        if cached is None or now - cached[1] > TURNAROUND_CACHE_S:
            measured = await self.e.store.read(batches.measured_turnaround, provider)
            cached = self._turnaround[provider] = (measured or self.s.batch_turnaround_s, now)
        return job.timing(cached[0], self.s.flex_timeout_s)

    async def _plan(self, ctx, job: JobState, c: repo.ClaimedTask) -> Line | None:
        """A batch line for the task, or None when it runs online."""
        task = TaskLine.model_validate_json(c.payload)
        request = build_request(task)
        decision = self.e._route(ctx, task, request)
        if not decision.candidates:
            return None
        cand = await self._pick(ctx, job, decision.candidates)
        if cand is None:
            return None
        client = self._client(ctx.simulate, cand.model.provider)
        if client is None:
            return None
        try:
            body = client.body(cand.model, self.e._request_for(request, cand))
            bound = batch_upper_bound(cand)
        except (PricingError, KeyError, TypeError, ValueError):
            return None
        return Line(c, task, cand, body, bound, client.line_size(str(c.seq), body))

    async def _pick(self, ctx, job: JobState, candidates: list[Candidate]) -> Candidate | None:
        """The candidate to batch, or None (online). An explicit `--channel batch` takes the cheapest model that
        has a batch channel; `auto` the cheapest (candidate, channel) at the channel's price, so a batch-capable
        model at half price can beat a cheaper online-only one."""
        best, best_cost = None, None
        for cand in candidates:
            ch = channels.choose(ctx.spec.channel, cand.model, await self._timing(job, cand.model.provider))
            if ctx.spec.channel == channels.BATCH and ch != channels.BATCH:
                continue
            cost = cand.estimated_picos * channels.discount(cand.model, ch)
            if best_cost is None or cost < best_cost:
                best, best_cost = (cand, ch), cost
        return best[0] if best is not None and best[1] == channels.BATCH else None

    # ------------------------------------------------------------------------------------ flex

    def flex_call(self, ctx, model: ModelInfo, adapter, task_deadline: float) -> FlexCall | None:
        """How the engine sends this attempt when its channel is flex; None: online as usual."""
        if ctx.spec.channel not in (channels.FLEX, "auto") or not channels.supports(model, channels.FLEX):
            return None
        job = self.jobs.get(ctx.job_id)
        if job is None:
            return None
        if ctx.spec.channel == "auto":
            cached = self._turnaround.get(model.provider, (self.s.batch_turnaround_s, 0.0))[0]
            timing = job.timing(cached, self.s.flex_timeout_s)
            if channels.choose("auto", model, timing) != channels.FLEX:
                return None
        until = min(task_deadline, job.fallback_at or task_deadline)
        policy = self.s.retry
        return FlexCall(
            flex_adapter(adapter),
            adapter,
            self.s.flex_timeout_s,
            until,
            policy.base_delay_s,
            policy.max_delay_s,
            self.e.rng,
        )

    async def flex_served(self, flex: FlexCall, attempt_id: int) -> None:
        """The attempt was reserved as flex; record online when the standard tier had to serve it."""
        if flex.served != channels.FLEX:
            await self.e.store.write(batches.set_channel, attempt_id, channels.ONLINE)

    # ------------------------------------------------------------------------------------ plumbing

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        interval = max(0.5, self.s.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            for job_id, job in list(self.jobs.items()):
                await renew_leases(self.e, job_id, job)
