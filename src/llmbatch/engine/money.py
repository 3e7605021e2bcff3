"""The money of one attempt: reserve its upper bound (ahead of its slot when it can), give back what was never
sent, price what was billed, and learn from overruns (a provider billing above the bound)."""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction

from ..catalog import ModelInfo
from ..catalog.pricing import price
from ..errors import BudgetExceeded, PricingError, ProviderError
from ..money import exact_usd
from ..routing import Candidate
from ..slots import Slot
from ..store import ledger, repo
from ..store.schema import AttemptStatus
from .parts import EngineParts
from .state import JobContext, LeaseLost, TaskRun

log = logging.getLogger("llmbatch.engine")


class MoneyMixin(EngineParts):
    """The Engine's reservations and settlements of failed calls (see the module docstring)."""

    async def _reserve_ahead(self, run: TaskRun, cand: Candidate) -> int | None:
        """The call's reservation, made before its slot is free, so a freed slot calls at once instead of one
        store round trip later (at a fixed latency a worker's answers come together and the loop is busy
        with them then: ~30-65 ms of every slot's cycle went there). None when the attempt will not call
        (the slot's checks then say why), when its channel is flex (chosen at the call), or when the money
        does not fit now: then it reserves in its slot as before, waiting for money there if it must.
        Bounded by the tasks waiting for a slot (the flow's claim-ahead). A reservation whose call is never
        sent is given back exactly (_release_unsent)."""
        model, ctx = cand.model, run.ctx
        if (
            self.stopping
            or ctx.cancelled
            or ctx.stop_reason is not None
            or run.attempts >= self.settings.retry.max_attempts_per_task
            or time.time() > run.deadline
        ):
            return None
        adapter = self.providers.get(ctx.simulate)[0][model.provider]
        if self.batches.flex_call(ctx, model, adapter, run.deadline) is not None:
            return None
        if not await self._still_holding(run):
            return None
        try:
            attempt_id = await self._reserve(run, cand, once=True)
        except (BudgetExceeded, LeaseLost):
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
        self, run: TaskRun, cand: Candidate, channel: str = "sync", *, once: bool = False, slot: Slot | None = None
    ) -> int:
        """Reserve the call's upper bound. A refusal that only other calls' in-flight holds cause is not
        final: those settle (usually far below their bound) and free money, so wait and try again. Give up
        (BudgetExceeded) once the amount cannot fit even if every in-flight call cost nothing, for the daily
        cap at once, or at the task deadline. The job then stops within one call's bound of its cap.
        `once`: no waiting, a refusal is raised at once. `slot`: freed while it waits for money (retaken
        before it tries again), so calls reserved ahead can go out, settle and free what it waits for."""
        model, ctx, claimed = cand.model, run.ctx, run.claimed
        purpose = "calibration" if ctx.spec.calibration else run.purpose
        amount = run.reserved = self._amount(cand)
        delay = 0.05
        while True:
            if delay > 0.05 and not await self._still_holding(run):  # after a wait for money
                raise LeaseLost()
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
                if once or e.scope != "job" or time.time() + delay > run.deadline:
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

    def _cost(self, usage, model: ModelInfo, run: TaskRun) -> tuple[int, str, str | None]:
        """Actual cost from usage. A usage the catalog cannot price is never $0: it is charged at the
        reservation (the upper bound) and flagged so the report shows it loudly."""
        try:
            return price(usage, model).picos, "usage", None
        except PricingError as e:
            log.error("cannot price usage for %s: %s; charging the reserved upper bound", model.key, e)
            return run.reserved, "unpriced", str(e)

    async def _settle_error(self, run: TaskRun, attempt_id: int, cand: Candidate, e: ProviderError, latency_ms: int):
        cost, source, perr = 0, "none", None
        if e.usage is not None:  # some failures are still billed (the provider returned usage)
            cost, source, perr = self._cost(e.usage, cand.model, run)
        await self._settle(
            run,
            cand,
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

    async def _settle(self, run: TaskRun, cand: Candidate, settlement: ledger.Settlement) -> None:
        """Settle a paid attempt that did not end its task (failed, or an answer not accepted), then learn from
        an overrun (and stop the job's dispatch if it passed the cap)."""
        await self.store.call(ledger.settle, settlement)
        await self._check_overrun(run.ctx, cand, run.reserved, settlement.cost_picos)

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
