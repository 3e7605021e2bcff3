"""Processes units of work: claim, route, reserve, call (with backoff), validate, settle, record.

The engine does not know who called it (the local executor or a Celery worker): it claims a seq range of a
job (what is still unfinished there), and runs each claimed task to a terminal state, each call in one of
its in-flight slots (see run_claimed); executors/flow.py schedules claimed tasks one by one. Exactly one
layer retries (this one); adapters call once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable
import orjson

from . import decisions
from .batch_channel import BatchRunner
from .breaker import ProviderBreaker, Ticket
from .cache.hook import CacheHook
from .catalog import Catalog, ModelInfo
from .catalog.pricing import price, upper_bound_picos
from .config import Settings
from .errors import (
    BudgetExceeded,
    Interrupted,
    PricingError,
    ProviderError,
    ProviderTimeout,
    RateLimitedError,
    RetryableError,
    StoreWriteError,
)
from .liveness import Presence
from .models import ChatRequest, JobSpec, TaskLine
from .money import exact_usd, usd_to_picos
from .prompts import build_request
from .quality.policy import PolicyRouter, router_for
from .routing import Candidate, Health, RouteDecision, escalation_order, route
from .slots import InFlightSlots, Slot
from .store import ledger, repo
from .store.aio import AsyncStore
from .store.schema import AttemptStatus, TaskStatus
from .terminal_text import printable
from .validate import InvalidOutput, validate_output

log = logging.getLogger("llmbatch.engine")

CANCEL_CHECK_INTERVAL_S = 1.0
_DIGITS = re.compile(r"\d+")

# What a candidate's attempts can end in besides a terminal task status.
NEXT_CANDIDATE = object()  # fall back to the next candidate
ESCALATE = object()  # the output failed validation: move up a tier
RETRY = object()  # one attempt failed: try the same model again (if its attempts allow)
TRUNCATED = object()  # the output stopped on the output cap: retry with a larger cap, else escalate

# Finish reasons that mean "stopped on the output cap" (OpenAI, Anthropic, Gemini): the output is cut off.
TRUNCATION_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS"})

# Not a task status: this process's presence lapsed after it claimed the task, so the task may be running
# elsewhere now. Nothing more is called or recorded for it here.
LOST = "lost"


class _LeaseLost(Exception):
    """Raised out of _reserve when the task may now belong to another worker (see LOST)."""


@dataclass
class JobContext:
    """Per-job settings the engine needs on every task, read once and cached."""

    job_id: str
    spec: JobSpec
    max_cost_per_task_picos: int | None
    simulate: bool
    cancelled: bool = False
    checked_at: float = 0.0
    warned: set[str] = field(default_factory=set)
    deny: frozenset[str] = frozenset()  # the spec's deny-list, built once per job
    budget_picos: int | None = None
    stop_reason: str | None = None  # set when an overrun took spend past the cap: dispatch stops
    quality: PolicyRouter | None = None  # the job's quality policy (or calibration), None for most jobs
    owner: str | None = None  # the API token that submitted it (service): its response cache is its own


@dataclass
class Progress:
    """In-process counters for live display; the store stays the source of truth."""

    finished: dict[str, int] = field(default_factory=lambda: {s: 0 for s in TaskStatus.all})
    attempts: int = 0
    escalations: int = 0


@dataclass
class _TaskRun:
    """Mutable state of one task while it runs."""

    attempts: int = 0
    escalations: int = 0
    last_error: str | None = None
    purpose: str = "first"
    reserved: int = 0  # the current attempt's reservation
    truncated: bool = False  # an output stopped on the output cap
    epoch: int = 0  # the presence epoch the task was claimed under (see liveness.Presence)
    cache: object | None = None  # the response cache's state on the current candidate (cache/hook.py)


# Retryable failures after the request was sent whose charge we cannot know: the provider may have
# processed (and billed) the call. Connect errors (never sent) and HTTP error statuses are not among them.
UNKNOWN_OUTCOME_CLASSES = frozenset({"timeout", "connection_reset", "malformed_response"})


def _outcome_unknown(e: RetryableError) -> bool:
    return e.request_sent and (isinstance(e, ProviderTimeout) or e.error_class in UNKNOWN_OUTCOME_CLASSES)


def _provider_in_trouble(e: ProviderError) -> bool:
    """Failures that say the provider is in trouble, not this request: they count toward its breaker.
    429s have their own shared cooldown; 4xx and invalid outputs are about the request."""
    if not isinstance(e, RetryableError) or isinstance(e, RateLimitedError):
        return False
    return (
        (e.status_code is not None and e.status_code >= 500)
        or isinstance(e, ProviderTimeout)
        or e.error_class in ("connect", "connection_reset")
    )


class Engine:
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
        self._running: dict[tuple[str, int], _TaskRun] = {}  # (job, seq) -> its run's state, while it runs
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
        state = self._running.get(key)
        return self.presence is not None and state is not None and state.epoch == self.presence.epoch

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
            state = self._running.get(key)
            if state is not None:
                state.epoch = epoch
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
        state = self._running[(ctx.job_id, claimed.seq)] = _TaskRun(
            epoch=self._claim_epoch.get((ctx.job_id, claimed.seq), 0)
        )
        deadline = time.time() + self.settings.retry.task_deadline_s
        queue = list(decision.candidates)
        while queue:
            cand = queue.pop(0)
            outcome = await self._try_candidate(ctx, claimed, task, request, cand, state, deadline)
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
                    why = move.reason
                    return await self._finish(
                        ctx,
                        claimed,
                        status=TaskStatus.failed,
                        provider=cand.model.provider,
                        model=cand.model.model,
                        escalations=state.escalations,
                        error=("truncated: " if state.truncated else "")
                        + f"invalid output from {cand.model.key}: {state.last_error} ({why})",
                    )
                state.escalations += 1
                self.progress.escalations += 1
                state.purpose = "escalation"
                queue = higher
            elif outcome is NEXT_CANDIDATE:  # reroute error or retries exhausted on this model
                state.purpose = "fallback"
            else:  # a terminal status, already recorded
                return outcome
        return await self._finish(
            ctx,
            claimed,
            status=TaskStatus.failed,
            escalations=state.escalations,
            error=("truncated: " if state.truncated else "")
            + f"all eligible models failed; last error: {state.last_error}",
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

    async def _try_candidate(self, ctx, claimed, task, request, cand: Candidate, state: _TaskRun, deadline: float):
        """Up to max_attempts_per_model calls on one model. Returns a terminal status (recorded), or
        NEXT_CANDIDATE (reroute error / retries exhausted) or ESCALATE (output failed validation)."""
        call_request = self._request_for(request, cand)
        served, call_request = await self.cache.serve(ctx, claimed, cand, call_request, state, deadline)
        if served is not None:  # answered from the response cache (or escalating with an identical call)
            return served
        outcome = None
        try:
            outcome = await self._calls(ctx, claimed, task, request, call_request, cand, state, deadline)
            return outcome
        finally:
            await self.cache.release(state, escalated=outcome is ESCALATE)

    async def _calls(
        self,
        ctx,
        claimed,
        task,
        request: ChatRequest,
        call_request: ChatRequest,
        cand: Candidate,
        state: _TaskRun,
        deadline: float,
    ):
        n = 0
        while n < self.settings.retry.max_attempts_per_model:
            ticket = await self._admit(ctx, cand.model.provider, deadline)
            if ticket is None:
                state.last_error = (
                    f"{cand.model.provider} kept failing (calls to it paused) past the task "
                    f"deadline; last error: {state.last_error}"
                )
                return NEXT_CANDIDATE
            try:
                outcome = await self._attempt(ctx, claimed, task, call_request, cand, state, deadline, n)
            finally:
                self.breaker.release(ticket)
            if ticket.probe and outcome is RETRY:
                # A failed half-open probe tried the provider for every task waiting on it: it is not this
                # task's retry. Charged to it, a task that happened to win several probes of one outage ran out
                # of attempts while the others waited for free. Its ledger row stays; the task deadline bounds it.
                state.attempts -= 1
                continue
            n += 1
            if outcome is TRUNCATED:
                grown = self._grow_cap(request, cand)
                if grown is None:  # the model allows no more output: a higher tier may say it shorter
                    return ESCALATE
                request, cand = grown
                call_request = self._request_for(request, cand)
                continue
            if outcome is not RETRY:
                return outcome
        return NEXT_CANDIDATE

    @staticmethod
    def _grow_cap(request: ChatRequest, cand: Candidate) -> tuple[ChatRequest, Candidate] | None:
        """After a truncated output: the same request with twice the output cap (and the reservation bound that
        goes with it), within what the model allows; None when the cap is already the model's maximum."""
        model = cand.model
        if cand.completion_cap >= model.max_output_tokens:
            return None
        cap = min(model.max_output_tokens, cand.completion_cap * 2)
        request = request.model_copy(
            update={"max_output_tokens": min(model.max_output_tokens, request.max_output_tokens * 2)}
        )
        return request, replace(
            cand, completion_cap=cap, upper_bound_picos=upper_bound_picos(model, cand.input_tokens_upper, cap)
        )

    async def _attempt(
        self, ctx, claimed, task, call_request: ChatRequest, cand: Candidate, state: _TaskRun, deadline: float, n: int
    ):
        """One attempt in an in-flight slot, freed once the call has answered (or the attempt ended without one)."""
        slot = Slot(self.slots)
        # The reservation is made while the attempt waits for its slot (a freed slot then calls at once, not one
        # store round trip later); it is given back if the call is never sent (_release_unsent).
        ahead = await self._reserve_ahead(ctx, claimed, cand, state, deadline)
        try:
            await slot.take(urgent=state.attempts > 0 or state.escalations > 0)
        except BaseException:  # cancelled while waiting (a worker handing its claims back)
            await self._release_unsent(ahead)
            raise
        started = self._starting.pop((ctx.job_id, claimed.seq), None)
        if started is not None:
            started()
        try:
            return await self._attempt_in_slot(ctx, claimed, task, call_request, cand, state, deadline, n, slot, ahead)
        finally:
            slot.free()

    async def _attempt_in_slot(
        self,
        ctx,
        claimed,
        task,
        call_request: ChatRequest,
        cand: Candidate,
        state: _TaskRun,
        deadline: float,
        n: int,
        slot: Slot,
        ahead: int | None = None,
    ):
        """One attempt: checks, rate limit, reservation, the call, then what its answer means. Returns what
        _try_candidate returns, or RETRY (try this model again). `ahead`: the attempt id of a reservation made
        while it waited for the slot (_reserve_ahead); released if the checks stop the call."""
        model, policy = cand.model, self.settings.retry
        try:
            return await self._checked_call(
                ctx, claimed, task, call_request, cand, state, deadline, n, slot, ahead, model, policy
            )
        finally:
            await self._release_unsent(ahead)  # a no-op once its call was sent

    async def _checked_call(
        self, ctx, claimed, task, call_request, cand, state, deadline, n, slot, ahead, model, policy
    ):
        if self.stopping:
            raise Interrupted("the run is stopping")
        if await self.is_cancelled(ctx):
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.cancelled,
                skip_reason="cancelled",
                error="job cancelled",
                escalations=state.escalations,
            )
        if state.attempts >= policy.max_attempts_per_task or time.time() > deadline:
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.failed,
                escalations=state.escalations,
                error=f"retry budget exhausted after {state.attempts} attempts; last error: {state.last_error}",
            )
        tpm_tokens = cand.input_tokens_est + cand.completion_cap
        try:
            await self.limiter.acquire(model.key, tpm_tokens, deadline=deadline)
        except TimeoutError:  # no rate-limit slot before the task's deadline (asyncio.TimeoutError too)
            state.last_error = f"no rate-limit slot for {model.key} before the task deadline"
            return NEXT_CANDIDATE
        if ctx.stop_reason is not None:  # an overrun took spend past the cap: nothing more is dispatched
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.skipped,
                skip_reason="budget",
                escalations=state.escalations,
                error=f"{ctx.stop_reason}; raise it with `llmbatch retry JOB --budget USD`",
            )
        if not await self._still_holding(claimed, state):  # checked last thing before the money is held
            return LOST
        if ahead is not None and self._amount(cand) > state.reserved:  # an overrun was learnt while it waited
            await self._release_unsent(ahead)
            ahead = None
        adapter = self.providers.get(ctx.simulate)[0][model.provider]
        flex = None if ahead is not None else self.batches.flex_call(ctx, model, adapter, deadline)
        try:
            if ahead is not None:  # reserved while it waited for the slot: this call is what it holds for
                attempt_id = ahead
                self._unsent.discard(ahead)
            else:
                attempt_id = await self._reserve(
                    ctx, claimed, cand, state, deadline, channel="flex" if flex else "sync", slot=slot
                )
        except _LeaseLost:
            return LOST
        except BudgetExceeded as e:
            reason = "budget" if e.scope == "job" else "daily_cap"
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.skipped,
                skip_reason=reason,
                escalations=state.escalations,
                error=f"{e} (needs {exact_usd(state.reserved)} reserved for "
                f"{model.key}); raise it with `llmbatch retry JOB --budget USD`",
            )
        state.attempts += 1
        self.progress.attempts += 1
        state.purpose = "retry"
        started = time.monotonic()
        try:
            completion = await (flex or adapter).complete(model, call_request, timeout=policy.call_timeout_s)
        except ProviderError as e:
            slot.free()  # answered: the rest (settle, record, cache) runs outside the slot
            latency = int((time.monotonic() - started) * 1000)
            return await self._failed_call(ctx, claimed, cand, e, attempt_id, latency, state, deadline, n)
        # Priced and learnt from before the slot goes (no await in between): a model billed above its bound
        # grows the next reservation, which waits for this slot (at --concurrency 1, the very next one).
        cost_picos, cost_source, pricing_error = (flex and flex.cost(completion, model)) or self._cost(
            completion.usage, model, state
        )
        self._learn_overrun(model.key, cand.upper_bound_picos, cost_picos)
        slot.free()  # answered: the rest (settle, record, cache) runs outside the slot
        latency = int((time.monotonic() - started) * 1000)
        self.breaker.success(model.provider)
        self._observe_latency(model.key, latency)
        used = completion.usage.input_tokens + completion.usage.output_tokens
        if used < tpm_tokens:  # TPM was taken at the upper estimate; give back what the call did not use
            await self.limiter.refund(model.key, tpm_tokens - used)
        if flex:
            await self.batches.flex_served(flex, attempt_id)
        answer: dict[str, Any] = {
            "usage": completion.usage,
            "pricing_error": pricing_error,
            "latency_ms": latency,
            "provider_request_id": completion.provider_request_id,
            "finish_reason": completion.finish_reason,
            "served_model": completion.served_model,
        }
        truncated = completion.finish_reason in TRUNCATION_REASONS
        try:
            if truncated:  # cut off by the output cap: never a success, whatever the validator would say
                raise InvalidOutput(
                    f"truncated: {model.key} stopped on its output cap "
                    f"({call_request.max_output_tokens} tokens; finish_reason "
                    f"{completion.finish_reason})"
                )
            output = validate_output(
                task, completion.text, timeout_s=self.settings.input_limits.schema_validation_timeout_s
            )
        except InvalidOutput as e:
            error_class = "truncated" if truncated else "invalid_output"
            await self._settle_rejected(
                ctx, cand, state, attempt_id, cost_picos, cost_source, error_class, str(e), answer
            )
            state.truncated = state.truncated or truncated
            return TRUNCATED if truncated else ESCALATE
        doubt = ctx.quality.low_confidence(task, model.key, completion) if ctx.quality else None
        if doubt:  # valid, but the quality policy escalates answers this unsure (the call is still paid)
            await self._settle_rejected(
                ctx, cand, state, attempt_id, cost_picos, cost_source, "low_confidence", doubt, answer
            )
            return ESCALATE
        if ctx.quality:
            output = ctx.quality.record(output, completion)
        settlement = ledger.Settlement(
            attempt_id=attempt_id,
            status=AttemptStatus.succeeded,
            cost_picos=cost_picos,
            cost_source=cost_source,
            **answer,
        )
        status = await self._finish(
            ctx,
            claimed,
            settlement=settlement,
            status=TaskStatus.succeeded,
            provider=model.provider,
            model=model.model,
            output=output,
            escalations=state.escalations,
        )
        await self._check_overrun(ctx, cand, state.reserved, cost_picos)
        await self.cache.remember(ctx, state, model, attempt_id, output, completion.usage)
        return status

    async def _settle_rejected(
        self,
        ctx,
        cand: Candidate,
        state: _TaskRun,
        attempt_id: int,
        cost_picos: int,
        cost_source: str,
        error_class: str,
        message: str,
        answer: dict[str, Any],
    ) -> None:
        """An answer that was paid for but not accepted (invalid, truncated, too unsure): settle it as
        invalid_output, learn from an overrun, and keep its reason for the task's error."""
        await self.store.call(
            ledger.settle,
            ledger.Settlement(
                attempt_id=attempt_id,
                status=AttemptStatus.invalid_output,
                cost_picos=cost_picos,
                cost_source=cost_source,
                error_class=error_class,
                error_message=message,
                **answer,
            ),
        )
        await self._check_overrun(ctx, cand, state.reserved, cost_picos)
        state.last_error = message

    async def _failed_call(
        self,
        ctx,
        claimed,
        cand: Candidate,
        e: ProviderError,
        attempt_id: int,
        latency: int,
        state: _TaskRun,
        deadline: float,
        n: int,
    ):
        """Record a failed call in the ledger, tell the breaker, and decide: RETRY (after backoff or a
        cooldown), NEXT_CANDIDATE, or a recorded terminal status."""
        model, policy = cand.model, self.settings.retry
        state.last_error = e.message
        if _provider_in_trouble(e):
            hold = self.breaker.failure(model.provider, time.time())
            if hold is not None:
                log.warning(
                    "%s: %d server-side failures in a row (last: %s); pausing calls to it for %.1fs",
                    model.provider,
                    policy.breaker_failures,
                    e.error_class,
                    hold,
                )
        elif e.request_sent:  # a 4xx or a 429 is still an answer: the provider is up
            self.breaker.success(model.provider)
        if isinstance(e, RetryableError) and _outcome_unknown(e):
            # Sent, but no usable answer: it may have been billed. Keep the reservation for reconcile.
            await self.store.call(
                ledger.mark_unknown, attempt_id, error_class=e.error_class, error_message=e.message, latency_ms=latency
            )
        else:
            await self._settle_error(ctx, attempt_id, cand, e, latency, state)
        move = decisions.after_error(e, n=n, policy=policy, time_left_s=deadline - time.time(), rng=self.rng)
        if move.kind == decisions.FALLBACK:
            state.last_error = move.reason
            return NEXT_CANDIDATE
        if move.kind == decisions.FAIL:
            return await self._finish(
                ctx,
                claimed,
                status=TaskStatus.failed,
                provider=model.provider,
                model=model.model,
                escalations=state.escalations,
                error=move.reason,
            )
        if move.kind == decisions.COOLDOWN:
            # The next acquire() waits the hold out, within the task deadline. No sleep here: that would wait twice.
            self.health.cooldown_until[model.key] = time.time() + move.delay_s
            await self.limiter.cooldown(model.key, move.delay_s)
            return RETRY
        await asyncio.sleep(move.delay_s)
        return RETRY

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

    async def _still_holding(self, claimed: repo.ClaimedTask, state: _TaskRun) -> bool:
        """False once this process's presence has lapsed since the task was claimed: a sweeper may have handed
        the task to another worker, so no new call may start for it here."""
        if self.presence is None or await self.presence.confirm() == state.epoch:
            return True
        log.info(
            "task %s: this worker's presence lapsed after the claim; leaving it to its new holder", claimed.task_id
        )
        return False

    async def _reserve_ahead(
        self, ctx: JobContext, claimed: repo.ClaimedTask, cand: Candidate, state: _TaskRun, deadline: float
    ) -> int | None:
        """The call's reservation, made before its slot is free, so a freed slot calls at once instead of one
        store round trip later (at a fixed latency a worker's answers come together and the loop is busy
        with them then: ~30-65 ms of every slot's cycle went there). None when the attempt will not call
        (the slot's checks then say why), when its channel is flex (chosen at the call), or when the money
        does not fit now: then it reserves in its slot as before, waiting for money there if it must.
        Bounded by the tasks waiting for a slot (the flow's claim-ahead). A reservation whose call is never
        sent is given back exactly (_release_unsent)."""
        model = cand.model
        if (
            self.stopping
            or ctx.cancelled
            or ctx.stop_reason is not None
            or state.attempts >= self.settings.retry.max_attempts_per_task
            or time.time() > deadline
        ):
            return None
        adapter = self.providers.get(ctx.simulate)[0][model.provider]
        if self.batches.flex_call(ctx, model, adapter, deadline) is not None:
            return None
        if not await self._still_holding(claimed, state):
            return None
        try:
            attempt_id = await self._reserve(ctx, claimed, cand, state, deadline, once=True)
        except (BudgetExceeded, _LeaseLost):
            return None
        self._unsent.add(attempt_id)
        return attempt_id

    async def _release_unsent(self, attempt_id: int | None) -> None:
        """Give back a reservation made ahead whose call was not sent (stop, cancel, lease lost, limits): its
        row goes and its whole hold is released, exactly once (ledger.release_unsent). No-op once sent."""
        if attempt_id is None or attempt_id not in self._unsent:
            return
        self._unsent.discard(attempt_id)
        try:
            await asyncio.shield(self.store.call(ledger.release_unsent, attempt_id))
        except Exception as e:  # noqa: BLE001 - the row stays in flight; reconcile settles it, as a dead worker's
            log.warning("attempt %d: could not release its unsent reservation: %s", attempt_id, type(e).__name__)

    async def _reserve(
        self,
        ctx: JobContext,
        claimed: repo.ClaimedTask,
        cand: Candidate,
        state: _TaskRun,
        deadline: float,
        channel: str = "sync",
        *,
        once: bool = False,
        slot: Slot | None = None,
    ) -> int:
        """Reserve the call's upper bound. A refusal that only other calls' in-flight holds cause is not
        final: those settle (usually far below their bound) and free money, so wait and try again. Give up
        (BudgetExceeded) once the amount cannot fit even if every in-flight call cost nothing, for the daily
        cap at once, or at the task deadline. The job then stops within one call's bound of its cap.
        `once`: no waiting, a refusal is raised at once. `slot`: freed while it waits for money (retaken
        before it tries again), so calls reserved ahead can go out, settle and free what it waits for."""
        model = cand.model
        purpose = "calibration" if ctx.spec.calibration else state.purpose
        amount = state.reserved = self._amount(cand)
        delay = 0.05
        while True:
            if delay > 0.05 and not await self._still_holding(claimed, state):  # after a wait for money
                raise _LeaseLost()
            try:
                return await self.store.call_first(
                    ledger.reserve,
                    job_id=ctx.job_id,
                    task_seq=claimed.seq,
                    task_id=claimed.task_id,
                    provider=model.provider,
                    model=model.model,
                    amount_picos=amount,
                    purpose=purpose,
                    worker=self.worker_id,
                    daily_cap_picos=self.daily_cap_picos,
                    channel=channel,
                )
            except BudgetExceeded as e:
                if once or e.scope != "job" or time.time() + delay > deadline:
                    raise
                if not await self.store.read(ledger.could_fit_later, ctx.job_id, amount):
                    raise
            if slot is not None:
                slot.free()
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
            if slot is not None:
                await slot.take(urgent=True)
            delay = min(1.0, delay * 2)

    def _amount(self, cand: Candidate) -> int:
        """What a call on this candidate reserves: its upper bound, grown by the model's learnt overrun factor."""
        factor = self.overrun_factor.get(cand.model.key)
        return cand.upper_bound_picos if factor is None else -(-cand.upper_bound_picos * factor // 1)

    def _cost(self, usage, model: ModelInfo, state: _TaskRun) -> tuple[int, str, str | None]:
        """Actual cost from usage. A usage the catalog cannot price is never $0: it is charged at the
        reservation (the upper bound) and flagged so the report shows it loudly."""
        try:
            return price(usage, model).picos, "usage", None
        except PricingError as e:
            log.error("cannot price usage for %s: %s; charging the reserved upper bound", model.key, e)
            return state.reserved, "unpriced", str(e)

    async def _settle_error(
        self, ctx: JobContext, attempt_id: int, cand: Candidate, e: ProviderError, latency_ms: int, state: _TaskRun
    ) -> None:
        cost, source, perr = 0, "none", None
        if e.usage is not None:  # some failures are still billed (the provider returned usage)
            cost, source, perr = self._cost(e.usage, cand.model, state)
        await self.store.call(
            ledger.settle,
            ledger.Settlement(
                attempt_id=attempt_id,
                status=AttemptStatus.failed,
                cost_picos=cost,
                cost_source=source,
                usage=e.usage,
                error_class=e.error_class,
                error_message=e.message,
                http_status=e.status_code,
                pricing_error=perr,
                latency_ms=latency_ms,
            ),
        )
        await self._check_overrun(ctx, cand, state.reserved, cost)

    def _learn_overrun(self, key: str, bound: int, cost: int) -> None:
        """Grow the model's reservation factor so that its upper `bound` (before any factor) covers the cost
        seen, plus a quarter of headroom. Never shrinks; concurrent overruns of one wave do not compound."""
        if bound > 0 and cost > bound:
            need = Fraction(cost, bound) * Fraction(5, 4)
            if need > self.overrun_factor.get(key, Fraction(1)):
                self.overrun_factor[key] = need

    async def _check_overrun(self, ctx: JobContext, cand: Candidate, reserved: int, cost: int) -> None:
        """A settled attempt billed above its reservation (the ledger flags it): learn from it, and stop the
        job's dispatch the moment its spend has passed the cap."""
        if cost <= reserved:
            return
        model = cand.model
        self._learn_overrun(model.key, cand.upper_bound_picos, cost)
        log.warning(
            "job %s: overrun on %s: billed %s against a %s reservation; its reservations now grow x%.2f",
            ctx.job_id,
            model.key,
            exact_usd(cost),
            exact_usd(reserved),
            float(self.overrun_factor[model.key]),
        )
        if ctx.budget_picos is None or ctx.stop_reason is not None:
            return
        job = await self.store.read(repo.get_job, ctx.job_id)
        if job is not None and job["spent_picos"] > job["budget_picos"]:
            ctx.stop_reason = (
                f"budget cap {exact_usd(job['budget_picos'])} passed: spent "
                f"{exact_usd(job['spent_picos'])} after {model.key} billed {exact_usd(cost)} against "
                f"a {exact_usd(reserved)} reservation (overrun)"
            )
            log.error("job %s: %s; dispatch stopped", ctx.job_id, ctx.stop_reason)
            await self.store.call(ledger.note_stop, ctx.job_id, ctx.stop_reason)

    def _observe_latency(self, key: str, latency_ms: int) -> None:
        prev = self.health.latency_ms.get(key)
        self.health.latency_ms[key] = latency_ms if prev is None else prev * 0.9 + latency_ms * 0.1
