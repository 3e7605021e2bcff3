"""The Celery executor. The only module that imports Celery.

A queue message is a *unit*: (job_id, lo, hi), a contiguous seq range of at most chunk_size tasks, so a
million-task job is ~20k small messages, not a million. Each worker process keeps one asyncio loop in a
background thread with one Engine (one HTTP client, hundreds of calls in flight) and one TaskFlow
(flow.py): a message is acked once its unit's tasks are leased in the store and scheduled there, and the
tasks then take the worker's in-flight slots one by one, so a unit's slowest task holds only its own slot.
The flow claims a unit only while there is room (twice the concurrency, or that plus a unit), so a worker
holds at most that many tasks and the other messages stay in the queue for other workers. Delivery is at-least-once: a claim
whose worker dies expires (lease_seconds) and the sweeper re-queues it; a stopping worker finishes its
in-flight tasks within shutdown_grace_s and re-queues the rest. Recording is exactly-once (leased claims).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from celery.worker.request import Request

from .. import liveness
from ..config import load_settings
from ..store import ledger, repo
from ..store.db import get_engine, reading

if TYPE_CHECKING:
    from ..engine import Engine
    from .flow import TaskFlow

log = logging.getLogger("llmbatch.celery")

QUEUE = "llmbatch"
TASK_NAME = "llmbatch.run_range"

app = Celery("llmbatch")


def configure(settings=None) -> Celery:
    settings = settings or load_settings()
    if app.conf.broker_url and app.conf.broker_url != settings.broker_url:
        # Drop pooled connections to the previous broker, or messages would keep going there: close() drops the
        # connection pool only; the producer pool holds producers on the old connection.
        app.close()
        app.amqp._producer_pool = None
    # The visibility timeout must exceed the longest unit (Redis re-delivers unacked messages after it).
    # A unit is bounded by the task deadline; leases in the store guard against double work meanwhile.
    visibility = int(max(settings.retry.task_deadline_s * 2, settings.lease_seconds * 2, 3600))
    app.conf.update(
        broker_url=settings.broker_url,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        # Stopping a worker (SIGTERM, then the cold-shutdown signal): in-flight units get this long to finish;
        # after it, unacked units go back to the queue and the store's leases hand their tasks to others.
        worker_soft_shutdown_timeout=settings.shutdown_grace_s,
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app


class _WorkerRuntime:
    """One event loop thread and one Engine per worker process."""

    def __init__(self, concurrency: int | None, force_simulate: bool):
        from ..runtime import new_event_loop, open_engine
        from .flow import TaskFlow

        self.settings = load_settings()
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.engine: Engine | None = None
        self.flow: TaskFlow | None = None
        self._error: BaseException | None = None

        async def main():
            self._stop = asyncio.Event()
            try:
                async with open_engine(
                    self.settings,
                    concurrency=concurrency or self.settings.concurrency,
                    shared_limits=True,
                    force_simulate=force_simulate,
                    publish=publish_range,
                ) as engine:
                    self.engine = engine
                    self.flow = TaskFlow(engine, on_unit_done=self._unit_done)
                    self._ready.set()
                    sweepers = [
                        asyncio.create_task(self._sweep_forever()),
                        asyncio.create_task(liveness.sweep_forever(engine.store, self.settings, publish_range)),
                    ]
                    await self._stop.wait()
                    for sweeper in sweepers:
                        sweeper.cancel()
                    await self._hand_back()
            except BaseException as e:  # noqa: BLE001 - surfaced to the thread that waits on _ready
                if self._ready.is_set():
                    log.exception("worker event loop failed")
                self._error = e
                self._ready.set()

        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(main()), name="llmbatch-loop", daemon=True
        )
        self.thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def feed(self, job_id: str, lo: int, hi: int) -> int:
        """A unit's message: claim its tasks into the flow (waiting for room), then return so it is acked.
        A worker that is stopping claims nothing and puts the unit back on the queue."""
        assert self.flow is not None  # set before _ready, which the constructor waits for
        claimed = self.run(self.flow.feed(job_id, lo, hi))
        if claimed is None:
            publish_range(job_id, lo, hi)
            return 0
        return claimed

    async def _unit_done(self, job_id: str) -> None:
        assert self.engine is not None
        await self.engine.store.write(repo.finish_job_if_done, job_id)

    def stop_claiming(self) -> None:
        if self.flow is not None:
            self.loop.call_soon_threadsafe(self.flow.stop_claiming)

    async def _hand_back(self) -> None:
        """Stopping: claim nothing more, let in-flight tasks finish within shutdown_grace_s, then release the
        leases of what is left and re-queue those units, so other workers take them now, not at lease expiry."""
        assert self.flow is not None
        self.flow.stop_claiming()
        if await self.flow.drain(self.settings.shutdown_grace_s):
            return
        released = await self.flow.release_unfinished()
        units = 0
        for job_id, seqs in released.items():
            for lo, hi in repo.seq_ranges(seqs, self.settings.chunk_size):
                publish_range(job_id, lo, hi)
                units += 1
        if units:
            log.warning(
                "stopping: handed back %d unfinished task(s) in %d unit(s)",
                sum(len(s) for s in released.values()),
                units,
            )

    async def _sweep_forever(self):
        """The slow path behind liveness.sweep_forever: tasks whose leases expired (a worker without a presence
        record), jobs that lost their queue messages, and unknown outcomes past their grace period.
        Every worker sweeps, at a jittered interval; re-published units are harmless (claims are idempotent)."""
        import random

        engine = self.engine
        assert engine is not None
        lease = self.settings.lease_seconds
        interval = max(2.0, lease / 2)
        await asyncio.sleep(min(5.0, interval) * random.uniform(0.5, 1.0))  # soon after start: resume stalled jobs
        while True:
            try:
                ranges = await engine.store.read(repo.expired_lease_ranges, self.settings.chunk_size)
                for job_id, lo, hi in ranges:
                    publish_range(job_id, lo, hi)
                if ranges:
                    log.warning("re-queued %d unit(s) whose leases expired", len(ranges))
                for job_id in await engine.store.read(repo.stalled_jobs, idle_s=lease):
                    # One worker per job per lease period re-publishes, so a fleet restart does not flood.
                    if await asyncio.to_thread(_take_sweep_lock, self.settings, job_id, lease):
                        units = await asyncio.to_thread(dispatch_job, self.settings, job_id)
                        log.warning(
                            "job %s had work left and no activity for %.0fs: re-published %d unit(s)",
                            job_id,
                            lease,
                            units,
                        )
                settled = await engine.store.with_engine(ledger.reconcile, grace_s=self.settings.lease_seconds)
                if settled:
                    log.warning("reconciled %d attempt(s) with unknown outcome", len(settled))
            except Exception as e:  # noqa: BLE001 - the sweeper must survive store/broker outages
                log.warning("sweep failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

    def close(self):
        log.info("stopping: in-flight tasks get %.0fs to finish", self.settings.shutdown_grace_s)
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=self.settings.shutdown_grace_s + 30)


def _take_sweep_lock(settings, job_id: str, seconds: float) -> bool:
    import redis

    client = redis.Redis.from_url(settings.effective_redis_url)
    try:
        return bool(client.set(f"llmbatch:sweep:{job_id}", "1", nx=True, ex=max(1, int(seconds))))
    finally:
        client.close()


_runtime: _WorkerRuntime | None = None
_runtime_lock = threading.Lock()
_worker_options: dict[str, Any] = {"concurrency": None, "force_simulate": False}  # None: settings.concurrency


def _get_runtime() -> _WorkerRuntime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = _WorkerRuntime(**_worker_options)
    return _runtime


@signals.worker_ready.connect
def _warm_up(**_):
    # Build the engine (store, migrations, HTTP client) before the first unit arrives, not during it.
    _get_runtime()


@signals.worker_shutting_down.connect
def _stop_claiming(**_):
    # The first moment of a warm shutdown: messages still waiting for room go back to the queue.
    if _runtime is not None:
        _runtime.stop_claiming()


@signals.worker_shutdown.connect
def _shutdown(**_):
    if _runtime is not None:
        _runtime.close()


class UnitRequest(Request):
    """A unit message's request, whose ack survives a broker connection lost under it.

    When Redis goes away, the consumer restarts and closes its hub, which runs the acks still pending; kombu's
    Redis channel then fails inside `_connparams` with an AttributeError (its connection is None) rather than a
    connection error, and `ack_log_error` lets that through: the worker shut down (seen in CI, kombu 5.5).
    Counted as the connection error it is, the ack is logged and dropped: Redis re-delivers the message after
    the visibility timeout and its tasks, already finished, are skipped (leases make that a no-op)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        errors: tuple[type[BaseException], ...] = self.connection_errors  # the property over _connection_errors
        self._connection_errors = (*errors, AttributeError)


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True, Request=UnitRequest)
def run_range(job_id: str, lo: int, hi: int) -> int:
    rt = _get_runtime()
    claimed = rt.feed(job_id, lo, hi)
    if claimed == 0:  # nothing left to run in it (a redelivery, a cancelled job): the job may be done
        with get_engine(rt.settings.database_url).begin() as conn:
            repo.finish_job_if_done(conn, job_id)
    return claimed


