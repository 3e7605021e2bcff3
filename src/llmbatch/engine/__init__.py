"""Processes units of work: claim, route, reserve, call (with backoff), validate, settle, record.

The engine does not know who called it (the local executor or a Celery worker): it claims a seq range of a
job (what is still unfinished there), and runs each claimed task to a terminal state, each call in one of
its in-flight slots (see run_claimed); executors/flow.py schedules claimed tasks one by one. Exactly one
layer retries (this one); adapters call once.

This module is the task's flow (claim, route, candidates, escalation, the terminal record). The Engine's other
parts are mixins, one concern each: calls.py (one attempt's call and its failures), answers.py (what an answer
means), money.py (reservations, overruns); state.py holds the job and task state and the outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from fractions import Fraction
from typing import Callable

import orjson

from .. import decisions
from ..batch_channel import BatchRunner
from ..breaker import ProviderBreaker, Ticket
from ..cache.hook import CacheHook
from ..catalog import Catalog
from ..config import Settings
from ..errors import Interrupted, StoreWriteError
from ..liveness import Presence
from ..models import ChatRequest, JobSpec, TaskLine
from ..money import usd_to_picos
from ..prompts import build_request
from ..quality.policy import router_for
from ..routing import Candidate, Health, RouteDecision, escalation_order, route
from ..slots import InFlightSlots
from ..store import ledger, repo
from ..store.aio import AsyncStore
from ..store.schema import TaskStatus
from ..terminal_text import printable
from .answers import AnswersMixin
from .calls import CallsMixin
from .money import MoneyMixin
from .state import ESCALATE, LOST, NEXT_CANDIDATE, TRUNCATION_REASONS, JobContext, Progress, TaskRun

__all__ = ["CANCEL_CHECK_INTERVAL_S", "LOST", "TRUNCATION_REASONS", "Engine", "JobContext", "Progress"]

log = logging.getLogger("llmbatch.engine")

CANCEL_CHECK_INTERVAL_S = 1.0
_DIGITS = re.compile(r"\d+")


class Engine(CallsMixin, AnswersMixin, MoneyMixin):
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        store: AsyncStore,
        providers,
        limiter,
        worker_id: str,
        concurrency: int,
        rng: random.Random | None = None,
    ):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        # providers.get(simulate) -> (adapters by provider name, provider names with credentials)
        self.providers = providers
        self.limiter = limiter
        self.worker_id = worker_id
        self.health = Health()
        policy = settings.retry
        self.breaker = ProviderBreaker(
            self.health,
            threshold=policy.breaker_failures,
            base_hold_s=min(policy.max_delay_s, 4 * policy.base_delay_s),
            max_hold_s=policy.max_delay_s,
        )
        # In-flight slots: held by an attempt from its rate-limit wait through its reservation to the call's
        # answer, not while its task looks up the cache before or records after (see run_claimed).
        # A task's second call (retry, escalation) takes a freed slot before fresh tasks do (slots.py).
        self.slots = InFlightSlots(concurrency)
        # Tasks running at once: the slots' holders plus as many preparing their next call or recording one.
        self.active = asyncio.Semaphore(2 * concurrency)
        self.concurrency = concurrency
        self.progress = Progress()
        self.rng = rng or random.Random()
        self._jobs: dict[str, JobContext] = {}
        # provider/model -> factor (>= 1) its reservations are grown by, learned from its overruns: a provider
        # that bills more than our bound (added system prompts, ignored caps, tokenizer surprises) keeps
        # doing so.
        self.overrun_factor: dict[str, Fraction] = {}
        # Set by stop() (Ctrl-C, SIGTERM) or a store that cannot take writes: no new claim, no new attempt;
        # tasks not finished are handed back by the caller (jobs.stop_after_interrupt).
        self.stopping = False
        self.fatal: StoreWriteError | None = None
        self.daily_cap_picos = usd_to_picos(settings.daily_cap_usd) if settings.daily_cap_usd is not None else None
        self.presence: Presence | None = None  # set by runtime.open_engine
        self._claim_epoch: dict[tuple[str, int], int] = {}  # (job, seq) -> presence epoch at its claim
        self._running: dict[tuple[str, int], TaskRun] = {}  # (job, seq) -> the task's run, while it runs
        self._starting: dict[tuple[str, int], Callable[[], None]] = {}  # run_claimed's started(), until a slot
        self._unsent: set[int] = set()  # attempt ids reserved ahead of their slot, call not sent yet
        self.cache = CacheHook(self, escalate=ESCALATE)
        self.batches = BatchRunner(self)  # discount channels: tasks routed to a provider batch API

    # ------------------------------------------------------------------------------------- job state

    async def job_context(self, job_id: str) -> JobContext:
        ctx = self._jobs.get(job_id)
        if ctx is None:
            job = await self.store.read(repo.get_job, job_id)
            if job is None:
                raise LookupError(f"no job {job_id!r} in the store")
            ctx = JobContext(
                job_id,
                JobSpec.model_validate(orjson.loads(job["spec"])),
                job["max_cost_per_task_picos"],
                bool(job["simulate"]),
                bool(job["cancel_requested"]),
                time.time(),
            )
            ctx.deny = frozenset(ctx.spec.deny or ())
            ctx.budget_picos, ctx.stop_reason = job["budget_picos"], job.get("stop_reason")
            for key, reserved, cost in await self.store.read(ledger.overruns_seen, job_id):
                self._learn_overrun(key, reserved, cost)  # the reservation, factor included: a lower bound
            ctx.quality = router_for(ctx.spec)
            ctx.owner = job.get("owner")
            self._jobs[job_id] = ctx
        return ctx

    async def is_cancelled(self, ctx: JobContext, *, fresh: bool = False) -> bool:
        """The job's cancel flag, re-read at most once a second (every time when `fresh`). Both ways: `retry`
        clears it, and a long-lived worker must then run the job's tasks again."""
        now = time.time()
        if fresh or now - ctx.checked_at > CANCEL_CHECK_INTERVAL_S:
            ctx.checked_at = now
            ctx.cancelled = await self.store.read(repo.is_cancel_requested, ctx.job_id)
        return ctx.cancelled

    def stop(self) -> None:
        self.stopping = True

    # ------------------------------------------------------------------------------------------ units

    async def claim(self, job_id: str, lo: int, hi: int) -> tuple[JobContext, list[repo.ClaimedTask]]:
        """Lease every unfinished task with lo <= seq <= hi (one unit). Scheduling the claimed tasks onto
        in-flight slots is the caller's (executors/flow.py): task by task, never unit by unit."""
        ctx = await self.job_context(job_id)
        if self.stopping:
            return ctx, []
        # The epoch the claim is made under, confirmed first: a process that just woke from a freeze renews its
        # presence (a new epoch) before it claims, so what it claims now is its own under that epoch.
        epoch = await self.presence.confirm() if self.presence is not None else 0
        claimed, poisoned = await self.store.call(
            repo.claim_tasks,
            job_id,
            lo,
            hi,
            worker=self.worker_id,
            lease_s=self.settings.lease_seconds,
            max_deliveries=self.settings.max_deliveries,
        )
        if poisoned:
            log.warning(
                "job %s: %d task(s) in %d..%d exceeded max_deliveries and were failed", job_id, poisoned, lo, hi
            )
            self.progress.finished[TaskStatus.failed] += poisoned
        if claimed:
            # claim_tasks refuses a cancelled job in the same transaction, so the job is not cancelled now,
            # whatever this worker cached before a `retry` lifted an earlier cancel.
            ctx.cancelled, ctx.checked_at = False, time.time()
            claimed = self._not_running_here(job_id, claimed, epoch)
            self.cache.note_claimed(claimed)
            claimed = await self.batches.take(ctx, claimed)  # batch-channel tasks: the batch runner has them
            for c in claimed:
                self._claim_epoch[(job_id, c.seq)] = epoch
        return ctx, claimed

    def _claimed_again(self, key: tuple[str, int]) -> bool:
        """After a run ended LOST: whether this process has claimed the task again since (under the epoch now
        current), so it is ours to run after all."""
        run = self._running.get(key)
        return self.presence is not None and run is not None and run.epoch == self.presence.epoch

    def _not_running_here(self, job_id: str, claimed: list[repo.ClaimedTask], epoch: int) -> list[repo.ClaimedTask]:
        """A task this process still runs, claimed again by this process (its presence lapsed, a sweeper handed
        the task back, and this worker took it first): the running delivery keeps it, now under the new claim.
        A second delivery here would call the provider again while the first call may still be out, and both
        would be paid (the lease names the worker, so each would pass its checks)."""
        fresh = []
        for c in claimed:
            key = (job_id, c.seq)
            if key not in self._claim_epoch:
                fresh.append(c)
                continue
            self._claim_epoch[key] = epoch
            run = self._running.get(key)
            if run is not None:
                run.epoch = epoch
            log.info("task %s: claimed again while it still runs here; the running delivery keeps it", c.task_id)
        return fresh

    async def renew_leases(self, job_id: str, seqs: list[int]) -> int:
        return await self.store.call(
            repo.renew_leases, job_id, seqs, worker=self.worker_id, lease_s=self.settings.lease_seconds
        )

    async def run_claimed(self, ctx: JobContext, claimed: repo.ClaimedTask, started=None) -> None:
        """Run one claimed task. Its attempts take an in-flight slot each (`slots`) for the call and what must
        come right before it (rate limit, reservation); its cache lookup before and its records after run
        outside the slots, so a freed slot goes at once to a task that is ready to call, and the store's
        latency does not idle the provider's capacity. `started()` is called when it first takes a slot."""
        key = (ctx.job_id, claimed.seq)
        async with self.active:
            if started is not None:
                self._starting[key] = started
            try:
                if self.stopping:
                    return  # claimed but not started: its lease is handed back
                while await self.run_task(ctx, claimed) is LOST and self._claimed_again(key):
                    pass  # it lost its claim, then this process claimed it again (_not_running_here): run it again
            except Interrupted:
                return  # stopping between attempts: the task goes back to the queue as it is
            except StoreWriteError as e:  # full disk, read-only, locked: stop the run, record nothing more
                self.fatal = self.fatal or e
                self.stopping = True
            except Exception as e:  # noqa: BLE001 - one task's bug must not lose the others; record it
                log.exception("task %s crashed", claimed.task_id)
                await self._finish(
                    ctx, claimed, status=TaskStatus.failed, error=f"internal error: {type(e).__name__}: {e}"
                )
            finally:
                self._claim_epoch.pop(key, None)
                self._starting.pop(key, None)
                self._running.pop(key, None)

    # ------------------------------------------------------------------------------------------- task

    async def _finish(
        self, ctx: JobContext, claimed: repo.ClaimedTask, *, settlement: ledger.Settlement | None = None, **fields
    ) -> str:
        """Record the task's terminal outcome (with the last attempt's settlement in the same transaction)."""
        outcome = repo.TaskOutcome(job_id=ctx.job_id, seq=claimed.seq, worker=self.worker_id, **fields)
        if settlement is not None:
            _, recorded = await self.store.call(ledger.settle_and_record, settlement, outcome)
        else:
            recorded = await self.store.call(repo.record_outcome, outcome)
        if recorded:
            self.progress.finished[outcome.status] += 1
        else:
            log.info("task %s: lease lost before recording; another delivery owns it", printable(claimed.task_id))
        return outcome.status

    async def _end(self, run: TaskRun, status: str, **fields) -> str:
        """Record a running task's terminal outcome, with its escalations so far (see _finish)."""
        return await self._finish(run.ctx, run.claimed, status=status, escalations=run.escalations, **fields)

    def _route(self, ctx: JobContext, task: TaskLine, request: ChatRequest) -> RouteDecision:
        spec = ctx.spec
        _, credentials = self.providers.get(ctx.simulate)
        decision = route(
            task,
            request,
            self.catalog,
            credentials=credentials,
            health=self.health,
            deny=ctx.deny,
            job_min_tier=spec.min_tier,
            max_cost_per_task_picos=ctx.max_cost_per_task_picos,
            now=time.time(),
        )
        return ctx.quality.restrict(task, decision) if ctx.quality else decision

    async def run_task(self, ctx: JobContext, claimed: repo.ClaimedTask) -> str:
        task = TaskLine.model_validate_json(claimed.payload)
        request = build_request(task)
        if ctx.quality and ctx.quality.wants_logprobs(task):
            request = request.model_copy(update={"logprobs": True})
        decision = self._route(ctx, task, request)
        for w in decision.warnings:
            # Once per job and message, not once per task of a million; numbers aside ("free again in 3 s"
            # and "in 2 s" are one message).
            key = _DIGITS.sub("#", w)
            if key not in ctx.warned:
                ctx.warned.add(key)
                log.warning("job %s: %s (first seen on task %s)", ctx.job_id, w, printable(task.id))
        if not decision.candidates:
            return await self._no_candidate(ctx, claimed, decision)
        run = self._running[(ctx.job_id, claimed.seq)] = TaskRun(
            ctx,
            claimed,
            task,
            deadline=time.time() + self.settings.retry.task_deadline_s,
            epoch=self._claim_epoch.get((ctx.job_id, claimed.seq), 0),
        )
        queue = list(decision.candidates)
        while queue:
            cand = queue.pop(0)
            outcome = await self._try_candidate(run, request, cand)
            if outcome is ESCALATE:
                higher = (
                    ctx.quality.escalation(task, decision, cand.model)
                    if ctx.quality
                    else escalation_order(decision, cand.model)
                )
                move = decisions.after_invalid_output(
                    higher_tier_left=bool(higher), escalation_enabled=ctx.spec.escalate
                )
                if move.kind == decisions.FAIL:
                    return await self._end(
                        run,
                        TaskStatus.failed,
                        provider=cand.model.provider,
                        model=cand.model.model,
                        error=("truncated: " if run.truncated else "")
                        + f"invalid output from {cand.model.key}: {run.last_error} ({move.reason})",
                    )
                run.escalations += 1
                self.progress.escalations += 1
                run.purpose = "escalation"
                queue = higher
            elif outcome is NEXT_CANDIDATE:  # reroute error or retries exhausted on this model
                run.purpose = "fallback"
            else:  # a terminal status, already recorded
                return outcome
        return await self._end(
            run,
            TaskStatus.failed,
            error=("truncated: " if run.truncated else "")
            + f"all eligible models failed; last error: {run.last_error}",
        )

    async def _no_candidate(self, ctx: JobContext, claimed: repo.ClaimedTask, decision: RouteDecision) -> str:
        # Models that were otherwise eligible but over the per-task cap mean "too expensive", not "impossible".
        over_cap = [r for r in decision.rejected if r.rule == "max_cost"]
        if over_cap:
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.skipped,
                skip_reason="max_cost_per_task",
                error="every eligible model costs more than the per-task cap: "
                + "; ".join(f"{r.model.key}: {r.reason}" for r in over_cap[:5]),
            )
        # Counted by rule: with a large catalog, the first few rejections alone are mostly allow-list noise.
        return await self._finish(ctx, claimed, status=TaskStatus.failed, error=decision.rejection_summary())

    def _request_for(self, request: ChatRequest, cand: Candidate) -> ChatRequest:
        visible = min(request.max_output_tokens, cand.completion_cap)
        budget = max(0, cand.completion_cap - visible)
        if visible == request.max_output_tokens and budget == request.reasoning_budget_tokens:
            return request  # already the call's request (most models: no reasoning budget, the cap fits)
        return request.model_copy(update={"max_output_tokens": visible, "reasoning_budget_tokens": budget})

    async def _try_candidate(self, run: TaskRun, request: ChatRequest, cand: Candidate):
        """Up to max_attempts_per_model calls on one model. Returns a terminal status (recorded), or
        NEXT_CANDIDATE (reroute error / retries exhausted) or ESCALATE (output failed validation)."""
        call_request = self._request_for(request, cand)
        served, call_request = await self.cache.serve(run, cand, call_request)
        if served is not None:  # answered from the response cache (or escalating with an identical call)
            return served
        outcome = None
        try:
            outcome = await self._calls(run, request, call_request, cand)
            return outcome
        finally:
            await self.cache.release(run, escalated=outcome is ESCALATE)

    async def _admit(self, ctx: JobContext, provider: str, deadline: float) -> Ticket | None:
        """A breaker ticket for one attempt on `provider`: at once when it is closed; after the hold when it is
        open, and one task at a time while its probe is out. None, at once, when the wait would pass the task's
        deadline. Waits in short steps so a cancel is seen within a second (a plain ticket: no call follows)."""
        while True:
            ticket, wait = self.breaker.admit(provider, time.time())
            if ticket is not None:
                return ticket
            if time.time() + wait > deadline:
                return None
            await asyncio.sleep(min(wait, CANCEL_CHECK_INTERVAL_S))
            if await self.is_cancelled(ctx):
                return Ticket(provider)  # the caller sees the cancel next
