"""The store side of a job's life: create, find (id, name, same command), status, list, cancel, retry, prepare a
resume, finish. Every caller (CLI, executors, tests, benchmarks) goes through these; none of them touches the
store tables for job state itself."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from ..config import Settings
from ..errors import InputError, JobNotFound
from ..money import usd_to_picos
from ..store import job_counts, repo
from ..store import lifecycle as lc
from ..store.db import get_engine, reading, redact_url
from ..store.schema import JobStatus, TaskStatus
from .identity import input_digest, spec_digest

if TYPE_CHECKING:  # status, report and results load neither pydantic models nor the ingest path (jsonschema)
    from ..ingest import IngestReport
    from ..models import JobSpec


def store(settings: Settings):
    """The store's engine, migrated (StoreError with the URL, password hidden, when it cannot be opened)."""
    return get_engine(settings.database_url)


def store_label(settings: Settings) -> str:
    """The store as a person can find it: the URL without its password; a relative SQLite path made absolute."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        return f"sqlite:///{Path(url[len('sqlite:///') :]).resolve()}"
    return redact_url(url)


# ------------------------------------------------------------------------------------------- finding


def find_job(settings: Settings, job: str | None = None, *, name: str | None = None) -> dict[str, Any]:
    """A job by id, else by name (the newest with that name); with neither, the newest job. JobNotFound
    names the store that was read."""
    with reading(store(settings)) as conn:
        row = None
        if name is not None:
            row = lc.find_job_by_name(conn, name)
            what = f"no job named {name!r}"
        elif job is not None:
            row = repo.get_job(conn, job) or lc.find_job_by_name(conn, job)
            what = f"no job {job!r}"
        else:
            latest = repo.latest_job_id(conn)
            row = repo.get_job(conn, latest) if latest else None
            what = "no jobs yet"
    if row is None:
        raise JobNotFound(
            f"{what} in the store {store_label(settings)} "
            f"(set LLMBATCH_DATABASE_URL to read another store; `llmbatch jobs` lists this one)"
        )
    return row


def find_same_command(settings: Settings, path: str | Path, spec: JobSpec) -> dict[str, Any] | None:
    """The newest job made from the same input file and effective spec, if any."""
    with reading(store(settings)) as conn:
        return lc.find_job_by_digests(conn, input_digest(path), spec_digest(spec))


# ------------------------------------------------------------------------------------------ creating


def create_job(
    settings: Settings,
    path: str | Path,
    spec: JobSpec,
    *,
    executor: str,
    strict: bool = False,
    owner: str | None = None,
) -> tuple[str, IngestReport]:
    """Store the job and its valid lines in one transaction: with --strict a bad line leaves nothing behind.
    Unknown model or provider names in the spec are refused first (exit 2, nothing stored). `owner`: the API
    token (service) whose daily cap and response cache the job uses, set before any task can run."""
    from ..catalog.loading import load_catalog
    from ..ingest import ingest
    from ..names import check_spec_names

    check_spec_names(spec, load_catalog(settings))
    digests = {"input_digest": input_digest(path), "spec_digest": spec_digest(spec)}
    with store(settings).begin() as conn:
        job_id = repo.create_job(
            conn,
            name=spec.name,
            spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            input_path=str(path),
            executor=executor,
            simulate=spec.simulate,
            budget_picos=usd_to_picos(spec.budget_usd) if spec.budget_usd is not None else None,
            max_cost_per_task_picos=(
                usd_to_picos(spec.max_cost_per_task_usd) if spec.max_cost_per_task_usd is not None else None
            ),
            owner=owner,
        )
        lc.set_digests(conn, job_id, **digests)
        report = ingest(conn, job_id, path, spec, strict=strict, limits=settings.input_limits)
        if report.accepted == 0 and report.rejected == 0:  # rolls the job back: nothing to keep
            raise InputError("the file has no task lines (it is empty or only blank lines)")
        repo.set_job_counts(conn, job_id, total=report.accepted, invalid=report.rejected)
        if report.accepted == 0:
            repo.finish_job_if_done(conn, job_id)
    return job_id, report


# ------------------------------------------------------------------------------------------- reading


def _job_row(conn: Connection, settings: Settings, job_id: str) -> dict[str, Any]:
    """The row of a job the caller found before; JobNotFound when it has gone since (deleted meanwhile)."""
    job = repo.get_job(conn, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r} in the store {store_label(settings)}")
    return job


def status(settings: Settings, job_id: str) -> dict[str, Any]:
    """The run/status JSON shape (DESIGN.md), plus what the summary shows."""
    from ..reporting import status_dict

    with reading(store(settings)) as conn:
        return status_dict(conn, _job_row(conn, settings, job_id))


def summary(settings: Settings, job_id: str) -> dict[str, Any]:
    """status() plus the model mix and skip reasons: everything the end-of-run table shows."""
    from ..reporting import status_dict

    with reading(store(settings)) as conn:
        job = _job_row(conn, settings, job_id)
        out = status_dict(conn, job)
        out["model_mix"] = repo.by_model(conn, job_id)
        out["skips"] = repo.skip_reason_counts(conn, job_id)
        out["spent_picos"], out["budget_picos"] = job["spent_picos"], job["budget_picos"]
        out["name"], out["created_at"], out["finished_at"] = job["name"], job["created_at"], job["finished_at"]
        return out


def input_errors(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    with reading(store(settings)) as conn:
        return repo.input_error_rows(conn, job_id)


def progress(settings: Settings, job_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    """(job row, task counts): one poll of a running job."""
    with reading(store(settings)) as conn:
        return _job_row(conn, settings, job_id), job_counts.counts(conn, job_id)


def list_jobs(settings: Settings, *, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The `llmbatch jobs` shape: newest first."""
    from ..money import usd_json

    out = []
    with reading(store(settings)) as conn:
        for job in lc.list_jobs(conn, status=status, limit=limit):
            counts = job_counts.counts(conn, job["id"])
            out.append(
                {
                    "job_id": job["id"],
                    "name": job["name"],
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job["created_at"])),
                    "status": job["status"],
                    "counts": {
                        k: counts[k]
                        for k in ("total", "queued", "running", "succeeded", "failed", "skipped", "cancelled")
                    },
                    "spent_usd": usd_json(job["spent_picos"]),
                    "budget_usd": usd_json(job["budget_picos"]),
                }
            )
    return out