def publish_range(job_id: str, lo: int, hi: int) -> None:
    app.send_task(TASK_NAME, args=[job_id, lo, hi], queue=QUEUE)


def unit_size(settings, open_tasks: int) -> int:
    """Tasks per queue message: chunk_size, grown for huge jobs so one dispatch publishes at most
    max_units_per_dispatch messages (each publish is a broker round trip; 1M tasks -> 5k messages)."""
    return max(settings.chunk_size, math.ceil(open_tasks / max(1, settings.max_units_per_dispatch)))


# The job's last TAIL_UNITS units go out as messages TAIL_SPLIT times smaller. Workers take a message whenever
# they have room, so a job ends when the worker holding the most claimed tasks at the moment the queue runs dry
# has finished them; whole units there leave workers up to a unit or two apart (measured: two workers at 100 in
# flight ended 1,008 and 1,108 calls, and one ran a last wave alone, ~1 s). Small last messages even that out.
TAIL_UNITS = 4
TAIL_SPLIT = 5


def tapered(ranges: list[tuple[int, int]], unit: int) -> list[tuple[int, int]]:
    """`ranges` (contiguous open seq ranges, at most `unit` wide, in order) with the last TAIL_UNITS units'
    worth of tasks re-cut into ranges of unit // TAIL_SPLIT (at least 1)."""
    small = max(1, unit // TAIL_SPLIT)
    cut, tail = len(ranges), 0
    while cut > 0 and tail < TAIL_UNITS * unit:
        cut -= 1
        tail += ranges[cut][1] - ranges[cut][0] + 1
    out = ranges[:cut]
    for lo, hi in ranges[cut:]:
        out.extend((start, min(start + small - 1, hi)) for start in range(lo, hi + 1, small))
    return out


def dispatch_job(settings, job_id: str) -> int:
    """Publish one message per unit of the job's unfinished tasks (the last ones smaller: `tapered`), over one
    broker connection."""
    configure(settings)
    engine = get_engine(settings.database_url)
    with reading(engine) as conn:
        open_tasks = sum(repo.task_counts(conn, job_id)[s] for s in ("queued", "running"))
        unit = unit_size(settings, open_tasks)
        ranges = tapered(repo.open_seq_ranges(conn, job_id, unit), unit)
    with app.producer_or_acquire() as producer:
        for lo, hi in ranges:
            app.send_task(TASK_NAME, args=[job_id, lo, hi], queue=QUEUE, producer=producer)
    return len(ranges)


def broker_problem(settings, timeout_s: float = 3.0) -> str | None:
    """Why the configured broker cannot be reached (one short phrase), or None when it answers."""
    configure(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - any failure to connect is the answer
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no answer'}"
    return None


def start_worker(*, concurrency: int | None, force_simulate: bool, loglevel: str = "INFO") -> None:
    """Run a Celery worker in this process. `concurrency` is calls in flight; Celery thread slots only
    carry units into the flow (and return once claimed), so two slots keep it fed: one waiting for room
    with the next unit, one spare. More would only keep messages from other workers."""
    settings = load_settings()
    configure(settings)
    concurrency = concurrency or settings.concurrency
    _worker_options.update(concurrency=concurrency, force_simulate=force_simulate)
    # httpx logs every request at INFO: at hundreds of calls a second that is noise (and ~4% of a worker's
    # CPU). The ledger already records every call; keep them only at DEBUG.
    if loglevel.upper() != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)
    slots = 2
    app.worker_main(
        [
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(slots),
            "--queues",
            QUEUE,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--prefetch-multiplier",
            "1",
        ]
    )
