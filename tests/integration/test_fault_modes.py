"""Reliability, fault mixes: an embedded job (SQLite, the real CLI process) against a simulator injecting one
fault mode at a time. The job must end with every task terminal (succeeded, or failed with a clear reason),
retries must stay within the [retry] budget of llmbatch.toml, and calls whose outcome is unknown (sent, no
usable answer: timeouts, resets, malformed or cut bodies) must be ledger rows with status `unknown` that
kept their reservation until reconcile settled them at it, never rows marked failed at $0.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest
from sqlalchemy import select

from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts
from tests.support.cli import REPO, cli_env, results, run_json, write_reviews
from tests.support.jobs import check_ledger

pytestmark = pytest.mark.integration

N_TASKS = 60
RETRY = {
    "max_attempts_per_model": 3,
    "max_attempts_per_task": 5,
    "base_delay_s": 0.05,
    "max_delay_s": 2.0,
    "task_deadline_s": 60,
    "call_timeout_s": 2.0,
}

# mode -> (rate, extra simulator settings, error classes its failed attempts may carry, outcome unknown?)
MODES = {
    # Bursts: rate = share of wall time in a burst; every call inside one is answered 429 / 5xx. The burst
    # schedule is (re)started once the job is calling, so the first burst always lands mid-job.
    "storm429": (0.5, {"storm_duration_s": 2.0}, {"rate_limited"}, False),  # Retry-After = rest of the storm
    "burst5xx": (0.25, {"burst_duration_s": 1.0}, {"server_error", "unavailable", "overloaded"}, False),
    # Per-request faults: rate = probability per call.
    "hang": (0.2, {"hang_max_s": 30.0}, {"timeout"}, True),  # never answers; call_timeout_s = 2 cuts it
    "reset": (0.2, {}, {"connection_reset"}, True),  # RST after the request was read
    "malformed": (0.2, {}, {"malformed_response"}, True),  # 200 with an HTML body
    "truncated": (0.2, {}, {"malformed_response", "connection_reset"}, True),  # 200, body cut mid-JSON
    "slow_body": (0.2, {"slow_body_s": 3.0}, {"timeout"}, True),  # trickles past the 2 s overall deadline
}
BURSTS = ("storm429", "burst5xx")


def _run_with_burst(
    mode: str, rate: float, sim: SimulatorThread, args: list[str], env: dict, *, only_first_s: float | None = None
) -> tuple[int, dict, str]:
    """Start `llmbatch run`, switch the burst on once the first calls arrived, wait for the end. With
    `only_first_s` (the burst's length), the fault is switched off after the first burst, so a run slowed down
    by a loaded machine does not meet a second one."""
    import subprocess
    import sys
    import threading

    import orjson

    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch.cli", *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )
    off_timer: threading.Timer | None = None
    try:
        deadline = time.time() + 60
        # Calls that arrived, answered or not: counting answers only, a loaded machine switched the fault on
        # after a whole wave had been sent (and, at 0.1 s per call, after the last call of the job).
        while _arrived(sim) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        sim.configure(faults={mode: rate})
        if only_first_s is not None:
            off_timer = threading.Timer(only_first_s + 0.2, lambda: sim.configure(faults={mode: 0.0}))
            off_timer.start()
        out, err = proc.communicate(timeout=240)
    finally:
        if off_timer is not None:
            off_timer.cancel()
        if proc.poll() is None:
            proc.kill()
    try:
        return proc.returncode, orjson.loads(out), err
    except orjson.JSONDecodeError as e:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{out}\n--- stderr\n{err[-3000:]}") from e


def _arrived(sim: SimulatorThread) -> int:
    stats = sim.stats()
    return stats["total"] + stats["in_flight"]


def _toml(retry: dict) -> str:
    return "[retry]\n" + "".join(f"{k} = {v}\n" for k, v in retry.items())


@pytest.mark.parametrize("mode", list(MODES))
def test_fault_mode_completes_within_retry_budget(mode, tmp_path, sqlite_url):
    rate, extra, classes, unknown_outcome = MODES[mode]
    src = tmp_path / "reviews.jsonl"
    ids = write_reviews(src, N_TASKS)
    cfg = tmp_path / "llmbatch.toml"
    if mode in BURSTS:
        # Slower calls and fewer in flight so the job outlives a burst; backoff long enough to ride one out.
        retry = {**RETRY, "base_delay_s": 0.3}
        sim_cfg = SimulatorConfig(latency_s=0.2, seed=42, mini_error_rate=0.0, **extra)
    else:
        retry = RETRY
        sim_cfg = SimulatorConfig(latency_s=0.02, seed=42, mini_error_rate=0.0, faults={mode: rate}, **extra)
    cfg.write_text(_toml(retry))
    with SimulatorThread(sim_cfg) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_CONFIG=str(cfg))
        if mode in BURSTS:
            # burst5xx: one burst, whatever the machine's load (its failed-call bound below is per burst; a
            # run slowed down by load met a second one 4 s later).
            code, st, stderr = _run_with_burst(
                mode,
                rate,
                sim,
                ["run", str(src), "--simulate", "--concurrency", "8"],
                env,
                only_first_s=sim_cfg.burst_duration_s if mode == "burst5xx" else None,
            )
        else:
            p, st = run_json(["run", str(src), "--simulate", "--concurrency", "32"], env, timeout=240)
            code, stderr = p.returncode, p.stderr
        stats = sim.stats()
    assert code in (0, 3), f"exit {code}\n{stderr[-3000:]}"
    job_id = st["job_id"]
    assert st["status"] in ("succeeded", "failed")
    assert st["counts"]["total"] == N_TASKS
    assert st["counts"]["queued"] == st["counts"]["running"] == 0
    assert stats["by_fault"].get(mode, 0) > 0, f"the simulator never injected {mode}: {stats}"

    # Store invariants (terminal, one success per succeeded task, reasons, spent == ledger, reserved == 0).
    figures = check_ledger(sqlite_url, job_id, reconciled=True)

    with get_engine(sqlite_url).connect() as c:
        rows = c.execute(select(attempts).where(attempts.c.job_id == job_id)).mappings().all()
    per_task = Counter(r["task_seq"] for r in rows)
    per_model = Counter((r["task_seq"], r["provider"], r["model"]) for r in rows)
    assert max(per_task.values()) <= retry["max_attempts_per_task"], per_task.most_common(3)
    assert max(per_model.values()) <= retry["max_attempts_per_model"], per_model.most_common(3)

    failed = [r for r in rows if r["status"] == "failed"]
    unknown = [r for r in rows if r["status"] == "unknown"]
    if unknown_outcome:
        # Sent but unanswered: may have been billed, so never a $0 "failed" row. Each one kept its reservation
        # and was settled by reconcile at that upper bound.
        assert unknown, f"{mode}: no attempt ended with an unknown outcome ({Counter(r['status'] for r in rows)})"
        assert not failed, (
            f"{mode}: unknown outcomes recorded as failed: {[(r['error_class'], r['error_message']) for r in failed[:3]]}"
        )
        for r in unknown:
            assert r["settled"] and r["cost_source"] == "reservation", dict(r)
            assert r["cost_picos"] == r["reserved_picos"] > 0
            assert r["error_message"], dict(r)
        # Every faulted call is one unknown row: none lost, none double-counted, none taken for a success.
        assert len(unknown) == stats["by_fault"][mode], (len(unknown), stats["by_fault"])
        # Reconcile keeps the original reason (timeout, reset, malformed...) as the error class.
        reasons = {r["error_class"] for r in unknown}
        assert reasons and reasons <= classes, reasons
    else:
        assert failed, f"{mode}: no failed attempt in the ledger"
        assert not unknown, f"{mode}: an HTTP error answer is a known outcome: {[dict(r) for r in unknown[:2]]}"
        assert {r["error_class"] for r in failed} <= classes | {"invalid_output"}, Counter(
            r["error_class"] for r in failed
        )
        for r in failed:
            assert r["settled"] and r["cost_picos"] == 0 and r["http_status"], dict(r)
        # Every call answered inside a burst is one failed row (known outcome, no usage, $0).
        assert len(failed) == stats["by_fault"][mode], (len(failed), stats["by_fault"])

    lines = results(job_id, env)
    assert [r["id"] for r in lines] == ids
    for r in lines:
        assert r["attempts"] <= retry["max_attempts_per_task"]
        if r["status"] == "succeeded":
            assert r["output"] in ("positive", "negative", "neutral")
        else:  # a clear reason: what ran out, and the last error seen
            assert r["status"] == "failed" and r["error"], r
            assert any(
                w in r["error"] for w in ("retry budget exhausted", "all eligible models failed", "delivered more than")
            ), r["error"]
    succeeded = sum(r["status"] == "succeeded" for r in lines)
    by_class = defaultdict(int)
    for r in rows:
        if r["status"] in ("failed", "unknown"):
            by_class[r["error_class"]] += 1
    print(
        f"\n{mode}@{rate}: {succeeded}/{N_TASKS} succeeded; injected {stats['by_fault'].get(mode)}; "
        f"attempts {figures['attempt_status']}; error classes {dict(by_class)}; "
        f"max attempts/task {max(per_task.values())}; spent ${figures['spent_picos'] / 1e12:.6f}"
    )
    # Per-request faults at 20% rarely beat 5 attempts. A 5xx burst hits every model (every provider is the
    # simulator) at once: the per-provider breaker opens after breaker_failures (5) failures in a row and
    # tasks wait out the burst instead of spending attempts in it. Without the breaker, 51-52 of 60 tasks
    # got through, after ~50 failed calls; with it, all 60 after 15-17 (one 1 s burst, 8 in flight).
    if mode == "burst5xx":
        assert all("HTTP 5" in r["error"] for r in lines if r["status"] != "succeeded")
        assert "pausing calls to it" in stderr, stderr[-2000:]
        assert len(failed) < N_TASKS // 3, len(failed)
    assert succeeded >= N_TASKS * (0.95 if mode == "burst5xx" else 0.9), [
        r["error"] for r in lines if r["status"] != "succeeded"
    ][:5]


def test_a_long_outage_is_probed_by_one_call_not_a_stampede(tmp_path, sqlite_url):
    """A 4 s provider-wide 5xx outage under 30 calls in flight. The breaker opens on the first failures; each
    time its hold ends, ONE probe call goes out while the other tasks keep waiting (without that, all 30 would
    call at every hold's end). So the failed calls stay near the first wave, and every task succeeds after
    the outage without spending its attempt budget."""
    concurrency = 30
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, N_TASKS)
    cfg = tmp_path / "llmbatch.toml"
    retry = {**RETRY, "base_delay_s": 0.3, "max_attempts_per_task": 5}  # hold 1.2 s, then 2 s (max_delay_s)
    cfg.write_text(_toml(retry))
    # 0.5 s per call: the outage, switched on as the first calls arrive, meets the second wave ~0.5 s later.
    sim_cfg = SimulatorConfig(latency_s=0.5, seed=7, mini_error_rate=0.0, burst_duration_s=4.0)
    with SimulatorThread(sim_cfg) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_CONFIG=str(cfg))
        # One 4 s outage from the moment the job is calling (rate 0.5 would repeat it every 8 s: one, always).
        code, st, stderr = _run_with_burst(
            "burst5xx",
            0.5,
            sim,
            ["run", str(src), "--simulate", "--concurrency", str(concurrency)],
            env,
            only_first_s=sim_cfg.burst_duration_s,
        )
        stats = sim.stats()
    assert code == 0, f"exit {code}\n{stderr[-3000:]}"
    assert st["counts"]["succeeded"] == N_TASKS
    failed = stats["by_fault"].get("burst5xx", 0)
    print(f"\n4 s outage, {concurrency} in flight: {failed} failed calls, {N_TASKS}/{N_TASKS} succeeded")
    # The wave sent into the outage (at most `concurrency` calls: 30 here, as the outage starts between two
    # waves), the escalations of the wave before, and about one probe per re-open (1.2 s, then every 2 s: 2-3
    # in 4 s): 32-34 measured. Releasing every waiting task at each hold's end would add ~30 per re-open.
    assert 0 < failed <= concurrency + 10, (failed, stats["by_fault"])
    assert stderr.count("pausing calls to it") >= 2, stderr[-2000:]
