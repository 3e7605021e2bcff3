"""Shared harness for the throughput benchmarks (issue "throughput").

Every benchmark prints one JSON summary with the same top-level fields:

    {"benchmark", "figure", "unit", "baseline", "baseline_desc", "ratio", "ratio_desc", "target",
     "pass", "settings", "machine", "details"}

`ratio` is the figure divided by the baseline measured in the same run (or by the target where the
issue sets an absolute target and no in-run baseline applies). `pass` is True/False against the
issue's target, or None where the issue sets none.

Services: see `services()`: by default Redis and Postgres servers of the benchmarks' own (the integration
tests restart the shared ones). Each benchmark also uses its own Redis database number and a fresh
Postgres database (dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import orjson

from tests.support import services as S
from tests.support.databases import flushed_redis_db, temp_database
from tests.support.jobs import wait_terminal
from tests.support.procs import WorkerProcs, stop_process

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
DEFAULT_MODEL_KEY = "groq/llama-3.1-8b-instant"  # where the benchmark tasks route (`llmbatch route --simulate`)

_SUMMARY_TEXT = (
    "Summarize the quarterly report: revenue grew 12% while costs stayed flat, and the board approved the plan."
)


# ------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return p.stdout.strip() + ("+dirty(src)" if dirty else "") if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine() -> dict[str, Any]:
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        load = None
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "commit": _commit(),
    }


# ------------------------------------------------------------------------------------------ summary


def summary(
    name: str,
    *,
    figure: float | None,
    unit: str,
    baseline: float | None,
    baseline_desc: str,
    target: str,
    passed: bool | None,
    settings: dict,
    ratio: float | None = None,
    ratio_desc: str = "",
    machine_info: dict | None = None,
    **details: Any,
) -> dict[str, Any]:
    if ratio is None and figure is not None and baseline:
        ratio = figure / baseline
    return {
        "benchmark": name,
        "figure": _round(figure),
        "unit": unit,
        "baseline": _round(baseline),
        "baseline_desc": baseline_desc,
        "ratio": _round(ratio, 3),
        "ratio_desc": ratio_desc or "figure / baseline",
        "target": target,
        "pass": passed,
        "settings": settings,
        "machine": machine_info or machine(),
        "details": details,
    }


def _round(x, nd: int = 2):
    return round(x, nd) if isinstance(x, float) else x


def emit(result: dict, out: str | None) -> None:
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")


def base_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the JSON summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (inputs, logs, sqlite) for inspection")
    return ap


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if keep:
            log(f"kept {d}")
        else:
            import shutil

            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------ inputs


def write_tasks(path: Path, n: int, *, max_output_tokens: int = 64) -> Path:
    """n native summarize lines (they route to the cheapest mini model and never fail validation)."""
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(
                orjson.dumps(
                    {
                        "id": f"t-{i}",
                        "task": "summarize",
                        "input": f"{_SUMMARY_TEXT} Item {i}.",
                        "max_output_tokens": max_output_tokens,
                    }
                )
                + b"\n"
            )
    return path


def sample_request(max_output_tokens: int = 64) -> tuple[str, dict, dict]:
    """(model key, body, headers) of exactly the call the engine makes for one of `write_tasks`' lines,
    built with the library's own routing and adapter, for the bare-client baselines."""
    from llmbatch.catalog.loading import load_catalog
    from llmbatch.config import Settings
    from llmbatch.models import TaskLine
    from llmbatch.prompts import build_request
    from llmbatch.providers import SIMULATOR_KEY, available_credentials
    from llmbatch.routing import route

    catalog = load_catalog(Settings())
    task = TaskLine.model_validate(
        {"id": "t-0", "task": "summarize", "input": f"{_SUMMARY_TEXT} Item 0.", "max_output_tokens": max_output_tokens}
    )
    request = build_request(task)
    decision = route(task, request, catalog, credentials=available_credentials(catalog, simulate=True))
    cand = decision.candidates[0]
    from llmbatch.providers import ADAPTERS

    provider = catalog.providers[cand.model.provider]
    adapter = ADAPTERS[provider.api](provider, None, SIMULATOR_KEY)  # type: ignore[arg-type]
    visible = min(request.max_output_tokens, cand.completion_cap)
    req = request.model_copy(
        update={"max_output_tokens": visible, "reasoning_budget_tokens": max(0, cand.completion_cap - visible)}
    )
    body = adapter.build_body(cand.model, req)
    headers = {"content-type": "application/json", "accept": "application/json", **adapter.auth_headers(SIMULATOR_KEY)}
    return cand.model.key, body, headers


