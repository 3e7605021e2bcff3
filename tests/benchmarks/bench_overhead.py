"""Per-task overhead: a zero-latency simulator, so the figure is what the pipeline itself costs per task.

    .venv/bin/python -m tests.benchmarks.bench_overhead                    # 20,000 tasks, embedded + celery
    .venv/bin/python -m tests.benchmarks.bench_overhead --modes embedded --tasks 2000
    .venv/bin/python -m tests.benchmarks.bench_overhead --profile          # + py-spy summary of where time goes

Modes, each end to end from submit (create_job starts) to the job's terminal status in the store:
- embedded: create_job + run_embedded on SQLite in this process;
- celery: create_job + dispatch_job on Postgres/Redis, executed by N `llmbatch worker` processes that were
  started (and ready) before the clock starts.
Target (issue): >= 1,000 tasks/s each. Reference baseline, same run: a bare aiohttp loop against the same
simulator (what the simulator + one client process can do on this machine), reported alongside.
With --profile, py-spy samples the process(es) doing the work and the summary shows where time goes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.benchmarks import common as C

TARGET_PER_S = 1000.0  # the original issue; issue 14 asks embedded to keep >= 1,300 (checked in the README)


def run_embedded(
    tmp: Path, path: Path, *, tasks: int, concurrency: int, sim_url: str, budget: str, profile: bool
) -> dict:
    from llmbatch.config import load_settings
    from llmbatch.jobs import create_job, run_embedded as run
    from llmbatch.models import JobSpec

    db_url = f"sqlite:///{tmp}/overhead.db"
    settings = load_settings(database_url=db_url, simulator_url=sim_url)
    from llmbatch.store.db import get_engine

    get_engine(db_url)  # migrations are not part of the figure
    spec = JobSpec.model_validate({"simulate": True, "budget_usd": budget})
    with C.py_spy([os.getpid()], tmp, "embedded", profile) as files:
        t0 = time.perf_counter()
        job_id, report = create_job(settings, path, spec, executor="local")
        t1 = time.perf_counter()
        cpu0 = time.process_time()  # this process only: the simulator is another one
        status = run(settings, job_id, concurrency=concurrency)
        cpu = time.process_time() - cpu0
        t2 = time.perf_counter()
    counts, spent, ledger = C.job_counts(db_url, job_id)
    out = {
        "mode": "embedded",
        "store": "sqlite",
        "status": status,
        "tasks": report.accepted,
        "counts": counts,
        "correct": counts["succeeded"] == tasks and spent == ledger,
        "ingest_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
        "end_to_end_s": round(t2 - t0, 3),
        "per_s": round(tasks / (t2 - t0), 1),
        "run_per_s": round(tasks / (t2 - t1), 1),
        "run_cpu_s": round(cpu, 2),
        "cpu_ms_per_task": round(1000 * cpu / tasks, 3),
    }
    if profile:
        out["profile"] = C.summarize_collapsed(files)
    return out


def run_celery(
    tmp: Path,
    path: Path,
    *,
    tasks: int,
    workers: int,
    concurrency: int,
    sim_url: str,
    budget: str,
    redis_url: str,
    pg_url: str,
    profile: bool,
    chunk_size: int | None,
) -> dict:
    from llmbatch.config import load_settings
    from llmbatch.store.db import get_engine

    broker = C.redis_db(redis_url, 12)
    with C.fresh_postgres(pg_url) as db_url, C.Workers(tmp) as ws:
        get_engine(db_url)  # migrate before the workers start
        extra = {"LLMBATCH_CHUNK_SIZE": str(chunk_size)} if chunk_size else {}
        env = C.clean_env(
            LLMBATCH_DATABASE_URL=db_url, LLMBATCH_BROKER_URL=broker, LLMBATCH_SIMULATOR_URL=sim_url, **extra
        )
        ws.start(workers, env=env, concurrency=concurrency, cwd=tmp)
        settings = load_settings(
            database_url=db_url,
            broker_url=broker,
            simulator_url=sim_url,
            **({"chunk_size": chunk_size} if chunk_size else {}),
        )
        with C.py_spy(ws.pids(), tmp, "celery", profile) as files:
            cpu0 = C.proc_cpu_s(ws.pids())
            t0 = time.perf_counter()
            job_id, n, units = C.submit(settings, path, budget_usd=budget)
            t1 = time.perf_counter()
            job, t2 = C.wait_job(db_url, job_id, timeout=max(600, tasks / 20))
            cpu = C.proc_cpu_s(ws.pids()) - cpu0
        counts, spent, ledger = C.job_counts(db_url, job_id)
        out = {
            "mode": "celery",
            "store": "postgres",
            "workers": workers,
            "status": job["status"],
            "tasks": n,
            "units": units,
            "counts": counts,
            "correct": counts["succeeded"] == tasks and spent == ledger,
            "submit_s": round(t1 - t0, 3),
            "end_to_end_s": round(t2 - t0, 3),
            "per_s": round(tasks / (t2 - t0), 1),
            "run_per_s": round(tasks / (t2 - t1), 1),
            "workers_cpu_s": round(cpu, 2),
            "cpu_ms_per_task": round(1000 * cpu / tasks, 3),
        }
        if profile:
            out["profile"] = C.summarize_collapsed(files)
        if not out["correct"]:
            out["worker_logs"] = ws.tail()
    return out


def main(argv=None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--modes", default="embedded,celery")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=200, help="calls in flight per process")
    ap.add_argument("--chunk-size", type=int, default=None, help="LLMBATCH_CHUNK_SIZE (default: the settings')")
    ap.add_argument("--budget", default="100")
    ap.add_argument("--profile", action="store_true", help="py-spy the working processes")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    mach = C.machine()
    results = []
    with C.workdir("bench_overhead_", args.keep) as tmp, C.simulator(latency_s=0.0) as sim_url:
        path = C.write_tasks(tmp / "tasks.jsonl", args.tasks)
        base = C.bare_aiohttp(sim_url, n=min(args.tasks, 20000), concurrency=args.concurrency)
        C.log(f"baseline (bare aiohttp, zero latency): {base['per_s']} req/s")
        for mode in modes:
            C.sim_reset(sim_url)
            if mode == "embedded":
                r = run_embedded(
                    tmp,
                    path,
                    tasks=args.tasks,
                    concurrency=args.concurrency,
                    sim_url=sim_url,
                    budget=args.budget,
                    profile=args.profile,
                )
            elif mode == "celery":
                redis_url, pg_url = C.services()
                r = run_celery(
                    tmp,
                    path,
                    tasks=args.tasks,
                    workers=args.workers,
                    concurrency=args.concurrency,
                    sim_url=sim_url,
                    budget=args.budget,
                    redis_url=redis_url,
                    pg_url=pg_url,
                    profile=args.profile,
                    chunk_size=args.chunk_size,
                )
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            r["sim_requests"] = C.sim_stats(sim_url)["total"]
            r["pass"] = r["correct"] and r["per_s"] >= TARGET_PER_S
            r["ratio_to_target"] = round(r["per_s"] / TARGET_PER_S, 3)
            r["ratio_to_bare_client"] = round(r["per_s"] / base["per_s"], 3)
            C.log(f"{mode}: {r['per_s']} tasks/s end to end, {r['cpu_ms_per_task']} ms CPU per task ({r['counts']})")
            results.append(r)
    worst = min(results, key=lambda r: r["per_s"])
    res = C.summary(
        "overhead",
        figure=worst["per_s"],
        unit="tasks/s (end to end, slowest mode)",
        baseline=TARGET_PER_S,
        baseline_desc="the issue's absolute target (no in-run baseline applies); the bare aiohttp client against "
        "the same zero-latency simulator is in details.bare_client",
        ratio=worst["per_s"] / TARGET_PER_S,
        ratio_desc="figure / 1000 tasks/s",
        target=f">= {TARGET_PER_S:.0f} tasks/s in every mode",
        passed=all(r["pass"] for r in results),
        settings={
            "tasks": args.tasks,
            "modes": modes,
            "celery_workers": args.workers,
            "concurrency_per_process": args.concurrency,
            "latency_s": 0.0,
            "budget_usd": args.budget,
            "chunk_size": args.chunk_size or "default",
            "profile": args.profile,
        },
        machine_info=mach,
        bare_client=base,
        modes={r["mode"]: r for r in results},
    )
    C.emit(res, args.out)
    return res


if __name__ == "__main__":
    main()
