"""Jobs seen from the store while workers run them: polling until a job is terminal or far enough along, the
ledger invariants every reliability test checks, and submitting through the CLI."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from sqlalchemy import select

from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import (
    AttemptStatus,
    JobStatus,
    TaskStatus,
    attempts,
    tasks,
)
from tests.support.cli import run_cli

TERMINAL_TASK = {"succeeded", "failed", "skipped", "cancelled"}


def job_row(db_url: str, job_id: str) -> dict:
    with get_engine(db_url).connect() as c:
        return repo.get_job(c, job_id)


def task_counts(db_url: str, job_id: str) -> dict[str, int]:
    with get_engine(db_url).connect() as c:
        return repo.task_counts(c, job_id)


def finished(db_url: str, job_id: str) -> int:
    """Tasks of the job in a terminal status."""
    c = task_counts(db_url, job_id)
    return sum(c[s] for s in TaskStatus.terminal)


def wait_finished(db_url: str, job_id: str, at_least: int, timeout: float = 60) -> int:
    """Poll until at least `at_least` tasks are terminal; returns how many are."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = finished(db_url, job_id)
        if n >= at_least:
            return n
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: fewer than {at_least} tasks finished after {timeout}s")


def wait_terminal(db_url: str, job_id: str, timeout: float, *, tick=None, every: float = 0.25) -> dict:
    """Poll the store until the job has a terminal status; `tick()` runs on every poll (chaos, probes).
    Store errors (a restarting Postgres) are retried until the timeout."""
    deadline = time.time() + timeout
    job = None
    last_err = None
    while time.time() < deadline:
        if tick is not None:
            tick()
        try:
            job = job_row(db_url, job_id)
            last_err = None
        except Exception as e:  # noqa: BLE001 - the store may be restarting under the test
            last_err = e
            time.sleep(every)
            continue
        if job["status"] in JobStatus.terminal:
            return job
        time.sleep(every)
    counts = None
    try:
        counts = task_counts(db_url, job_id)
    except Exception as e:  # noqa: BLE001 - only for the message
        counts = f"unreadable: {e!r}"
    raise AssertionError(
        f"job {job_id} not terminal after {timeout:.0f}s: status={job and job['status']} "
        f"counts={counts} last store error={last_err!r}"
    )


def reconcile(db_url: str, job_id: str) -> list[int]:
    """What an operator runs after a crash: settle every attempt whose outcome is unknown."""
    return ledger_api.reconcile(get_engine(db_url), job_id=job_id)