def write_classify(path: Path, n: int) -> Path:
    """n classify lines: they route to the cheapest mini model; with the simulator's mini_error_rate some
    answer outside the labels and escalate to a standard-tier model (the issue's "usual ~5%")."""
    from tests.support.cli import write_reviews

    write_reviews(path, n)
    return path


def call_mix(
    calls_by_model: dict[str, int],
    *,
    classify: bool,
    max_output_tokens: int = 64,
    seed: int = 14,
    chained: bool = False,
) -> list[list[tuple[str, bytes, dict]]]:
    """The calls an engine run made, as (url path, body, headers), `calls_by_model[model id]` of each, in
    chains run one call after the other, in a shuffled order: the bare loop then runs the same request mix
    (the same number of calls per model) as the pipeline did. Unchained, every call is a chain of its own
    (no call waits for another: the ceiling); `chained`, as a hand-written loop that escalates would make
    them: the most-called model's calls start the chains and each less-called model's calls follow in as many
    of them (a first call, then its escalation). Bodies are built by the library's own adapters from one task
    line of the benchmark."""
    import random

    from llmbatch.catalog.loading import load_catalog
    from llmbatch.config import Settings
    from llmbatch.models import TaskLine
    from llmbatch.prompts import build_request
    from llmbatch.providers import ADAPTERS, SIMULATOR_KEY, available_credentials, simulator_base_url
    from llmbatch.routing import route

    catalog = load_catalog(Settings())
    line = (
        {
            "id": "r-0",
            "task": "classify",
            "input": "Love it, works perfectly and arrived early. Order number 1000.",
            "labels": ["positive", "negative", "neutral"],
        }
        if classify
        else {
            "id": "t-0",
            "task": "summarize",
            "input": f"{_SUMMARY_TEXT} Item 0.",
            "max_output_tokens": max_output_tokens,
        }
    )
    task = TaskLine.model_validate(line)
    request = build_request(task)
    decision = route(task, request, catalog, credentials=available_credentials(catalog, simulate=True))
    by_id = {c.model.model: c for c in decision.candidates}
    by_model: list[tuple[int, tuple[str, bytes, dict]]] = []
    for model_id, n in calls_by_model.items():
        cand = by_id[model_id]
        provider = catalog.providers[cand.model.provider]
        adapter = ADAPTERS[provider.api](
            provider.model_copy(update={"base_url": simulator_base_url(provider.api, "")}), None, SIMULATOR_KEY
        )  # type: ignore[arg-type]
        visible = min(request.max_output_tokens, cand.completion_cap)
        req = request.model_copy(
            update={"max_output_tokens": visible, "reasoning_budget_tokens": max(0, cand.completion_cap - visible)}
        )
        body = orjson.dumps(adapter.build_body(cand.model, req))
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            **adapter.auth_headers(SIMULATOR_KEY),
        }
        by_model.append((n, (adapter.endpoint(cand.model), body, headers)))
    if not chained:
        chains = [[call] for n, call in by_model for _ in range(n)]
    else:
        by_model.sort(key=lambda x: -x[0])
        chains = [[call for n, call in by_model if i < n] for i in range(by_model[0][0] if by_model else 0)]
    random.Random(seed).shuffle(chains)
    return chains


