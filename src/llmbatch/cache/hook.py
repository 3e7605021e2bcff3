"""What the engine calls around a candidate's calls: serve() before the first reservation, remember() after a
validated success, release() when the candidate's calls are over.

One call for identical requests: the first task with a key leads (in this process an in-flight map of keys;
across Celery workers a claim marker in the store), the others wait for its answer and are then served from
it, each with its own result and a $0 cache attempt. When the leader's answer fails validation the followers
escalate as it did, without calling; when it fails otherwise, one of them leads next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceeded
from ..models import ChatRequest, TaskLine
from ..prompts import build_request
from ..store import ledger
from ..store.repo import TaskOutcome
from ..store.schema import AttemptStatus, TaskStatus
from . import entries
from .keys import request_key
from .prompt import PromptPlanner

if TYPE_CHECKING:
    from ..engine import Engine
    from ..engine.state import TaskRun
    from ..routing import Candidate

log = logging.getLogger("llmbatch.cache")

EVICT_EVERY = 500  # stores between two eviction passes (per process)
# Every RECOUNT_EVERY-th pass counts the cache exactly (other processes store too) and sweeps stale claims;
# between, this process's own estimate decides (entries.evict).
RECOUNT_EVERY = 20
PUT_BATCH = 500  # answers stored in one store operation at most
POLL_S = (0.1, 1.0)  # waiting on another worker's claim: first and longest poll interval
# A claim marker lives this long unless renewed (every third of it while the call is under way): a worker
# that died holds its keys for at most this long (at once free when it ran on this host: its pid is gone).
CLAIM_S = 30.0
# No provider caches a prefix below 1,024 tokens, and a token is at least one character.
MIN_PREFIX_CHARS = 1024


def _dead_here(worker: str) -> bool:
    """Whether `worker` (host:pid:nonce, see runtime.worker_id) ran on this host and its process is gone."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (owned by someone else)
        return False
    return False


@dataclass
class _Invalid:
    error: str | None


@dataclass
class TaskCache:
    """One task's cache state on one candidate."""

    key: str
    job_id: str
    provider: str
    model: str
    scope: str | None = None  # the job's API token: entries are never shared across tokens
    lead: bool = False  # this task makes the call the others wait for (in this process)
    claimed: bool = False  # ... and holds the key's claim marker in the store
    stored: bool = False
    warm: tuple[str, str] | None = None  # the prompt-cache group this call warms


