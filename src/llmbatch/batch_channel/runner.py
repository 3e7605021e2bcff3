"""BatchRunner: the batch channel's work inside the engine's event loop (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from .. import channels
from ..catalog import ModelInfo
from ..errors import BudgetExceeded, PricingError, ProviderError
from ..flex import FlexCall, flex_adapter
from ..models import TaskLine
from ..prompts import build_request
from ..providers.batch import SUCCEEDED, BatchClient, LineResult, batch_client
from ..routing import Candidate
from ..store import batches, repo
from ..store.schema import TaskStatus
from .poll import TICK_S, wait_until_ended
from .pricing import batch_upper_bound
from .settle import SETTLE_CHUNK, release_never_sent, settle_failed, settle_succeeded
from .state import Group, JobState, Line, renew_leases

log = logging.getLogger("llmbatch.batch")

TURNAROUND_CACHE_S = 60.0


class BatchRunner:
    def __init__(self, engine) -> None:
        self.e = engine
        self.s = engine.settings
        self.groups: dict[tuple[str, str], Group] = {}
        self.jobs: dict[str, JobState] = {}
        self._clients: dict[tuple[bool, str], BatchClient | None] = {}
        self._turnaround: dict[str, tuple[float, float]] = {}
        self._renewer: asyncio.Task | None = None

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

    def _client(self, simulate: bool, provider: str) -> BatchClient | None:
        key = (simulate, provider)
        if key not in self._clients:
            adapter = self.e.providers.get(simulate)[0].get(provider)
            self._clients[key] = batch_client(adapter) if adapter is not None else None
        return self._clients[key]

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

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        interval = max(0.5, self.s.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            for job_id, job in list(self.jobs.items()):
                await renew_leases(self.e, job_id, job)
