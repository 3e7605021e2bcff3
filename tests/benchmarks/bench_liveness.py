"""The store load that worker liveness adds (issue "fast-recovery"), per worker, at rest and under load.

    .venv/bin/python -m tests.benchmarks.bench_liveness                 # 4 workers, 20 s each phase, Postgres
    .venv/bin/python -m tests.benchmarks.bench_liveness --workers 8 --seconds 30 --tasks 200000

Each simulated worker runs exactly what a real worker runs for liveness (liveness.Presence renewing its row,
liveness.sweep_forever looking for lapsed workers), against the benchmark Postgres, with the default
presence_ttl_s and sweep_interval_s. Every statement and transaction they send is counted (SQLAlchemy events
on their own engine). "At rest": no job is running. "Under load": a job of --tasks tasks is running with
--running of them leased to the workers (the sweep's UPDATE then has rows to examine). Also timed: one sweep
on that job (the statement a live worker runs every sweep_interval_s). Redis load: none (presence lives in
the store; Celery's own broker traffic is unchanged).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import event, insert

from tests.benchmarks import common as C


def _count(engine) -> dict[str, int]:
    counts = {"statements": 0, "transactions": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def _stmt(*_a, **_k):
        counts["statements"] += 1

    @event.listens_for(engine, "commit")
    def _commit(*_a, **_k):
        counts["transactions"] += 1

    return counts


def _job(engine, n_tasks: int) -> str:
    from llmbatch.store import repo
    from llmbatch.store.schema import jobs, tasks
    from sqlalchemy import update

    with engine.begin() as c:
        job = repo.create_job(
            c,
            name="bench-liveness",
            spec={},
            input_path=None,
            executor="celery",
            simulate=True,
            budget_picos=None,
            max_cost_per_task_picos=None,
        )
        rows = [
            {
                "job_id": job,
                "seq": i,
                "task_id": f"t{i}",
                "line_no": i + 1,
                "task_type": "chat",
                "payload": "{}",
                "status": "queued",
            }
            for i in range(n_tasks)
        ]
        for i in range(0, n_tasks, 20000):
            c.execute(insert(tasks), rows[i : i + 20000])
        c.execute(update(jobs).where(jobs.c.id == job).values(status="running"))
    return job


def _claim(engine, job: str, running: int, workers: list[str]) -> None:
    from llmbatch.store import repo

    per = running // len(workers)
    for k, w in enumerate(workers):
        repo.claim_tasks(engine, job, k * per, (k + 1) * per - 1, worker=w, lease_s=300, max_deliveries=5)


async def _phase(settings, db_url: str, n_workers: int, seconds: float, workers: list[str], setup=None) -> dict:
    from llmbatch import liveness
    from llmbatch.store.aio import AsyncStore

    store = AsyncStore(db_url)
    counts = _count(store.engine)
    presences = [
        liveness.Presence(store, w, ttl_s=settings.presence_ttl_s, chunk_size=settings.chunk_size) for w in workers
    ]
    for p in presences:
        await p.start()
    if setup is not None:  # claims by live workers: their tasks must stay theirs
        await asyncio.to_thread(setup)
    sweeps = [asyncio.create_task(liveness.sweep_forever(store, settings, None)) for _ in workers]
    before = dict(counts)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    after = dict(counts)
    for s in sweeps:
        s.cancel()
    for p in presences:
        p._task.cancel()  # stop renewing without handing back (the phase's leases stay for the next phase)
    store.close()
    per_worker = {k: round((after[k] - before[k]) / elapsed / n_workers, 2) for k in counts}
    return {
        "seconds": round(elapsed, 1),
        "per_worker_per_s": per_worker,
        "all_workers_per_s": {k: round((after[k] - before[k]) / elapsed, 2) for k in counts},
    }


def _running(engine, job: str) -> int:
    from llmbatch.store import repo

    with engine.connect() as c:
        return repo.task_counts(c, job)["running"]


def main(argv=None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks of the running job (under-load phase)")
    ap.add_argument("--running", type=int, default=800, help="of which leased to the workers")
    args = ap.parse_args(argv)
    mach = C.machine()

    from llmbatch import liveness
    from llmbatch.config import load_settings
    from llmbatch.store import presence
    from llmbatch.store.db import get_engine

    _, pg = C.services()
    with C.fresh_postgres(pg, "llmbatch_bench_liveness") as db_url:
        settings = load_settings(database_url=db_url)
        engine = get_engine(db_url)
        workers = [f"bench:{i}:w" for i in range(args.workers)]
        C.log(f"at rest: {args.workers} workers for {args.seconds:.0f}s")
        rest = asyncio.run(_phase(settings, db_url, args.workers, args.seconds, workers))
        C.log(f"loading a {args.tasks:,}-task job; {args.running} of its tasks will be running")
        job = _job(engine, args.tasks)
        C.log(f"under load: {args.workers} workers for {args.seconds:.0f}s")
        load = asyncio.run(
            _phase(
                settings,
                db_url,
                args.workers,
                args.seconds,
                workers,
                setup=lambda: _claim(engine, job, args.running, workers),
            )
        )
        held = _running(engine, job)
        assert held == args.running // args.workers * args.workers, f"live workers lost tasks: {held} running"
        # One sweep over the loaded job while every worker is alive (what runs every sweep_interval_s).
        for w in workers:  # alive for the timing sweeps
            with engine.begin() as c:
                presence.beat(c, worker_id=w, host="bench", pid=0, started_at=0, ttl_s=60)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            released = liveness.release_dead_workers(
                engine, lease_s=settings.lease_seconds, ttl_s=60, chunk_size=settings.chunk_size
            )
            assert not released, released
        sweep_ms = (time.perf_counter() - t0) / reps * 1000
        C.log(f"one sweep over job {job}: {sweep_ms:.2f} ms")

    figure = load["per_worker_per_s"]["statements"]
    result = C.summary(
        "liveness",
        figure=figure,
        unit="statements/s per worker (under load)",
        baseline=None,
        baseline_desc="none: this is the added load itself",
        target="(issue: report it)",
        passed=None,
        settings={
            "workers": args.workers,
            "seconds": args.seconds,
            "tasks": args.tasks,
            "running": args.running,
            "presence_ttl_s": settings.presence_ttl_s,
            "sweep_interval_s": settings.sweep_interval_s,
        },
        machine_info=mach,
        at_rest=rest,
        under_load=load,
        sweep_ms_on_loaded_job=round(sweep_ms, 2),
        redis_ops_per_s=0,
    )
    C.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
