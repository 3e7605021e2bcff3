"""In-flight efficiency: the full pipeline in one process against a bare aiohttp loop, same simulator, same run.

    .venv/bin/python -m tests.benchmarks.bench_inflight                   # 2,000 tasks, 1.0 s latency, 200 in flight
    .venv/bin/python -m tests.benchmarks.bench_inflight --tasks 200 --latency 0.1 --concurrency 50

Baseline: `concurrency` coroutines POSTing the engine's own request body to the simulator (a separate
process) over one aiohttp session, `tasks` requests in all. Figure: `llmbatch run` embedded
(create_job + run_embedded on SQLite) with routing, a job budget (every attempt reserves and settles)
and the ledger, same number of tasks and concurrency. Both are tasks/s of the run phase; the ingest of
the job file is timed separately. Target (issue): figure >= 0.9 x baseline.
"""

from __future__ import annotations

import time

from tests.benchmarks import common as C

TARGET_RATIO = 0.9


def run_pipeline(db_url: str, path, *, concurrency: int, sim_url: str, budget_usd: str,
                 profile_dir=None) -> dict:
    import os

    from llmbatch.config import load_settings
    from llmbatch.jobs import create_job, run_embedded
    from llmbatch.models import JobSpec

    settings = load_settings(database_url=db_url, simulator_url=sim_url)
    spec = JobSpec.model_validate({"simulate": True, "budget_usd": budget_usd})
    t0 = time.perf_counter()
    job_id, report = create_job(settings, path, spec, executor="local")
    with C.py_spy([os.getpid()], profile_dir, "inflight", profile_dir is not None) as files:
        t1 = time.perf_counter()
        status = run_embedded(settings, job_id, concurrency=concurrency)
        t2 = time.perf_counter()
    counts, spent, ledger = C.job_counts(db_url, job_id)
    return {"job_id": job_id, "status": status, "tasks": report.accepted, "counts": counts,
            "spent_picos": spent, "ledger_picos": ledger, "ingest_s": round(t1 - t0, 3),
            "run_s": round(t2 - t1, 3), "end_to_end_s": round(t2 - t0, 3),
            "per_s": round(report.accepted / (t2 - t1), 1),
            **({"profile": C.summarize_collapsed(files)} if profile_dir is not None else {})}


def main(argv=None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--budget", default="25", help="job budget in USD (reservations are exercised either way)")
    ap.add_argument("--profile", action="store_true", help="py-spy the pipeline run (summary in details)")
    ap.add_argument("--repeat", type=int, default=1, help="alternate baseline/pipeline this many times; best of each")
    args = ap.parse_args(argv)
    mach = C.machine()

    with C.workdir("bench_inflight_", args.keep) as tmp, C.simulator(latency_s=args.latency) as sim_url:
        path = C.write_tasks(tmp / "tasks.jsonl", args.tasks)
        C.bare_aiohttp(sim_url, n=min(args.concurrency, args.tasks), concurrency=args.concurrency)  # warm-up
        baselines, pipelines = [], []
        for i in range(args.repeat):
            C.sim_reset(sim_url)
            b = C.bare_aiohttp(sim_url, n=args.tasks, concurrency=args.concurrency)
            b["sim_ok"] = C.sim_ok(C.sim_stats(sim_url))
            baselines.append(b)
            C.log(f"baseline: {b['per_s']} req/s")
            C.sim_reset(sim_url)
            p = run_pipeline(f"sqlite:///{tmp}/run{i}.db", path, concurrency=args.concurrency, sim_url=sim_url,
                             budget_usd=args.budget, profile_dir=tmp if args.profile else None)
            st = C.sim_stats(sim_url)
            p["sim_total"], p["sim_ok"], p["sim_by_status"] = st["total"], C.sim_ok(st), st["by_status"]
            pipelines.append(p)
            C.log(f"pipeline: {p['per_s']} tasks/s ({p['counts']})")

    best_b = max(baselines, key=lambda r: r["per_s"])
    best_p = max(pipelines, key=lambda r: r["per_s"])
    ok = all(p["counts"]["succeeded"] == args.tasks and p["spent_picos"] == p["ledger_picos"] for p in pipelines)
    ratio = best_p["per_s"] / best_b["per_s"]
    res = C.summary(
        "inflight", figure=best_p["per_s"], unit="tasks/s", baseline=best_b["per_s"],
        baseline_desc=f"bare aiohttp loop: {args.concurrency} concurrent POSTs of the engine's request body",
        ratio=ratio, target=f"ratio >= {TARGET_RATIO}", passed=ok and ratio >= TARGET_RATIO,
        settings={"tasks": args.tasks, "concurrency": args.concurrency, "latency_s": args.latency,
                  "budget_usd": args.budget, "store": "sqlite", "executor": "embedded (run_embedded)",
                  "repeat": args.repeat, "ideal_per_s": round(args.concurrency / args.latency, 1)},
        machine_info=mach, correct=ok, baseline_runs=baselines, pipeline_runs=pipelines)
    C.emit(res, args.out)
    return res


if __name__ == "__main__":
    main()