async def _bare_mix(url: str, chains: list[list[tuple[str, bytes, dict]]], concurrency: int) -> tuple[float, dict]:
    import aiohttp

    statuses: dict[int, int] = {}
    todo = iter(chains)
    connector = aiohttp.TCPConnector(limit=concurrency * 2, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker():
            for chain in todo:
                for path, data, headers in chain:
                    async with session.post(f"{url}{path}", data=data, headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return elapsed, statuses


def bare_mix(url: str, chains: list[list[tuple[str, bytes, dict]]], *, concurrency: int, tasks: int) -> dict:
    """A bare aiohttp loop making exactly the calls of `chains` (see call_mix) with `concurrency` in flight. Its
    figure is `tasks` per second: the tasks the same calls served in the pipeline (escalated tasks needed 2)."""
    elapsed, statuses = asyncio.run(_bare_mix(url, chains, concurrency))
    calls = sum(len(c) for c in chains)
    return {
        "requests": calls,
        "ok": statuses.get(200, 0),
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "req_per_s": round(calls / elapsed, 1),
        "per_s": round(tasks / elapsed, 1),
    }


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (and their threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


# ------------------------------------------------------------------------------------------ simulator


@contextlib.contextmanager
def simulator(**config: Any) -> Iterator[str]:
    """The simulator as a separate process (its own core). mini_error_rate defaults to 0 so every task
    is exactly one call (no escalations): counts add up and throughput is not diluted by retries."""
    from llmbatch.simulator import SimulatorConfig, start_subprocess

    config.setdefault("mini_error_rate", 0.0)
    proc, url = start_subprocess(SimulatorConfig(**config))
    try:
        yield url
    finally:
        stop_process(proc)


def sim_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sim/stats", timeout=10) as r:
        return json.loads(r.read())


def sim_reset(url: str) -> None:
    req = urllib.request.Request(
        f"{url}/_sim/reset", data=b"{}", method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def sim_ok(stats: dict) -> int:
    return int(stats["by_status"].get("200", 0))


# ------------------------------------------------------------------------------------------ bare client


def bare_aiohttp(url: str, *, n: int, concurrency: int, max_output_tokens: int = 64) -> dict:
    """`concurrency` coroutines POSTing the engine's own request body to the simulator, n in all, over one
    aiohttp session: the ceiling any client in one process can reach against this simulator."""
    _, body, headers = sample_request(max_output_tokens)
    elapsed, statuses = asyncio.run(
        _bare_mix(url, [[("/v1/chat/completions", orjson.dumps(body), headers)]] * n, concurrency)
    )
    ok = statuses.get(200, 0)
    return {
        "requests": n,
        "ok": ok,
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "per_s": round(ok / elapsed, 1),
    }


# ------------------------------------------------------------------------------------------ services


BENCH_REDIS_PORT = int(os.environ.get("LLMBATCH_BENCH_REDIS_PORT", "56389"))
BENCH_PG_PORT = int(os.environ.get("LLMBATCH_BENCH_PG_PORT", "55439"))


def services() -> tuple[str, str]:
    """(redis_url, postgres_url) for the benchmarks.

    By default the benchmarks get servers of their own (Redis on 56389, Postgres on 55439, both reused
    across runs), because integration tests restart and kill the shared test servers (test_restarts)
    and a benchmark must not die or slow down with them. LLMBATCH_BENCH_REDIS_URL and
    LLMBATCH_BENCH_DATABASE_URL override; LLMBATCH_BENCH_SHARED=1 uses the tests' servers
    (LLMBATCH_TEST_*_URL, else tests/support/services.py's). The benchmarks' Redis has no AOF: it only
    carries queues and rate-limit state."""
    redis_url = os.environ.get("LLMBATCH_BENCH_REDIS_URL")
    pg_url = os.environ.get("LLMBATCH_BENCH_DATABASE_URL")
    if redis_url and pg_url:
        return redis_url, pg_url
    shared = os.environ.get("LLMBATCH_BENCH_SHARED", "").lower() in ("1", "true", "yes")
    if shared and os.environ.get(S.REDIS_ENV) and os.environ.get(S.DATABASE_ENV):
        return os.environ[S.REDIS_ENV], os.environ[S.DATABASE_ENV]
    if shared:
        redis, pg = S.redis_server(), S.postgres_server()
    else:
        redis = S.Redis(
            port=BENCH_REDIS_PORT,
            dir=Path(tempfile.gettempdir()) / f"llmbatch-bench-redis-{BENCH_REDIS_PORT}",
            durable=False,
            name="benchmark redis",
        )
        pg = S.Postgres(port=BENCH_PG_PORT, base=Path(f"/tmp/llmbatch-pg-{BENCH_PG_PORT}"), name="benchmark postgres")
    with S.lock():
        if not redis_url:
            redis.start()
        if not pg_url:
            pg.start()
    redis_url, pg_url = redis_url or redis.url, pg_url or pg.url
    os.environ["LLMBATCH_BENCH_REDIS_URL"], os.environ["LLMBATCH_BENCH_DATABASE_URL"] = redis_url, pg_url
    return redis_url, pg_url


def redis_db(redis_url: str, db: int) -> str:
    """The same Redis server, database `db` (flushed): benchmarks stay off the tests' database 0."""
    return flushed_redis_db(redis_url, db)


def queue_length(redis_url: str, queue: str = "llmbatch") -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def fresh_postgres(pg_url: str, prefix: str = "llmbatch_bench"):
    """A new database on the benchmark server for one measurement, dropped afterwards."""
    return temp_database(pg_url, prefix)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any LLMBATCH_* setting (no stray config), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_") or k.startswith("LLMBATCH_TEST_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


# ------------------------------------------------------------------------------------------ workers


class Workers(WorkerProcs):
    """Simulated `llmbatch worker` processes at INFO level, with the whole environment given (see `clean_env`),
    each waited for until ready; stopped (TERM, then KILL) on leaving the `with` block."""

    def __init__(self, logdir: Path):
        super().__init__(request=None, tmp_path=logdir)

    def start(
        self,
        n: int,
        *,
        env: dict[str, str],
        concurrency: int,
        cwd: Path,  # type: ignore[override]
        ready_timeout: float = 60.0,
    ) -> list[subprocess.Popen]:
        return super().start(
            n,
            env=env,
            inherit_env=False,
            concurrency=concurrency,
            cwd=cwd,
            args=["--simulate", "--loglevel", "INFO"],
            ready_timeout=ready_timeout,
        )

    def stop_all(self, grace: float = 10.0) -> None:
        super().stop_all(grace)


# ------------------------------------------------------------------------------------------ jobs


def wait_job(db_url: str, job_id: str, *, timeout: float, poll: float = 0.05) -> tuple[dict, float]:
    """Poll the store until the job is terminal. Returns (job row, perf_counter when first seen terminal)."""
    job = wait_terminal(db_url, job_id, timeout, every=poll)
    return job, time.perf_counter()


def job_counts(db_url: str, job_id: str) -> tuple[dict, int, int]:
    """(task counts, spent picos, ledger sum picos)."""
    from llmbatch.store import ledger as ledger_api, repo
    from llmbatch.store.db import get_engine

    engine = get_engine(db_url)
    # One snapshot for all three reads: a settlement committing between them (a late settle of a finished job's
    # unknown outcome) would otherwise show spent != ledger although each is right at its own moment.
    opts = {} if engine.dialect.name == "sqlite" else {"isolation_level": "REPEATABLE READ"}
    with engine.connect().execution_options(**opts) as conn, conn.begin():
        job = repo.get_job(conn, job_id)
        return repo.task_counts(conn, job_id), int(job["spent_picos"]), ledger_api.ledger_sum(conn, job_id)


def submit(settings, path: Path, *, budget_usd: str | None = "50") -> tuple[str, int, int]:
    """create_job + dispatch_job, as `llmbatch submit` does. Returns (job id, tasks, units)."""
    job_id, accepted = create(settings, path, budget_usd=budget_usd, executor="celery")
    return job_id, accepted, dispatch(settings, job_id)


def create(settings, path: Path, *, budget_usd: str | None, executor: str) -> tuple[str, int]:
    """create_job of a simulated job (the lines stored, nothing queued). Returns (job id, tasks accepted)."""
    from llmbatch.jobs import create_job
    from llmbatch.models import JobSpec

    spec = JobSpec.model_validate({"simulate": True, **({"budget_usd": budget_usd} if budget_usd else {})})
    job_id, report = create_job(settings, path, spec, executor=executor)
    return job_id, report.accepted


def dispatch(settings, job_id: str) -> int:
    """dispatch_job: the job's unit messages queued for the workers. Returns the number of units."""
    from llmbatch.executors.celery_app import dispatch_job

    # dispatch_job's configure() switches brokers (benchmarks run in one process, the smoke tests, use several).
    return dispatch_job(settings, job_id)


# ------------------------------------------------------------------------------------------ profiles


@contextlib.contextmanager
def py_spy(pids: list[int], out_dir: Path, name: str, enabled: bool, rate: int = 50) -> Iterator[list[Path]]:
    """py-spy record (raw collapsed stacks) of each pid while the block runs."""
    files: list[Path] = []
    procs: list[subprocess.Popen] = []
    spy = Path(PY).with_name("py-spy")
    if enabled:
        for pid in pids:
            f = out_dir / f"{name}-{pid}.txt"
            files.append(f)
            procs.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        str(rate),
                        "--nonblocking",
                        "-o",
                        str(f),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
    try:
        yield files
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


_IDLE_LEAVES = (
    "select (selectors.py",
    "wait (threading.py",
    "_worker (concurrent/futures/thread.py",
    "poll (",
    "epoll",
    "run_forever",
    "_run_once (asyncio/base_events.py",
)


def summarize_collapsed(files: list[Path], top: int = 15) -> dict[str, Any]:
    """Self time by leaf frame and inclusive time by package-level frames, as shares of all samples."""
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            n_i = int(n)
            frames = stack.split(";")
            total += n_i
            leaf[_short(frames[-1])] = leaf.get(_short(frames[-1]), 0) + n_i
            seen = set()
            for fr in frames:
                s = _short(fr)
                if s not in seen and (
                    "llmbatch" in fr
                    or "sqlalchemy" in fr
                    or "psycopg" in fr
                    or "sqlite" in fr
                    or "httpx" in fr
                    or "aiohttp" in fr
                    or "redis" in fr
                    or "pydantic" in fr
                    or "celery" in fr
                    or "kombu" in fr
                ):
                    seen.add(s)
                    incl[s] = incl.get(s, 0) + n_i

    def pct(d):
        return [
            {"frame": k, "pct": round(100 * v / total, 1)} for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {"samples": total, "self_top": pct(leaf), "inclusive_top": pct(incl)}


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)" aggregated over lines, path trimmed to package
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"
