"""Builds a ready-to-run Engine for this process: store, catalog, HTTP client, adapters, rate limiter and,
for simulated jobs, the simulator (in-process unless LLMBATCH_SIMULATOR_URL points at one)."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import uuid
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

from .catalog import Catalog
from .catalog.loading import load_catalog
from .config import Settings
from .engine import Engine
from .liveness import Presence
from .providers import available_credentials, build_adapters, make_http_client
from .ratelimit import make_rate_limiter
from .store.aio import AsyncStore

if TYPE_CHECKING:
    from .providers.base import Adapter
    from .simulator import SimulatorThread

log = logging.getLogger("llmbatch.runtime")

# The cyclic garbage collector while an engine runs (see _collector_tuned). Measured at zero latency: with
# Python's defaults (700, 10, 10) it took ~15 % of the process's CPU, a young-generation pass every few tasks
# that walks the objects of every call in flight, and each full pass walked every module, schema and catalog
# object too. Most of a task's objects are freed by reference counting long before 20,000 allocations.
GC_THRESHOLDS = (20_000, 20, 10)
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def _collector_tuned():
    """While an engine is open: what exists at its start (imports, catalog, settings) is moved out of the
    collector's sight (gc.freeze: it lives as long as the process anyway), and the young generation is
    collected every GC_THRESHOLDS[0] net allocations rather than 700. The previous settings come back when the
    last open engine closes (an application embedding llmbatch keeps its own)."""
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


def new_event_loop():
    """uvloop when installed (it is a default dependency on Linux/macOS), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ProviderSet:
    """Adapters for real jobs and for simulated ones. A job's `simulate` flag decides which set serves it, so
    a worker never sends a simulated job to a paid API. `force_simulate` makes every job simulated."""

    def __init__(self, catalog: Catalog, client, settings: Settings, *, force_simulate: bool = False):
        self._catalog, self._client, self._settings = catalog, client, settings
        self.force_simulate = force_simulate
        self._real: tuple[dict[str, Adapter], frozenset[str]] | None = None
        self._sim: tuple[dict[str, Adapter], frozenset[str]] | None = None
        self._sim_thread: SimulatorThread | None = None
        self._lock = threading.Lock()

    def get(self, simulate: bool):
        if simulate or self.force_simulate:
            if self._sim is None:
                with self._lock:
                    if self._sim is None:
                        url = self._settings.simulator_url
                        if not url:
                            from .simulator import SimulatorConfig, SimulatorThread

                            self._sim_thread = SimulatorThread(SimulatorConfig()).start()
                            url = self._sim_thread.url
                        self._sim = (
                            build_adapters(self._catalog, self._client, simulator_url=url),
                            frozenset(available_credentials(self._catalog, simulate=True)),
                        )
            return self._sim
        if self._real is None:
            self._real = (
                build_adapters(self._catalog, self._client),
                frozenset(available_credentials(self._catalog, simulate=False)),
            )
        return self._real

    def close(self) -> None:
        if self._sim_thread is not None:
            self._sim_thread.stop()


@asynccontextmanager
async def open_engine(
    settings: Settings, *, concurrency: int, shared_limits: bool, force_simulate: bool = False, publish=None
):
    """`publish(job_id, lo, hi)` (Celery) re-queues the units this process hands back when it stops."""
    catalog = load_catalog(settings)
    store = AsyncStore(settings.database_url)
    client = make_http_client(
        max_connections=max(concurrency * 2, 64),
        timeout=settings.retry.call_timeout_s,
        lean=settings.http_client == "lean",
    )
    limiter = make_rate_limiter(settings, shared=shared_limits)
    providers = ProviderSet(catalog, client, settings, force_simulate=force_simulate)
    engine = Engine(
        settings=settings,
        catalog=catalog,
        store=store,
        providers=providers,
        limiter=limiter,
        worker_id=worker_id(),
        concurrency=concurrency,
    )
    engine.presence = Presence(
        store, engine.worker_id, ttl_s=settings.presence_ttl_s, chunk_size=settings.chunk_size, publish=publish
    )
    with _collector_tuned():
        try:
            await engine.presence.start()  # before the first claim: sweepers must see us alive
            yield engine
        finally:
            # Whatever this process still holds goes back to the queue now, not after lease_seconds.
            handed_back = await engine.presence.stop()
            if handed_back:
                log.warning("handed back %d unfinished task(s) on stop", handed_back)
            await limiter.close()
            await client.aclose()
            providers.close()
            store.close()
