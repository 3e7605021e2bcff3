"""Job lifecycle at library level: create a job from a JSONL file, run it embedded, dispatch it to Celery.
The CLI is a thin layer over these."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .config import Settings
from .errors import InputError
from .ingest import IngestReport, ingest
from .models import JobSpec
from .money import usd_to_micros
from .store import repo
from .store.db import get_engine


def create_job(settings: Settings, path: str | Path, spec: JobSpec, *, executor: str,
               strict: bool = False) -> tuple[str, IngestReport]:
    """Store the job and its valid lines in one transaction: with --strict a bad line leaves nothing behind."""
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        job_id = repo.create_job(
            conn, name=spec.name, spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            input_path=str(path), executor=executor, simulate=spec.simulate,
            budget_micros=usd_to_micros(spec.budget_usd) if spec.budget_usd is not None else None,
            max_cost_per_task_micros=(usd_to_micros(spec.max_cost_per_task_usd)
                                      if spec.max_cost_per_task_usd is not None else None))
        report = ingest(conn, job_id, path, spec, strict=strict, limits=settings.input_limits)
        if report.accepted == 0 and report.rejected == 0:  # rolls the job back: nothing to keep
            raise InputError("the file has no task lines (it is empty or only blank lines)")
        repo.set_job_counts(conn, job_id, total=report.accepted, invalid=report.rejected)
        if report.accepted == 0:
            repo.finish_job_if_done(conn, job_id)
    return job_id, report


def run_embedded(settings: Settings, job_id: str, *, concurrency: int, force_simulate: bool = False,
                 on_progress=None) -> str | None:
    """Run a stored job to the end in this process. Returns the job's terminal status."""
    from .executors.local import run_job
    from .runtime import open_engine

    async def main():
        async with open_engine(settings, concurrency=concurrency, shared_limits=False,
                               force_simulate=force_simulate) as engine:
            ticker = None
            if on_progress is not None:
                async def tick():
                    while True:
                        on_progress(engine)
                        await asyncio.sleep(0.2)
                ticker = asyncio.create_task(tick())
            try:
                return await run_job(engine, job_id, chunk_size=settings.chunk_size)
            finally:
                if ticker:
                    ticker.cancel()

    from .runtime import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())
