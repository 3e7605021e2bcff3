"""What a call's answer means: truncated or invalid (paid, escalate), too unsure for the quality policy (paid,
escalate), or the task's output (settled and recorded together)."""

from __future__ import annotations

from typing import Any

from ..models import ChatRequest
from ..routing import Candidate
from ..store import ledger
from ..store.schema import AttemptStatus, TaskStatus
from ..validate import InvalidOutput, validate_output
from .parts import EngineParts
from .state import ESCALATE, TRUNCATED, TRUNCATION_REASONS, TaskRun


class AnswersMixin(EngineParts):
    """The Engine's answer handling (see the module docstring)."""

    async def _answered(
        self,
        run: TaskRun,
        call_request: ChatRequest,
        cand: Candidate,
        attempt_id: int,
        completion,
        answer: dict[str, Any],
    ):
        """A call answered (and was priced): validate it, settle it, and record the task when it is accepted.
        `answer` is the attempt's settlement fields (cost, usage, latency...). Returns the task's recorded
        status, or TRUNCATED / ESCALATE."""
        model, ctx = cand.model, run.ctx
        truncated = completion.finish_reason in TRUNCATION_REASONS
        try:
            if truncated:  # cut off by the output cap: never a success, whatever the validator would say
                raise InvalidOutput(
                    f"truncated: {model.key} stopped on its output cap "
                    f"({call_request.max_output_tokens} tokens; finish_reason "
                    f"{completion.finish_reason})"
                )
            output = validate_output(
                run.task, completion.text, timeout_s=self.settings.input_limits.schema_validation_timeout_s
            )
        except InvalidOutput as e:
            await self._settle_rejected(
                run, cand, attempt_id, "truncated" if truncated else "invalid_output", str(e), answer
            )
            run.truncated = run.truncated or truncated
            return TRUNCATED if truncated else ESCALATE
        doubt = ctx.quality.low_confidence(run.task, model.key, completion) if ctx.quality else None
        if doubt:  # valid, but the quality policy escalates answers this unsure (the call is still paid)
            await self._settle_rejected(run, cand, attempt_id, "low_confidence", doubt, answer)
            return ESCALATE
        if ctx.quality:
            output = ctx.quality.record(output, completion)
        status = await self._end(
            run,
            TaskStatus.succeeded,
            settlement=ledger.Settlement(attempt_id=attempt_id, status=AttemptStatus.succeeded, **answer),
            provider=model.provider,
            model=model.model,
            output=output,
        )
        await self._check_overrun(ctx, cand, run.reserved, answer["cost_picos"])
        await self.cache.remember(run, model, attempt_id, output, completion.usage)
        return status

    async def _settle_rejected(
        self, run: TaskRun, cand: Candidate, attempt_id: int, error_class: str, message: str, answer: dict[str, Any]
    ) -> None:
        """An answer that was paid for but not accepted (invalid, truncated, too unsure): settle it as
        invalid_output, learn from an overrun, and keep its reason for the task's error."""
        await self._settle(
            run,
            cand,
            ledger.Settlement(
                attempt_id=attempt_id,
                status=AttemptStatus.invalid_output,
                error_class=error_class,
                error_message=message,
                **answer,
            ),
        )
        run.last_error = message

    def _observe_latency(self, key: str, latency_ms: int) -> None:
        prev = self.health.latency_ms.get(key)
        self.health.latency_ms[key] = latency_ms if prev is None else prev * 0.9 + latency_ms * 0.1