class CacheHook:
    def __init__(self, engine: "Engine", *, escalate: Any):
        self.engine = engine
        self.settings = engine.settings
        self.escalate = escalate  # the engine's "escalate to a higher tier" outcome
        self.prompt = PromptPlanner(enabled=engine.settings.prompt_cache_scheduling)
        self._inflight: dict[str, asyncio.Future] = {}
        self._puts = 0
        # The cache's size as far as this process knows: the last exact count plus its own stores since (an
        # upper bound of its own part; other processes' stores show at the next exact count).
        self._cache_size: int | None = None
        self._evict_passes = 0
        self._claims: set[str] = set()  # keys whose store claim this process holds
        self._renewer: asyncio.Task | None = None
        self._to_put: list[tuple[dict[str, Any], asyncio.Future]] = []  # answers waiting for the writer
        self._putter: asyncio.Task | None = None

    # ----------------------------------------------------------------------------------- scheduling

    def note_claimed(self, claimed: list) -> None:
        """Count the shared prefixes of a claimed unit before its tasks run."""
        if not self.prompt.enabled:
            return
        for c in claimed:
            if len(c.payload) < MIN_PREFIX_CHARS:  # cannot carry a cacheable prefix: skip the parse
                continue
            try:
                self.prompt.note(build_request(TaskLine.model_validate_json(c.payload)))
            except ValueError:  # the task itself reports a bad payload when it runs
                continue

    # -------------------------------------------------------------------------------------- serving

    async def serve(self, run: "TaskRun", cand: "Candidate", request: ChatRequest) -> tuple[Any, ChatRequest]:
        """(a terminal status already recorded, or the engine's escalate outcome, or None, the request to
        send). None means: make the call (this task leads, or waited in vain)."""
        ctx = run.ctx
        run.cache = None
        # A quality policy judges each answer by its confidence, which a cached answer does not carry, and a
        # calibration job measures the models themselves: neither reads nor feeds the response cache.
        key = (
            None
            if ctx.quality is not None
            else request_key(self.engine.catalog, cand.model, request, simulate=ctx.simulate, scope=ctx.owner)
        )
        if key is not None:
            tc = run.cache = TaskCache(key, ctx.job_id, cand.model.provider, cand.model.model, ctx.owner)
            if ctx.spec.cache:
                served = await self._lookup(run, cand, tc)
                if served is not None:
                    return served, request
        request, group = await self.prompt.plan(cand.model, request, run.deadline)
        if group is not None:
            if run.cache is None:
                self.prompt.warmed(group)  # no release() will come for a task without a key
            else:
                run.cache.warm = group
        return None, request

    async def _lookup(self, run: "TaskRun", cand: "Candidate", tc: TaskCache):
        model, deadline = cand.model, run.deadline
        while True:
            fut = self._inflight.get(tc.key)
            if fut is not None:  # another task of this process is making this very call
                try:
                    result = await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, deadline - time.time()))
                except (asyncio.TimeoutError, TimeoutError):
                    return None
                if isinstance(result, entries.Entry):
                    return await self._serve_hit(run, result)
                if isinstance(result, _Invalid):
                    run.last_error = result.error
                    return self.escalate
                continue  # the leader failed otherwise: lead (or find its successor)
            fut = self._inflight[tc.key] = asyncio.get_running_loop().create_future()
            delay = POLL_S[0]
            while True:
                verdict, entry = await self.engine.store.write(
                    entries.claim_or_get,
                    tc.key,
                    scope=tc.scope,
                    provider=model.provider,
                    model=model.model,
                    worker=self.engine.worker_id,
                    ttl_s=self.settings.cache_ttl_s,
                    claim_s=CLAIM_S,
                )
                if (
                    verdict == entries.WAIT
                    and entry
                    and _dead_here(entry)
                    and await self.engine.store.write(
                        entries.take_over, tc.key, dead=entry, worker=self.engine.worker_id, claim_s=CLAIM_S
                    )
                ):
                    verdict = entries.LEAD
                if verdict == entries.HIT:
                    self._resolve(tc.key, entry)
                    return await self._serve_hit(run, entry)
                if verdict == entries.INVALID:  # this very request's answer failed validation before
                    self._resolve(tc.key, _Invalid(entry))
                    run.last_error = entry
                    return self.escalate
                if verdict == entries.LEAD or time.time() + delay > deadline:
                    tc.lead, tc.claimed = True, verdict == entries.LEAD
                    if tc.claimed:
                        self._hold(tc.key)
                    return None
                await asyncio.sleep(delay)  # another worker is making the call
                delay = min(POLL_S[1], delay * 2)

    def _hold(self, key: str) -> None:
        self._claims.add(key)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_claims())

    async def _renew_claims(self) -> None:
        while self._claims:
            await asyncio.sleep(CLAIM_S / 3)
            try:
                await self.engine.store.write(
                    entries.renew, sorted(self._claims), worker=self.engine.worker_id, claim_s=CLAIM_S
                )
            except Exception as e:  # noqa: BLE001 - a store blip: the next beat retries
                log.warning("response cache: renewing claims failed: %s: %s", type(e).__name__, e)

    def _resolve(self, key: str, result: Any) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def _serve_hit(self, run: "TaskRun", entry: entries.Entry):
        """Record the task as answered by `entry`: a $0 attempt on channel `cache` that saved the original
        cost. None (make the call instead) when even $0 cannot be reserved (the job is past its cap)."""
        engine, ctx, claimed = self.engine, run.ctx, run.claimed
        try:
            attempt_id = await engine.store.call(
                ledger.reserve,
                job_id=ctx.job_id,
                task_seq=claimed.seq,
                task_id=claimed.task_id,
                provider=entry.provider,
                model=entry.model,
                amount_picos=0,
                purpose="cache",
                worker=engine.worker_id,
                channel="cache",
                daily_cap_picos=engine.daily_cap_picos,
            )
        except BudgetExceeded:
            return None
        # Only validated answers are cached, and a truncated answer never validates: the original call stopped
        # on its own ("stop" in OpenAI's terms, what the export shows).
        settlement = ledger.Settlement(
            attempt_id=attempt_id,
            status=AttemptStatus.succeeded,
            cost_picos=0,
            cost_source="cache",
            finish_reason="stop",
        )
        outcome = TaskOutcome(
            job_id=ctx.job_id,
            seq=claimed.seq,
            worker=engine.worker_id,
            status=TaskStatus.succeeded,
            provider=entry.provider,
            model=entry.model,
            output=entry.output,
            escalations=run.escalations,
        )
        _, recorded = await engine.store.call(entries.record_hit, settlement, outcome, entry.cost_picos)
        if recorded:
            engine.progress.finished[TaskStatus.succeeded] += 1
        return TaskStatus.succeeded

    # ------------------------------------------------------------------------------------ after calls

    async def remember(self, run: "TaskRun", model, attempt_id: int, output: Any, usage) -> None:
        """After a succeeded, validated and recorded attempt: store its answer (and hand it to the waiters)."""
        tc: TaskCache | None = run.cache
        if tc is None:
            return
        try:
            entry = await self._put(
                {
                    "key": tc.key,
                    "scope": tc.scope,
                    "provider": model.provider,
                    "model": model.model,
                    "output": output,
                    "job_id": run.ctx.job_id,
                    "usage": usage.model_dump() if usage is not None else None,
                    "attempt_id": attempt_id,
                }
            )
        except Exception as e:  # noqa: BLE001 - the task is recorded; a lost cache entry only costs a call later
            log.warning("response cache: storing an answer failed: %s: %s", type(e).__name__, e)
            return
        tc.stored = True
        self._claims.discard(tc.key)
        if tc.lead:
            self._resolve(tc.key, entry)
        self._puts += 1
        if self._cache_size is not None:
            self._cache_size += 1
        if self._puts % EVICT_EVERY == 1:
            await self._evict()

    async def _evict(self) -> None:
        exact = self._evict_passes % RECOUNT_EVERY == 0
        self._evict_passes += 1
        try:
            _, self._cache_size = await self.engine.store.write(
                entries.evict,
                max_entries=self.settings.cache_max_entries,
                ttl_s=self.settings.cache_ttl_s,
                known_count=None if exact else self._cache_size,
            )
        except Exception as e:  # noqa: BLE001 - eviction is housekeeping; the next pass retries
            self._cache_size = None  # count again next time
            log.warning("response cache: eviction failed: %s: %s", type(e).__name__, e)

    async def _put(self, item: dict[str, Any]) -> entries.Entry:
        """Store one answer. One write is under way at a time; the answers that come meanwhile go together in the
        next one (entries.put_many), so a wave of tasks finishing at once costs the store one operation."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._to_put.append((item, fut))
        if self._putter is None or self._putter.done():
            self._putter = loop.create_task(self._write_puts())
        return await fut

    async def _write_puts(self) -> None:
        while self._to_put:
            batch, self._to_put = self._to_put[:PUT_BATCH], self._to_put[PUT_BATCH:]
            try:
                stored = await self.engine.store.write(entries.put_many, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to each waiting remember(), which logs it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), entry in zip(batch, stored):
                if not fut.done():
                    fut.set_result(entry)

    async def release(self, run: "TaskRun", *, escalated: bool) -> None:
        """The candidate's calls are over: end its prompt-cache warm-up, and if it led without storing an
        answer, wake the waiters (escalating with it when its answer failed validation) and drop its claim."""
        tc: TaskCache | None = run.cache
        run.cache = None
        if tc is None:
            return
        self._claims.discard(tc.key)
        if tc.warm is not None:
            self.prompt.warmed(tc.warm)
        if tc.stored:
            return
        if tc.lead:
            self._resolve(tc.key, _Invalid(run.last_error) if escalated else None)
        try:
            if escalated:  # replaces this worker's claim too
                await self.engine.store.write(
                    entries.put_invalid,
                    tc.key,
                    scope=tc.scope,
                    provider=tc.provider,
                    model=tc.model,
                    error=run.last_error or "invalid output",
                    job_id=tc.job_id,
                )
            elif tc.claimed:
                await self.engine.store.write(entries.release, tc.key, worker=self.engine.worker_id)
        except Exception as e:  # noqa: BLE001 - a claim expires on its own; a verdict only saves a call
            log.warning("response cache: releasing a key failed: %s: %s", type(e).__name__, e)
