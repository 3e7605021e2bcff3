"""A job's status as `status --json` and the service show it: counts from the job row, money in USD."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ..money import usd_json
from ..store import job_counts


def status_dict(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    counts = job_counts.counts(conn, job["id"])
    return {
        "job_id": job["id"],
        "status": job["status"],
        "counts": {k: counts[k] for k in ("total", "queued", "running", "succeeded", "failed", "skipped", "cancelled")},
        "spent_usd": usd_json(job["spent_picos"]),
        "reserved_usd": usd_json(job["reserved_picos"]),
        "budget_usd": usd_json(job["budget_picos"]),
        "invalid_lines": job["invalid_lines"],
        "stop_reason": job.get("stop_reason"),
    }
