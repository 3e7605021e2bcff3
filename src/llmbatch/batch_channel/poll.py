"""Waiting for a provider batch to end: polls with a doubling wait, and looks at the job's cancel flag and
fallback point every tick without calling the provider."""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import ProviderError
from ..providers.batch import BatchClient
from ..store import batches

log = logging.getLogger("llmbatch.batch")

TICK_S = 1.0  # how often a waiting poller looks at the cancel flag and the deadline (no provider call)


async def wait_until_ended(e, ctx, client: BatchClient, row_id: int, pid: str, fallback_at: float | None) -> str | None:
    """Poll batch `pid` until the provider says it ended. When the job is cancelled, or its fallback point
    passes, the batch is cancelled at the provider first (its finished lines stay billed). Returns why it was
    cancelled ("cancel", "deadline") or None."""
    s = e.settings
    delay = s.batch_poll_s
    next_poll = time.monotonic() + min(delay, 1.0)
    cancelled_for = None
    while True:
        if cancelled_for is None:
            if await e.is_cancelled(ctx):
                cancelled_for = "cancel"
            elif fallback_at is not None and time.time() >= fallback_at:
                cancelled_for = "deadline"
            if cancelled_for is not None:
                log.warning("job %s: cancelling batch %s (%s)", ctx.job_id, pid, cancelled_for)
                try:
                    await client.cancel(pid)
                except ProviderError as exc:
                    log.warning("job %s: cancelling batch %s failed: %s", ctx.job_id, pid, exc.message)
                next_poll, delay = time.monotonic(), min(delay, 1.0)
        if time.monotonic() >= next_poll:
            try:
                state = await client.poll(pid)
            except ProviderError as exc:
                log.warning("job %s: polling batch %s failed: %s", ctx.job_id, pid, exc.message)
                state = None
            await e.store.write(batches.polled, row_id)
            if state is not None and state.ended:
                break
            delay = min(delay * 2, s.batch_poll_max_s)
            next_poll = time.monotonic() + delay
        wait = next_poll - time.monotonic()
        if fallback_at is not None and cancelled_for is None:
            wait = min(wait, max(0.0, fallback_at - time.time()))
        await asyncio.sleep(max(0.05, min(wait, TICK_S)))
    if cancelled_for is None and await e.is_cancelled(ctx, fresh=True):
        # `llmbatch cancel` sets the flag, then cancels the batch at the provider itself: the batch can end
        # within the second the flag above was cached, and its unfinished lines must not then run online.
        cancelled_for = "cancel"
    return cancelled_for
