"""Runs the service's batches: makes each batch's job, runs it (the embedded executor in a pool of threads,
or Celery when a broker is configured) and finalizes batches whose job has ended (a poll, so jobs run by
Celery workers finalize too). A restarted server carries on with the batches it left unfinished."""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy import Engine, select

from ..config import Settings
from ..store.schema import JobStatus, jobs
from . import batches

log = logging.getLogger(__name__)
POLL_S = 0.25


class BatchRunner:
    """Daemon threads: a stopping server does not wait for its jobs. What they had in flight is the ledger's
    usual crash case (leases lapse, unknown outcomes are reconciled), and the next start resumes them."""

    def __init__(self, settings: Settings, engine: Engine, *, simulate: bool):
        self.settings, self.engine, self.simulate = settings, engine, simulate
        self._queue: queue.SimpleQueue[tuple[str, str | None] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"llmbatch-batch-{i}", daemon=True)
            for i in range(max(1, settings.service_parallel_jobs))
        ]
        self._threads.append(threading.Thread(target=self._poll, name="llmbatch-finalize", daemon=True))

    def start(self) -> None:
        for b in batches.unfinished(self.engine):
            # Celery jobs keep running on the workers (their sweeper re-queues lost units): not re-dispatched.
            if b["status"] == "validating" or (b["job_id"] is not None and not self.settings.broker_url):
                self._queue.put((b["id"], b["job_id"]))
        for t in self._threads:
            t.start()

    def submit(self, batch_id: str) -> None:
        self._queue.put((batch_id, None))

    def stop(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._carry_on(*item)

    def _carry_on(self, batch_id: str, job_id: str | None) -> None:
        try:
            if job_id is None:
                job_id = batches.make_job(self.engine, self.settings, batch_id, simulate=self.simulate)
            if job_id is not None:
                self._run(job_id)
            batches.finalize(self.engine, self.settings, batch_id)
        except Exception:  # a thread's exception would vanish; the batch stays visible as it was
            log.exception("batch %s: running its job failed", batch_id)

    def _run(self, job_id: str) -> None:
        with self.engine.connect() as conn:
            job = conn.execute(select(jobs.c.status, jobs.c.total_tasks).where(jobs.c.id == job_id)).first()
        if job is None or job.status in JobStatus.terminal or not job.total_tasks:
            return
        if self.settings.broker_url:
            from ..executors.celery_app import dispatch_job  # the executor seam: only here when a broker is set

            dispatch_job(self.settings, job_id)
            return
        from ..jobs import run_embedded

        run_embedded(
            self.settings,
            job_id,
            concurrency=self.settings.concurrency,
            force_simulate=self.simulate,
            handle_signals=False,
        )  # a server thread: the server owns SIGINT/SIGTERM

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                for b in batches.unfinished(self.engine):
                    if b["job_id"] is not None:
                        batches.finalize(self.engine, self.settings, b["id"])
            except Exception:
                log.exception("finalizing batches failed; trying again")
