"""Running a stored job: the executor chosen once (from the job row and the settings), the embedded run with its
interrupt handling, publishing to Celery, and the one loop that waits for a job to finish."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Settings
from ..errors import BrokerError, ConfigError
from ..store.schema import JobStatus
from . import lifecycle

log = logging.getLogger("llmbatch.jobs")

LOCAL, CELERY = "local", "celery"
POLL_S = 0.5


@dataclass(frozen=True)
class RunOutcome:
    job_id: str
    status: str | None  # the job's status when the run returned (terminal, or `interrupted`)
    interrupted: bool = False
    done: int = 0
    left: int = 0


def choose_executor(settings: Settings, *, force_local: bool = False) -> str:
    """For a new job: Celery when a broker is configured (and --local was not given), else embedded."""
    return CELERY if settings.broker_url and not force_local else LOCAL


def check_broker(settings: Settings) -> None:
    """BrokerError, before anything is stored, when the configured broker does not answer."""
    from ..executors.celery_app import broker_problem

    problem = broker_problem(settings)
    if problem:
        from ..store.db import redact_url

        raise BrokerError(
            f"the broker at {redact_url(settings.broker_url or '')} is unreachable ({problem}); "
            f"start it, fix LLMBATCH_BROKER_URL, or unset it (or pass --local) to run embedded"
        )


def check_credentials(settings: Settings, *, simulate: bool) -> None:
    """ConfigError, before anything is stored or run, when this process could call no provider: no key is set.
    Only for work this process runs (embedded): Celery workers hold their own keys."""
    if simulate:
        return
    from ..catalog.loading import load_catalog
    from ..providers import available_credentials

    catalog = load_catalog(settings)
    if available_credentials(catalog, simulate=False):
        return
    names = sorted({p.key_env for p in catalog.providers.values() if p.key_env})
    raise ConfigError(
        f"no provider key is set ({', '.join(names)}): export one, or add --simulate to run on the bundled simulator"
    )


def dispatch(
    settings: Settings,
    job: dict[str, Any],
    *,
    concurrency: int | None = None,
    wait: bool = True,
    force_simulate: bool = False,
    on_progress: Callable | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run the job's unfinished tasks with the executor its row names: embedded in this process, or published to
    the Celery workers (then, with wait, until the job ends). Embedded with wait=False parks the job. Callers
    check_broker() before they change anything in the store."""
    job_id = job["id"]
    if job["executor"] == CELERY:
        if not settings.broker_url:
            raise ConfigError(
                f"job {job_id} runs on Celery workers: set LLMBATCH_BROKER_URL to the broker it was submitted to"
            )
        from ..executors.celery_app import dispatch_job

        dispatch_job(settings, job_id)
        if not wait:
            return RunOutcome(job_id, job["status"])
        return wait_for(settings, job_id, on_notice=on_notice)
    if not wait:
        lifecycle.park(settings, job_id)
        done, left = lifecycle.done_and_left(settings, job_id)
        return RunOutcome(job_id, lifecycle.find_job(settings, job_id)["status"], done=done, left=left)
    return run_embedded(
        settings,
        job_id,
        concurrency=concurrency or settings.concurrency,
        force_simulate=force_simulate,
        on_progress=on_progress,
        on_notice=on_notice,
        outcome=True,
    )