def check_ledger(db_url: str, job_id: str, *, reconciled: bool = True, allowed_statuses=TERMINAL_TASK) -> dict:
    """The store invariants every reliability test relies on. Returns figures for the test's printout.

    - every task is terminal (in `allowed_statuses`); failed/skipped/cancelled ones carry a reason;
    - a succeeded task has an output, a model, and exactly one attempt with status succeeded;
      no task (of any status) has more than one succeeded attempt (no double-recorded result);
    - the attempt counter of each task equals its settled ledger rows (all rows, once reconciled); attempt numbers are unique per task;
    - job spent == sum of the ledger == sum of per-task costs; per-task cost == its attempts' sum
      (a second settle of one attempt would break these);
    - job reserved == the reservations of unsettled attempts, and once reconciled both are 0;
    - unsettled attempts, if any, are only `unknown` or `in_flight` (never a settled status without settled).
    """
    engine = get_engine(db_url)
    with engine.connect() as c:
        job = repo.get_job(c, job_id)
        trows = c.execute(select(tasks).where(tasks.c.job_id == job_id)).mappings().all()
        arows = c.execute(select(attempts).where(attempts.c.job_id == job_id)).mappings().all()
    assert job is not None
    assert len(trows) == job["total_tasks"], (len(trows), job["total_tasks"])

    by_task: dict[int, list] = defaultdict(list)
    for a in arows:
        by_task[a["task_seq"]].append(a)
    status_counts = Counter(t["status"] for t in trows)
    bad_status = [(t["task_id"], t["status"]) for t in trows if t["status"] not in allowed_statuses]
    assert not bad_status, f"{len(bad_status)} task(s) not terminal: {bad_status[:10]}"

    problems: list[str] = []
    for t in trows:
        rows = by_task.get(t["seq"], [])
        wins = [a for a in rows if a["status"] == AttemptStatus.succeeded]
        if len(wins) > 1:
            problems.append(f"{t['task_id']}: {len(wins)} succeeded attempts {[a['id'] for a in wins]}")
        if t["status"] == TaskStatus.succeeded:
            if len(wins) != 1:
                problems.append(f"{t['task_id']}: succeeded with {len(wins)} succeeded attempts")
            elif not wins[0]["settled"]:
                problems.append(f"{t['task_id']}: its succeeded attempt is not settled")
            if t["output"] is None or not t["model"]:
                problems.append(f"{t['task_id']}: succeeded without output/model")
        elif not (t["error"] or "").strip():
            problems.append(f"{t['task_id']}: {t['status']} without a reason")
        settled = sum(1 for a in rows if a["settled"])  # tasks.attempts counts settled attempts
        if t["attempts"] != settled:
            problems.append(f"{t['task_id']}: attempts counter {t['attempts']} != {settled} settled ledger rows")
        nos = [a["attempt_no"] for a in rows]
        if len(set(nos)) != len(nos):
            problems.append(f"{t['task_id']}: duplicate attempt numbers {sorted(nos)}")
        cost = sum(a["cost_picos"] for a in rows)
        if cost != t["cost_picos"]:
            problems.append(f"{t['task_id']}: task cost {t['cost_picos']} != ledger {cost}")
    assert not problems, f"{len(problems)} ledger problem(s):\n" + "\n".join(problems[:25])

    ledger = sum(a["cost_picos"] for a in arows)
    assert job["spent_picos"] == ledger, f"job spent {job['spent_picos']} != ledger sum {ledger}"
    assert sum(t["cost_picos"] for t in trows) == ledger
    unsettled = [a for a in arows if not a["settled"]]
    assert all(a["status"] in (AttemptStatus.unknown, AttemptStatus.in_flight) for a in unsettled), Counter(
        a["status"] for a in unsettled
    )
    held = sum(a["reserved_picos"] for a in unsettled)
    assert job["reserved_picos"] == held, f"job reserved {job['reserved_picos']} != unsettled reservations {held}"
    if reconciled:
        assert not unsettled, f"{len(unsettled)} attempt(s) still unsettled after reconcile"
        assert job["reserved_picos"] == 0
    if job["budget_picos"] is not None:
        assert job["spent_picos"] <= job["budget_picos"]
    return {
        "tasks": dict(status_counts),
        "attempts": len(arows),
        "attempt_status": dict(Counter(a["status"] for a in arows)),
        "cost_source": dict(Counter(a["cost_source"] for a in arows)),
        "workers": len({(a["worker"] or "").rsplit(":", 1)[0] for a in arows}),
        "max_deliveries": max((t["deliveries"] for t in trows), default=0),
        "max_attempts": max((t["attempts"] for t in trows), default=0),
        "spent_picos": job["spent_picos"],
        "reserved_picos": job["reserved_picos"],
        "unsettled": dict(Counter(a["status"] for a in unsettled)),
        "errors": dict(Counter((t["error"] or "")[:60] for t in trows if t["status"] != TaskStatus.succeeded)),
    }


def submit(src, env) -> str:
    p = run_cli(["submit", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


class FakeProviders:
    """Engine.providers answering with one adapter for every provider of the catalog (in-process engine tests)."""

    def __init__(self, catalog, adapter):
        self.adapters = {p: adapter for p in catalog.providers}
        self.names = frozenset(catalog.providers)

    def get(self, simulate):
        return self.adapters, self.names
