"""One attempt's call: a breaker ticket, an in-flight slot, the checks, the rate limit, the reservation, the
call, and what a failure means (retry, fall back, fail). The answer's meaning is answers.py's."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from .. import decisions
from ..catalog.pricing import upper_bound_picos
from ..errors import BudgetExceeded, Interrupted, ProviderError, RetryableError
from ..models import ChatRequest
from ..money import exact_usd
from ..routing import Candidate
from ..slots import Slot
from ..store import ledger
from ..store.schema import TaskStatus
from .parts import EngineParts
from .state import (
    ESCALATE,
    LOST,
    NEXT_CANDIDATE,
    RETRY,
    TRUNCATED,
    LeaseLost,
    TaskRun,
    outcome_unknown,
    provider_in_trouble,
)

log = logging.getLogger("llmbatch.engine")


class CallsMixin(EngineParts):
    """The Engine's calls (see the module docstring)."""

    async def _calls(self, run: TaskRun, request: ChatRequest, call_request: ChatRequest, cand: Candidate):
        n = 0
        while n < self.settings.retry.max_attempts_per_model:
            ticket = await self._admit(run.ctx, cand.model.provider, run.deadline)
            if ticket is None:
                run.last_error = (
                    f"{cand.model.provider} kept failing (calls to it paused) past the task "
                    f"deadline; last error: {run.last_error}"
                )
                return NEXT_CANDIDATE
            try:
                outcome = await self._attempt(run, call_request, cand, n)
            finally:
                self.breaker.release(ticket)
            if ticket.probe and outcome is RETRY:
                # A failed half-open probe tried the provider for every task waiting on it: it is not this
                # task's retry. Charged to it, a task that happened to win several probes of one outage ran out
                # of attempts while the others waited for free. Its ledger row stays; the task deadline bounds it.
                run.attempts -= 1
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

    async def _attempt(self, run: TaskRun, call_request: ChatRequest, cand: Candidate, n: int):
        """One attempt in an in-flight slot, freed once the call has answered (or the attempt ended without one)."""
        slot = Slot(self.slots)
        # The reservation is made while the attempt waits for its slot (a freed slot then calls at once, not one
        # store round trip later); it is given back if the call is never sent (_release_unsent).
        ahead = await self._reserve_ahead(run, cand)
        try:
            await slot.take(urgent=run.attempts > 0 or run.escalations > 0)
        except BaseException:  # cancelled while waiting (a worker handing its claims back)
            await self._release_unsent(ahead)
            raise
        started = self._starting.pop((run.ctx.job_id, run.claimed.seq), None)
        if started is not None:
            started()
        try:
            return await self._checked_call(run, call_request, cand, n, slot, ahead)
        finally:
            slot.free()  # first: a cancel arriving in the release below must not keep the slot
            await self._release_unsent(ahead)  # a no-op once its call was sent

    async def _checked_call(
        self, run: TaskRun, call_request: ChatRequest, cand: Candidate, n: int, slot: Slot, ahead: int | None
    ):
        """One attempt in its slot: checks, rate limit, reservation, the call, then what its answer means. Returns
        what _try_candidate returns, or RETRY (try this model again). `ahead`: the attempt id of a reservation
        made while it waited for the slot (_reserve_ahead); the caller releases it if the checks stop the call."""
        model, policy, ctx = cand.model, self.settings.retry, run.ctx
        if self.stopping:
            raise Interrupted("the run is stopping")
        if await self.is_cancelled(ctx):
            return await self._end(run, TaskStatus.cancelled, skip_reason="cancelled", error="job cancelled")
        if run.attempts >= policy.max_attempts_per_task or time.time() > run.deadline:
            return await self._end(
                run,
                TaskStatus.failed,
                error=f"retry budget exhausted after {run.attempts} attempts; last error: {run.last_error}",
            )
        tpm_tokens = cand.input_tokens_est + cand.completion_cap
        try:
            await self.limiter.acquire(model.key, tpm_tokens, deadline=run.deadline)
        except TimeoutError:  # no rate-limit slot before the task's deadline (asyncio.TimeoutError too)
            run.last_error = f"no rate-limit slot for {model.key} before the task deadline"
            return NEXT_CANDIDATE
        if ctx.stop_reason is not None:  # an overrun took spend past the cap: nothing more is dispatched
            return await self._end(
                run,
                TaskStatus.skipped,
                skip_reason="budget",
                error=f"{ctx.stop_reason}; raise it with `llmbatch retry JOB --budget USD`",
            )
        if not await self._still_holding(run):  # checked last thing before the money is held
            return LOST
        if ahead is not None and self._amount(cand) > run.reserved:  # an overrun was learnt while it waited
            await self._release_unsent(ahead)
            ahead = None
        adapter = self.providers.get(ctx.simulate)[0][model.provider]
        flex = None if ahead is not None else self.batches.flex_call(ctx, model, adapter, run.deadline)
        try:
            if ahead is not None:  # reserved while it waited for the slot: this call is what it holds for
                attempt_id = ahead
                self._unsent.discard(ahead)
            else:
                attempt_id = await self._reserve(run, cand, channel="flex" if flex else "sync", slot=slot)
        except LeaseLost:
            return LOST
        except BudgetExceeded as e:
            return await self._end(
                run,
                TaskStatus.skipped,
                skip_reason="budget" if e.scope == "job" else "daily_cap",
                error=f"{e} (needs {exact_usd(run.reserved)} reserved for "
                f"{model.key}); raise it with `llmbatch retry JOB --budget USD`",
            )
        run.attempts += 1
        self.progress.attempts += 1
        run.purpose = "retry"
        started, sent_at = time.monotonic(), time.time()
        try:
            completion = await (flex or adapter).complete(model, call_request, timeout=policy.call_timeout_s)
        except ProviderError as e:
            slot.free()  # answered: the rest (settle, record, cache) runs outside the slot
            latency = int((time.monotonic() - started) * 1000)
            return await self._failed_call(run, cand, e, attempt_id, latency, n)
        # Priced and learnt from before the slot goes (no await in between): a model billed above its bound
        # grows the next reservation, which waits for this slot (at --concurrency 1, the very next one).
        cost_picos, cost_source, pricing_error = (flex and flex.cost(completion, model)) or self._cost(
            completion.usage, model, run
        )
        self._learn_overrun(model.key, cand.upper_bound_picos, cost_picos)
        slot.free()  # answered: the rest (settle, record, cache) runs outside the slot
        latency = int((time.monotonic() - started) * 1000)
        self.breaker.success(model.provider, sent_at)
        self._observe_latency(model.key, latency)
        used = completion.usage.input_tokens + completion.usage.output_tokens
        if used < tpm_tokens:  # TPM was taken at the upper estimate; give back what the call did not use
            await self.limiter.refund(model.key, tpm_tokens - used)
        if flex:
            await self.batches.flex_served(flex, attempt_id)
        answer: dict[str, Any] = {
            "cost_picos": cost_picos,
            "cost_source": cost_source,
            "usage": completion.usage,
            "pricing_error": pricing_error,
            "latency_ms": latency,
            "provider_request_id": completion.provider_request_id,
            "finish_reason": completion.finish_reason,
            "served_model": completion.served_model,
        }
        return await self._answered(run, call_request, cand, attempt_id, completion, answer)

    async def _failed_call(
        self, run: TaskRun, cand: Candidate, e: ProviderError, attempt_id: int, latency: int, n: int
    ):
        """Record a failed call in the ledger, tell the breaker, and decide: RETRY (after backoff or a
        cooldown), NEXT_CANDIDATE, or a recorded terminal status."""
        model, policy = cand.model, self.settings.retry
        run.last_error = e.message
        if provider_in_trouble(e):
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
            self.breaker.success(model.provider, time.time() - latency / 1000)
        if isinstance(e, RetryableError) and outcome_unknown(e):
            # Sent, but no usable answer: it may have been billed. Keep the reservation for reconcile.
            await self.store.call(
                ledger.mark_unknown, attempt_id, error_class=e.error_class, error_message=e.message, latency_ms=latency
            )
        else:
            await self._settle_error(run, attempt_id, cand, e, latency)
        move = decisions.after_error(e, n=n, policy=policy, time_left_s=run.deadline - time.time(), rng=self.rng)
        if move.kind == decisions.FALLBACK:
            run.last_error = move.reason
            return NEXT_CANDIDATE
        if move.kind == decisions.FAIL:
            return await self._end(
                run, TaskStatus.failed, provider=model.provider, model=model.model, error=move.reason
            )
        if move.kind == decisions.COOLDOWN:
            # The next acquire() waits the hold out, within the task deadline. No sleep here: that would wait twice.
            self.health.cooldown_until[model.key] = time.time() + move.delay_s
            await self.limiter.cooldown(model.key, move.delay_s)
            return RETRY
        await asyncio.sleep(move.delay_s)
        return RETRY

    async def _still_holding(self, run: TaskRun) -> bool:
        """False once this process's presence has lapsed since the task was claimed: a sweeper may have handed
        the task to another worker, so no new call may start for it here."""
        if self.presence is None or await self.presence.confirm() == run.epoch:
            return True
        log.info(
            "task %s: this worker's presence lapsed after the claim; leaving it to its new holder", run.claimed.task_id
        )
        return False