def wait_for(
    settings: Settings,
    job_id: str,
    *,
    poll_s: float = POLL_S,
    timeout: float | None = None,
    on_update: Callable[[dict, dict], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> RunOutcome:
    """THE wait loop: poll the store until the job is terminal (or interrupted, or `timeout` passes). Ctrl-C
    stops waiting only: the job keeps running on its workers."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            job, counts = lifecycle.progress(settings, job_id)
            if on_update is not None:
                on_update(job, counts)
            if job["status"] in JobStatus.terminal or job["status"] == JobStatus.interrupted:
                return RunOutcome(job_id, job["status"])
            if deadline is not None and time.monotonic() > deadline:
                return RunOutcome(job_id, job["status"])
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if on_notice:
            on_notice(f"stopped waiting; job {job_id} keeps running on the workers: llmbatch status {job_id} --watch")
        done, left = lifecycle.done_and_left(settings, job_id)
        return RunOutcome(job_id, None, interrupted=True, done=done, left=left)


class _Stopper:
    """Signals of an embedded run. First SIGINT/SIGTERM: no new claim or attempt; calls in flight get
    shutdown_grace_s. Second (or the grace ends): every task of the run is cancelled at once."""

    def __init__(self, engine, grace_s: float, on_notice):
        self.engine, self.grace_s, self.on_notice = engine, grace_s, on_notice
        self.signals = 0
        self.main: asyncio.Task | None = None

    def install(self, loop) -> list[int]:
        installed: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.signal)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass
        return installed

    def signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.engine.stop()
            if self.on_notice:
                self.on_notice(
                    f"stopping: no new calls; calls in flight get up to {self.grace_s:g}s to finish "
                    f"(Ctrl-C again to stop at once)"
                )
            asyncio.get_running_loop().call_later(self.grace_s, self.abort)
        else:
            self.abort()

    def abort(self) -> None:
        self.engine.stop()
        for t in asyncio.all_tasks():
            if t is not self.main and not t.done():
                t.cancel()


def run_embedded(
    settings: Settings,
    job_id: str,
    *,
    concurrency: int,
    force_simulate: bool = False,
    on_progress=None,
    on_notice: Callable[[str], None] | None = None,
    handle_signals: bool = True,
    outcome: bool = False,
):
    """Run a stored job's unfinished tasks in this process until it ends, or until it is interrupted (then its
    leases are handed back and the job is `interrupted`). Tasks leased to other live processes are waited for.
    Returns the job's status (or a RunOutcome with outcome=True). A store that cannot take writes raises its
    StoreWriteError after the run stopped."""
    from ..executors.local import run_job
    from ..runtime import new_event_loop, open_engine

    state: dict[str, Any] = {}

    async def main():
        async with open_engine(
            settings, concurrency=concurrency, shared_limits=False, force_simulate=force_simulate
        ) as engine:
            state["worker"] = engine.worker_id
            stopper = _Stopper(engine, settings.shutdown_grace_s, on_notice)
            stopper.main = asyncio.current_task()
            installed = stopper.install(asyncio.get_running_loop()) if handle_signals else []
            state["stopper"] = stopper
            ticker = None
            if on_progress is not None:

                async def tick():
                    while True:
                        on_progress(engine)
                        await asyncio.sleep(0.2)

                ticker = asyncio.create_task(tick())
            try:
                while True:
                    work = asyncio.create_task(run_job(engine, job_id, chunk_size=settings.chunk_size))
                    try:
                        status = await work
                    except asyncio.CancelledError:
                        if stopper.signals == 0 and not engine.stopping:
                            raise
                        status = None
                    if status is not None or engine.stopping:
                        break
                    # Tasks are leased to another live process (or a lease has not lapsed yet): wait, then claim
                    # what it leaves behind.
                    await asyncio.sleep(1.0)
                if engine.stopping:  # units cancelled by an abort finish their cleanup (briefly)
                    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t is not ticker]
                    if others:
                        await asyncio.wait(others, timeout=2.0)
                state["stopped"] = engine.stopping
                state["fatal"] = engine.fatal
                return status
            finally:
                if ticker:
                    ticker.cancel()
                for sig in installed:
                    asyncio.get_running_loop().remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        status = runner.run(main())
    if state.get("stopped"):
        try:
            status = lifecycle.stop_after_interrupt(settings, job_id, state["worker"])
        except Exception as e:  # noqa: BLE001 - a store that refuses writes: the leases lapse on their own
            if state.get("fatal") is None:
                raise
            log.warning("could not hand back leases: %s", e)
        if state.get("fatal") is not None:
            raise state["fatal"]
    if not outcome:
        return status
    done, left = lifecycle.done_and_left(settings, job_id)
    return RunOutcome(job_id, status, interrupted=status == JobStatus.interrupted, done=done, left=left)
