"""Processes units of work: claim, route, reserve, call (with backoff), validate, settle, record.

The engine does not know who called it (the local executor or a Celery worker): it claims a seq range of a
job (what is still unfinished there), and runs each claimed task to a terminal state in one of its
in-flight slots; executors/flow.py schedules claimed tasks onto those slots one by one. Exactly one layer
retries (this one); adapters call once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass, field
import orjson

from . import backoff
from .breaker import ProviderBreaker, Ticket
from .catalog import Catalog, ModelInfo
from .catalog.pricing import price
from .config import Settings
from .errors import (BudgetExceeded, FatalError, PricingError, ProviderError, ProviderTimeout, RateLimitedError,
                     RerouteError, RetryableError)
from .models import ChatRequest, JobSpec, TaskLine
from .money import exact_usd, usd_to_micros
from .prompts import build_request
from .routing import Candidate, Health, RouteDecision, escalation_order, route
from .store import ledger, repo
from .store.aio import AsyncStore
from .store.schema import AttemptStatus, TaskStatus
from .validate import InvalidOutput, validate_output

log = logging.getLogger("llmbatch.engine")

CANCEL_CHECK_INTERVAL_S = 1.0
_DIGITS = re.compile(r"\d+")

# What a candidate's attempts can end in besides a terminal task status.
NEXT_CANDIDATE = object()  # fall back to the next candidate
ESCALATE = object()  # the output failed validation: move up a tier
RETRY = object()  # one attempt failed: try the same model again (if its attempts allow)


@dataclass
class JobContext:
    """Per-job settings the engine needs on every task, read once and cached."""

    job_id: str
    spec: JobSpec
    max_cost_per_task_micros: int | None
    simulate: bool
    cancelled: bool = False
    checked_at: float = 0.0
    warned: set[str] = field(default_factory=set)
    deny: frozenset[str] = frozenset()  # the spec's deny-list, built once per job


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
    return (e.status_code is not None and e.status_code >= 500) or isinstance(e, ProviderTimeout) \
        or e.error_class in ("connect", "connection_reset")


class Engine:
    def __init__(self, *, settings: Settings, catalog: Catalog, store: AsyncStore, providers, limiter,
                 worker_id: str, concurrency: int, rng: random.Random | None = None):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        # providers.get(simulate) -> (adapters by provider name, provider names with credentials)
        self.providers = providers
        self.limiter = limiter
        self.worker_id = worker_id
        self.health = Health()
        policy = settings.retry
        self.breaker = ProviderBreaker(self.health, threshold=policy.breaker_failures,
                                       base_hold_s=min(policy.max_delay_s, 4 * policy.base_delay_s),
                                       max_hold_s=policy.max_delay_s)
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.progress = Progress()
        self.rng = rng or random.Random()
        self._jobs: dict[str, JobContext] = {}
        self.daily_cap_micros = usd_to_micros(settings.daily_cap_usd) if settings.daily_cap_usd is not None else None

    # ------------------------------------------------------------------------------------- job state

    async def job_context(self, job_id: str) -> JobContext:
        ctx = self._jobs.get(job_id)
        if ctx is None:
            job = await self.store.read(repo.get_job, job_id)
            if job is None:
                raise LookupError(f"no job {job_id!r} in the store")
            ctx = JobContext(job_id, JobSpec.model_validate(orjson.loads(job["spec"])),
                             job["max_cost_per_task_micros"], bool(job["simulate"]),
                             bool(job["cancel_requested"]), time.time())
            ctx.deny = frozenset(ctx.spec.deny or ())
            self._jobs[job_id] = ctx
        return ctx

    async def is_cancelled(self, ctx: JobContext) -> bool:
        """The job's cancel flag, re-read at most once a second. Both ways: `retry` clears it, and a
        long-lived worker must then run the job's tasks again."""
        now = time.time()
        if now - ctx.checked_at > CANCEL_CHECK_INTERVAL_S:
            ctx.checked_at = now
            ctx.cancelled = await self.store.read(repo.is_cancel_requested, ctx.job_id)
        return ctx.cancelled

    # ------------------------------------------------------------------------------------------ units

    async def claim(self, job_id: str, lo: int, hi: int) -> tuple[JobContext, list[repo.ClaimedTask]]:
        """Lease every unfinished task with lo <= seq <= hi (one unit). Scheduling the claimed tasks onto
        in-flight slots is the caller's (executors/flow.py): task by task, never unit by unit."""
        ctx = await self.job_context(job_id)
        claimed, poisoned = await self.store.claim(
            job_id, lo, hi, worker=self.worker_id, lease_s=self.settings.lease_seconds,
            max_deliveries=self.settings.max_deliveries)
        if poisoned:
            log.warning("job %s: %d task(s) in %d..%d exceeded max_deliveries and were failed", job_id, poisoned, lo, hi)
            self.progress.finished[TaskStatus.failed] += poisoned
        if claimed:
            # claim_tasks refuses a cancelled job in the same transaction, so the job is not cancelled now,
            # whatever this worker cached before a `retry` lifted an earlier cancel.
            ctx.cancelled, ctx.checked_at = False, time.time()
        return ctx, claimed

    async def renew_leases(self, job_id: str, seqs: list[int]) -> int:
        return await self.store.call(repo.renew_leases, job_id, seqs, worker=self.worker_id,
                                     lease_s=self.settings.lease_seconds)

    async def run_claimed(self, ctx: JobContext, claimed: repo.ClaimedTask, started=None) -> None:
        """Run one claimed task in an in-flight slot (waits for one). `started()` is called once it has one."""
        async with self.slots:
            if started is not None:
                started()
            try:
                await self.run_task(ctx, claimed)
            except Exception as e:  # noqa: BLE001 - one task's bug must not lose the others; record it
                log.exception("task %s crashed", claimed.task_id)
                await self._finish(ctx, claimed, status=TaskStatus.failed, error=f"internal error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------------------------------- task

    async def _finish(self, ctx: JobContext, claimed: repo.ClaimedTask, *, settlement: ledger.Settlement | None = None,
                      **fields) -> str:
        """Record the task's terminal outcome (with the last attempt's settlement in the same transaction)."""
        outcome = repo.TaskOutcome(job_id=ctx.job_id, seq=claimed.seq, worker=self.worker_id, **fields)
        if settlement is not None:
            _, recorded = await self.store.call(ledger.settle_and_record, settlement, outcome)
        else:
            recorded = await self.store.call(repo.record_outcome, outcome)
        if recorded:
            self.progress.finished[outcome.status] += 1
        else:
            log.info("task %s: lease lost before recording; another delivery owns it", claimed.task_id)
        return outcome.status

    def _route(self, ctx: JobContext, task: TaskLine, request: ChatRequest) -> RouteDecision:
        spec = ctx.spec
        _, credentials = self.providers.get(ctx.simulate)
        return route(task, request, self.catalog, credentials=credentials, health=self.health,
                     deny=ctx.deny, job_min_tier=spec.min_tier,
                     max_cost_per_task_micros=ctx.max_cost_per_task_micros, now=time.time())

    async def run_task(self, ctx: JobContext, claimed: repo.ClaimedTask) -> str:
        task = TaskLine.model_validate_json(claimed.payload)
        request = build_request(task)
        decision = self._route(ctx, task, request)
        for w in decision.warnings:
            # Once per job and message, not once per task of a million; numbers aside ("free again in 3 s"
            # and "in 2 s" are one message).
            key = _DIGITS.sub("#", w)
            if key not in ctx.warned:
                ctx.warned.add(key)
                log.warning("job %s: %s (first seen on task %s)", ctx.job_id, w, task.id)
        if not decision.candidates:
            return await self._no_candidate(ctx, claimed, decision)
        state = _TaskRun()
        deadline = time.time() + self.settings.retry.task_deadline_s
        queue = list(decision.candidates)
        while queue:
            cand = queue.pop(0)
            outcome = await self._try_candidate(ctx, claimed, task, request, cand, state, deadline)
            if outcome is ESCALATE:
                higher = escalation_order(decision, cand.model)
                if not higher or not ctx.spec.escalate:
                    why = "no higher tier to escalate to" if ctx.spec.escalate else "escalation disabled"
                    return await self._finish(ctx, claimed, status=TaskStatus.failed, provider=cand.model.provider,
                                              model=cand.model.model, escalations=state.escalations,
                                              error=f"invalid output from {cand.model.key}: {state.last_error} ({why})")
                state.escalations += 1
                self.progress.escalations += 1
                state.purpose = "escalation"
                queue = higher
            elif outcome is NEXT_CANDIDATE:  # reroute error or retries exhausted on this model
                state.purpose = "fallback"
            else:  # a terminal status, already recorded
                return outcome
        return await self._finish(ctx, claimed, status=TaskStatus.failed, escalations=state.escalations,
                                  error=f"all eligible models failed; last error: {state.last_error}")

    async def _no_candidate(self, ctx: JobContext, claimed: repo.ClaimedTask, decision: RouteDecision) -> str:
        # Models that were otherwise eligible but over the per-task cap mean "too expensive", not "impossible".
        over_cap = [r for r in decision.rejected if r.rule == "max_cost"]
        if over_cap:
            return await self._finish(ctx, claimed, status=TaskStatus.skipped, skip_reason="max_cost_per_task",
                                      error="every eligible model costs more than the per-task cap: "
                                            + "; ".join(f"{r.model.key}: {r.reason}" for r in over_cap[:5]))
        # Counted by rule: with a large catalog, the first few rejections alone are mostly allow-list noise.
        return await self._finish(ctx, claimed, status=TaskStatus.failed, error=decision.rejection_summary())

    def _request_for(self, request: ChatRequest, cand: Candidate) -> ChatRequest:
        visible = min(request.max_output_tokens, cand.completion_cap)
        return request.model_copy(update={"max_output_tokens": visible,
                                          "reasoning_budget_tokens": max(0, cand.completion_cap - visible)})

    async def _try_candidate(self, ctx, claimed, task, request, cand: Candidate, state: _TaskRun, deadline: float):
        """Up to max_attempts_per_model calls on one model. Returns a terminal status (recorded), or
        NEXT_CANDIDATE (reroute error / retries exhausted) or ESCALATE (output failed validation)."""
        call_request = self._request_for(request, cand)
        for n in range(self.settings.retry.max_attempts_per_model):
            ticket = await self._admit(ctx, cand.model.provider, deadline)
            if ticket is None:
                state.last_error = (f"{cand.model.provider} kept failing (calls to it paused) past the task "
                                    f"deadline; last error: {state.last_error}")
                return NEXT_CANDIDATE
            try:
                outcome = await self._attempt(ctx, claimed, task, call_request, cand, state, deadline, n)
            finally:
                self.breaker.release(ticket)
            if outcome is not RETRY:
                return outcome
        return NEXT_CANDIDATE

    async def _attempt(self, ctx, claimed, task, call_request: ChatRequest, cand: Candidate, state: _TaskRun,
                       deadline: float, n: int):
        """One attempt: checks, rate limit, reservation, the call, then what its answer means. Returns what
        _try_candidate returns, or RETRY (try this model again)."""
        model, policy = cand.model, self.settings.retry
        if await self.is_cancelled(ctx):
            return await self._finish(ctx, claimed, status=TaskStatus.cancelled, skip_reason="cancelled",
                                      error="job cancelled", escalations=state.escalations)
        if state.attempts >= policy.max_attempts_per_task or time.time() > deadline:
            return await self._finish(ctx, claimed, status=TaskStatus.failed, escalations=state.escalations,
                                      error=f"retry budget exhausted after {state.attempts} attempts; "
                                            f"last error: {state.last_error}")
        tpm_tokens = cand.input_tokens_est + cand.completion_cap
        try:
            await self.limiter.acquire(model.key, tpm_tokens, deadline=deadline)
        except TimeoutError:  # no rate-limit slot before the task's deadline (asyncio.TimeoutError too)
            state.last_error = f"no rate-limit slot for {model.key} before the task deadline"
            return NEXT_CANDIDATE
        try:
            attempt_id = await self._reserve(ctx, claimed, cand, state.purpose, deadline)
        except BudgetExceeded as e:
            reason = "budget" if e.scope == "job" else "daily_cap"
            return await self._finish(ctx, claimed, status=TaskStatus.skipped, skip_reason=reason,
                                      escalations=state.escalations,
                                      error=f"{e} (needs {exact_usd(cand.upper_bound_micros)} reserved for "
                                            f"{model.key}); raise it with `llmbatch retry JOB --budget USD`")
        state.attempts += 1
        self.progress.attempts += 1
        state.purpose = "retry"
        adapter = self.providers.get(ctx.simulate)[0][model.provider]
        started = time.monotonic()
        try:
            completion = await adapter.complete(model, call_request, timeout=policy.call_timeout_s)
        except ProviderError as e:
            latency = int((time.monotonic() - started) * 1000)
            return await self._failed_call(ctx, claimed, cand, e, attempt_id, latency, state, deadline, n)
        latency = int((time.monotonic() - started) * 1000)
        self.breaker.success(model.provider)
        self._observe_latency(model.key, latency)
        used = completion.usage.input_tokens + completion.usage.output_tokens
        if used < tpm_tokens:  # TPM was taken at the upper estimate; give back what the call did not use
            await self.limiter.refund(model.key, tpm_tokens - used)
        cost_micros, cost_source, pricing_error = self._cost(completion.usage, model, cand)
        try:
            output = validate_output(task, completion.text)
        except InvalidOutput as e:
            await self.store.settle(ledger.Settlement(
                attempt_id=attempt_id, status=AttemptStatus.invalid_output, cost_micros=cost_micros,
                cost_source=cost_source, usage=completion.usage, error_class="invalid_output",
                error_message=str(e), pricing_error=pricing_error, latency_ms=latency,
                provider_request_id=completion.provider_request_id))
            state.last_error = str(e)
            return ESCALATE
        settlement = ledger.Settlement(
            attempt_id=attempt_id, status=AttemptStatus.succeeded, cost_micros=cost_micros,
            cost_source=cost_source, usage=completion.usage, pricing_error=pricing_error, latency_ms=latency,
            provider_request_id=completion.provider_request_id)
        return await self._finish(ctx, claimed, settlement=settlement, status=TaskStatus.succeeded,
                                  provider=model.provider, model=model.model, output=output,
                                  escalations=state.escalations)

    async def _failed_call(self, ctx, claimed, cand: Candidate, e: ProviderError, attempt_id: int, latency: int,
                           state: _TaskRun, deadline: float, n: int):
        """Record a failed call in the ledger, tell the breaker, and decide: RETRY (after backoff or a
        cooldown), NEXT_CANDIDATE, or a recorded terminal status."""
        model, policy = cand.model, self.settings.retry
        state.last_error = e.message
        if _provider_in_trouble(e):
            hold = self.breaker.failure(model.provider, time.time())
            if hold is not None:
                log.warning("%s: %d server-side failures in a row (last: %s); pausing calls to it for %.1fs",
                            model.provider, policy.breaker_failures, e.error_class, hold)
        elif e.request_sent:  # a 4xx or a 429 is still an answer: the provider is up
            self.breaker.success(model.provider)
        if isinstance(e, RetryableError) and _outcome_unknown(e):
            # Sent, but no usable answer: it may have been billed. Keep the reservation for reconcile.
            await self.store.call(ledger.mark_unknown, attempt_id, error_class=e.error_class,
                                  error_message=e.message, latency_ms=latency)
        else:
            await self._settle_error(attempt_id, cand, e, latency)
        if isinstance(e, RerouteError):
            return NEXT_CANDIDATE
        if isinstance(e, FatalError):
            return await self._finish(ctx, claimed, status=TaskStatus.failed, provider=model.provider,
                                      model=model.model, escalations=state.escalations,
                                      error=f"{e.error_class}: {e.message}")
        if isinstance(e, RateLimitedError):
            # Every worker holds this model for the hint; the next acquire() waits it out, within the task
            # deadline. No sleep here as well: that would wait twice.
            hold = e.retry_after if e.retry_after is not None else policy.base_delay_s * (2 ** n)
            self.health.cooldown_until[model.key] = time.time() + hold
            await self.limiter.cooldown(model.key, hold)
            return RETRY
        if n + 1 >= policy.max_attempts_per_model:
            return RETRY  # the loop ends: no sleep before falling back to the next candidate
        retry_after = e.retry_after if isinstance(e, RetryableError) else None
        delay = backoff.retry_delay(n, retry_after, base=policy.base_delay_s, cap=policy.max_delay_s, rng=self.rng)
        if time.time() + delay > deadline:  # a provider's hint can exceed what the task has left
            state.last_error = f"{e.message} (asked to wait {delay:.0f}s, past the task deadline)"
            return NEXT_CANDIDATE
        await asyncio.sleep(delay)
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

    async def _reserve(self, ctx: JobContext, claimed: repo.ClaimedTask, cand: Candidate, purpose: str,
                       deadline: float) -> int:
        """Reserve the call's upper bound. A refusal that only other calls' in-flight holds cause is not
        final: those settle (usually far below their bound) and free money, so wait and try again. Give up
        (BudgetExceeded) once the amount cannot fit even if every in-flight call cost nothing, for the daily
        cap at once, or at the task deadline. The job then stops within one call's bound of its cap."""
        model, amount = cand.model, cand.upper_bound_micros
        delay = 0.05
        while True:
            try:
                return await self.store.reserve(
                    job_id=ctx.job_id, task_seq=claimed.seq, task_id=claimed.task_id, provider=model.provider,
                    model=model.model, amount_micros=amount, purpose=purpose, worker=self.worker_id,
                    daily_cap_micros=self.daily_cap_micros)
            except BudgetExceeded as e:
                if e.scope != "job" or time.time() + delay > deadline:
                    raise
                if not await self.store.read(ledger.could_fit_later, ctx.job_id, amount):
                    raise
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(1.0, delay * 2)

    def _cost(self, usage, model: ModelInfo, cand: Candidate) -> tuple[int, str, str | None]:
        """Actual cost from usage. A usage the catalog cannot price is never $0: it is charged at the
        reservation (the upper bound) and flagged so the report shows it loudly."""
        try:
            return price(usage, model).micros, "usage", None
        except PricingError as e:
            log.error("cannot price usage for %s: %s; charging the reserved upper bound", model.key, e)
            return cand.upper_bound_micros, "unpriced", str(e)

    async def _settle_error(self, attempt_id: int, cand: Candidate, e: ProviderError, latency_ms: int) -> None:
        cost, source, perr = 0, "none", None
        if e.usage is not None:  # some failures are still billed (the provider returned usage)
            cost, source, perr = self._cost(e.usage, cand.model, cand)
        await self.store.settle(ledger.Settlement(
            attempt_id=attempt_id, status=AttemptStatus.failed, cost_micros=cost, cost_source=source,
            usage=e.usage, error_class=e.error_class, error_message=e.message, http_status=e.status_code,
            pricing_error=perr, latency_ms=latency_ms))

    def _observe_latency(self, key: str, latency_ms: int) -> None:
        prev = self.health.latency_ms.get(key)
        self.health.latency_ms[key] = latency_ms if prev is None else prev * 0.9 + latency_ms * 0.1