def done_and_left(settings: Settings, job_id: str) -> tuple[int, int]:
    """(finished tasks, unfinished tasks)."""
    with reading(store(settings)) as conn:
        c = job_counts.counts(conn, job_id)
    return sum(c[s] for s in TaskStatus.terminal), c["queued"] + c["running"]


# ------------------------------------------------------------------------------------------ changing


def finish_if_done(settings: Settings, job_id: str) -> str | None:
    with store(settings).begin() as conn:
        return repo.finish_job_if_done(conn, job_id)


def cancel(settings: Settings, job_id: str) -> tuple[int, list[str]]:
    """Cancel queued tasks now; running ones stop before their next call; the job's open provider batches are
    cancelled at the provider (their finished lines stay billed). Returns (tasks cancelled, batch ids)."""
    import asyncio

    from ..batch_channel import cancel_job_batches

    with store(settings).begin() as conn:
        n = repo.request_cancel(conn, job_id)
        repo.finish_job_if_done(conn, job_id)
    return n, asyncio.run(cancel_job_batches(settings, job_id))


def requeue(settings: Settings, job_id: str, *, budget_usd: str | None = None, include_failed: bool = True) -> int:
    """`retry`: failed/skipped/cancelled tasks back to queued (optionally a new budget). Nothing requeued: the
    job's status is settled again from its tasks."""
    if budget_usd is not None:
        from pydantic import ValidationError

        from ..models import JobSpec

        try:
            budget_usd = JobSpec.model_validate({"budget_usd": budget_usd}).budget_usd
        except ValidationError as e:
            raise InputError(f"--budget: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    with store(settings).begin() as conn:
        n = repo.requeue_for_retry(
            conn, job_id, budget_picos=usd_to_picos(budget_usd) if budget_usd else None, include_failed=include_failed
        )
        if n == 0:
            repo.finish_job_if_done(conn, job_id)
    return n


@dataclass(frozen=True)
class ResumePlan:
    job_id: str
    taken_back: int  # tasks leased to a dead process of this host, requeued at once
    reconciled: int  # unknown-outcome attempts settled (as billed at their reservation)
    done: int
    left: int


def prepare_resume(settings: Settings, job_id: str) -> ResumePlan:
    """Before running an interrupted or stalled job again: take back the tasks of dead local processes, settle
    the attempts whose outcome is unknown (billed at their reservation: the cap stays true), and mark the job
    running. Tasks leased by live or remote workers are left to them (or to their lease's end)."""
    from ..store import ledger

    engine = store(settings)
    with engine.begin() as conn:
        dead = lc.dead_local_owners(conn, job_id)
        taken = lc.release_leases(conn, job_id, dead, why="worker_lost")
    reconciled = len(ledger.reconcile(engine, job_id=job_id))
    done, left = done_and_left(settings, job_id)
    if left:
        with engine.begin() as conn:
            lc.set_status(conn, job_id, JobStatus.running)
    return ResumePlan(job_id, taken, reconciled, done, left)


def resume_same_command(
    settings: Settings, path: str | Path, spec: JobSpec
) -> tuple[dict[str, Any], ResumePlan | None] | None:
    """run/submit without --new: the newest job made from the same file and spec (None if there is none). A
    finished job comes back as (its row, None); an unfinished one is prepared to run again: (its row, the plan)."""
    job = find_same_command(settings, path, spec)
    if job is None:
        return None
    if job["status"] in JobStatus.terminal:
        return job, None
    plan = prepare_resume(settings, job["id"])
    return find_job(settings, job["id"]), plan


def stop_after_interrupt(settings: Settings, job_id: str, worker: str) -> str:
    """A run of this process stopped: hand its leases back (calls it cut off become `interrupted`, outcome
    unknown, reservation held), and mark the job `interrupted` if work is left. Returns the job's status."""
    with store(settings).begin() as conn:
        lc.release_leases(conn, job_id, [worker], why="interrupted")
        status = repo.finish_job_if_done(conn, job_id)
        if status is None:
            lc.set_status(conn, job_id, JobStatus.interrupted)
            status = JobStatus.interrupted
    return status


def park(settings: Settings, job_id: str) -> None:
    """An embedded job with work that nobody runs now (`retry --no-wait`): `interrupted`, so `resume` and
    `status` say what to do, rather than `running` with nothing running it."""
    with store(settings).begin() as conn:
        if repo.finish_job_if_done(conn, job_id) is None:
            lc.set_status(conn, job_id, JobStatus.interrupted)


# ---------------------------------------------------------------------------------- results and audit


def result_lines(settings: Settings, job_id: str, *, with_final_attempt: bool = False):
    """The `results` lines of a job, streamed in input order (with the final attempt's details for the
    OpenAI export)."""
    from ..reporting import result_lines as lines

    with reading(store(settings)) as conn:
        yield from lines(conn, job_id, with_final_attempt=with_final_attempt)


def result_jsonl(settings: Settings, job_id: str):
    """The `results --format jsonl` bytes of a job, in input order, a page of lines at a time."""
    from ..reporting import result_jsonl as chunks

    with reading(store(settings)) as conn:
        yield from chunks(conn, job_id)


def rejected_lines(settings: Settings, job_id: str):
    """Every rejected input line of a job (the OpenAI export writes them as error lines)."""
    with reading(store(settings)) as conn:
        yield from repo.input_error_rows(conn, job_id, limit=None)


def attempt_lines(settings: Settings, job_id: str):
    from ..reporting import attempt_lines as lines

    with reading(store(settings)) as conn:
        yield from lines(conn, job_id)


def report(settings: Settings, job_id: str, *, baseline_model: str | None = None) -> dict[str, Any]:
    from ..catalog.loading import load_catalog
    from ..reporting import build_report

    with reading(store(settings)) as conn:
        return build_report(
            conn, job_id, load_catalog(settings), baseline_model=baseline_model or settings.baseline_model
        )


def reconcile(settings: Settings, job_id: str | None, *, assume: str = "billed", grace_s: float = 0.0) -> int:
    """Settle attempts whose outcome is unknown; returns how many."""
    from ..store import ledger

    return len(ledger.reconcile(store(settings), job_id=job_id, assume=assume, grace_s=grace_s))


def store_revision(settings: Settings) -> str:
    """Open (and migrate) the store; its schema revision."""
    from ..store.db import current_revision

    return current_revision(store(settings)) or "none"
