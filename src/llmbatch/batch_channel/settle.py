"""Settling a batch's lines in the ledger: a succeeded line is priced from its own usage and its task recorded;
a failed, expired, cancelled or missing line is settled (released, or charged what it carries) so its task can
run online. `e` is the engine whose store, worker id and progress the lines belong to."""

from __future__ import annotations

import asyncio
from typing import Any

from ..catalog import ModelInfo
from ..models import TaskLine
from ..providers.batch import CANCELLED, EXPIRED, LineResult
from ..store import ledger, repo
from ..store.schema import AttemptStatus, TaskStatus
from ..validate import InvalidOutput, validate_output
from .pricing import batch_cost

SETTLE_CHUNK = 512  # lines settled at once (group commit turns them into a few transactions)


async def settle_succeeded(e, ctx, model: ModelInfo, ln: dict, claimed: repo.ClaimedTask, r: LineResult) -> bool:
    """Settle and record a succeeded line; False when its output failed validation (it then runs online)."""
    assert r.completion is not None and r.usage is not None  # a succeeded line has both (parse_line)
    cost, source, perr = batch_cost(r.usage, model, ln["reserved_picos"])
    task = TaskLine.model_validate_json(ln["payload"])
    base: dict[str, Any] = dict(
        attempt_id=ln["attempt_id"],
        cost_picos=cost,
        cost_source=source,
        usage=r.usage,
        pricing_error=perr,
        provider_request_id=r.completion.provider_request_id,
    )
    try:
        output = validate_output(task, r.completion.text)
    except InvalidOutput as exc:
        await e.store.call(
            ledger.settle,
            ledger.Settlement(
                status=AttemptStatus.invalid_output, error_class="invalid_output", error_message=str(exc), **base
            ),
        )
        return False
    outcome = repo.TaskOutcome(
        job_id=ctx.job_id,
        seq=claimed.seq,
        worker=e.worker_id,
        status=TaskStatus.succeeded,
        provider=model.provider,
        model=model.model,
        output=output,
    )
    _, recorded = await e.store.call(
        ledger.settle_and_record, ledger.Settlement(status=AttemptStatus.succeeded, **base), outcome
    )
    if recorded:
        e.progress.finished[TaskStatus.succeeded] += 1
    return True


async def settle_failed(e, model: ModelInfo, ln: dict, r: LineResult | None) -> None:
    """A line that did not succeed: released, or charged the usage it carries; absent lines their bound."""
    if r is None:  # absent from an ended batch's results: it may have been billed; charge the bound
        s = ledger.Settlement(
            attempt_id=ln["attempt_id"],
            status=AttemptStatus.unknown,
            cost_picos=ln["reserved_picos"],
            cost_source="reservation",
            error_class="batch_line_missing",
            error_message="the ended batch has no result for this line; charged at its bound",
        )
    else:
        cost, source, perr = (0, "none", None) if r.usage is None else batch_cost(r.usage, model, ln["reserved_picos"])
        kind = {EXPIRED: "batch_expired", CANCELLED: "batch_cancelled"}.get(r.kind, r.error_class or "batch_error")
        s = ledger.Settlement(
            attempt_id=ln["attempt_id"],
            status=AttemptStatus.failed,
            cost_picos=cost,
            cost_source=source,
            usage=r.usage,
            error_class=kind[:40],
            error_message=r.error,
            http_status=r.http_status,
            pricing_error=perr,
        )
    await e.store.call(ledger.settle, s)


async def release_never_sent(e, lines: list[dict], why: str) -> None:
    """The lines of a batch that was never created: each reservation is released (nothing was sent)."""
    for i in range(0, len(lines), SETTLE_CHUNK):
        await asyncio.gather(
            *(
                e.store.call(
                    ledger.settle,
                    ledger.Settlement(
                        attempt_id=ln["attempt_id"],
                        status=AttemptStatus.failed,
                        cost_picos=0,
                        cost_source="none",
                        error_class="batch_not_created",
                        error_message=why[:500],
                    ),
                )
                for ln in lines[i : i + SETTLE_CHUNK]
            )
        )
