"""`llmbatch cancel JOB` at the providers: the job's open batches are cancelled there at once."""

from __future__ import annotations

import logging

from ..errors import ProviderError
from ..providers.batch import batch_client
from ..store import batches, repo

log = logging.getLogger("llmbatch.batch")


async def cancel_job_batches(settings, job_id: str) -> list[str]:
    """`llmbatch cancel JOB`: cancel the job's open provider batches at the provider now (no more spend there).
    Their finished lines are billed; the worker polling each batch sees it end and settles them (or, when that
    worker is gone, the next one to resume the job). Returns the provider batch ids cancelled."""
    from ..catalog.loading import load_catalog
    from ..providers import make_http_client
    from ..runtime import ProviderSet
    from ..store.db import get_engine

    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        job = repo.get_job(conn, job_id)
        rows = [r for r in batches.open_rows(conn, job_id) if r["provider_batch_id"]]
    if not rows or job is None:
        return []
    if job["simulate"] and not settings.simulator_url:
        return []  # an in-process simulator died with the process that ran the job
    catalog = load_catalog(settings)
    client = make_http_client(max_connections=8)
    providers = ProviderSet(catalog, client, settings)
    done = []
    try:
        adapters = providers.get(bool(job["simulate"]))[0]
        for r in rows:
            adapter = adapters.get(r["provider"])
            bc = batch_client(adapter) if adapter is not None else None
            if bc is None:
                continue
            try:
                await bc.cancel(r["provider_batch_id"])
                done.append(r["provider_batch_id"])
            except ProviderError as e:
                log.warning("cancelling %s batch %s failed: %s", r["provider"], r["provider_batch_id"], e.message)
    finally:
        await client.aclose()
        providers.close()
    return done
