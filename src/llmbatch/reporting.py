"""Read-side views of a job: status counts, result lines, and the spend audit (report).

Every number in the report is a SQL aggregate over the ledger (attempts), so the report reconciles to the
job totals by construction; `check_reconciliation` verifies it anyway and the report shows the verdict.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterator

import orjson
from sqlalchemy import Connection, func, select

from .errors import CatalogError, PricingError
from .money import usd_json
from .store import repo
from .store.schema import attempts, tasks

if TYPE_CHECKING:  # the catalog and pydantic models load only for a report (status starts without them)
    from .catalog import Catalog


def status_dict(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    counts = repo.task_counts(conn, job["id"])
    return {
        "job_id": job["id"],
        "status": job["status"],
        "counts": {k: counts[k] for k in ("total", "queued", "running", "succeeded", "failed", "skipped", "cancelled")},
        "spent_usd": usd_json(job["spent_micros"]),
        "reserved_usd": usd_json(job["reserved_micros"]),
        "budget_usd": usd_json(job["budget_micros"]),
        "invalid_lines": job["invalid_lines"],
    }


def _usage_of(row) -> dict[str, int]:
    return {k: int(row[k] or 0) for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens",
                                          "reasoning_tokens")}


def result_lines(conn: Connection, job_id: str) -> Iterator[dict[str, Any]]:
    """One dict per task in input order: the `results --format jsonl` shape."""
    for row in repo.iter_task_rows(conn, job_id):
        payload = orjson.loads(row["payload"])
        yield {
            "id": row["task_id"],
            "status": row["status"],
            "provider": row["provider"],
            "model": row["model"],
            "output": orjson.loads(row["output"]) if row["output"] is not None else None,
            "error": row["error"],
            "usage": _usage_of(row),
            "cost_usd": usd_json(row["cost_micros"]),
            "attempts": row["attempts"],
            "metadata": payload.get("metadata"),
        }


def openai_batch_line(r: dict[str, Any], job_id: str, seq: int) -> dict[str, Any]:
    """`results --format openai`: the OpenAI Batch output file shape, so existing tooling keeps working."""
    if r["status"] == "succeeded":
        content = r["output"] if isinstance(r["output"], str) else orjson.dumps(r["output"]).decode()
        u = r["usage"]
        body = {
            "object": "chat.completion", "model": r["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"],
                      "total_tokens": u["input_tokens"] + u["output_tokens"],
                      "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                      "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]}},
        }
        return {"id": f"batch_req_{job_id}_{seq}", "custom_id": r["id"],
                "response": {"status_code": 200, "request_id": None, "body": body}, "error": None}
    return {"id": f"batch_req_{job_id}_{seq}", "custom_id": r["id"], "response": None,
            "error": {"code": r["status"], "message": r["error"]}}


def _baseline_micros(rows: list[dict[str, Any]], catalog: Catalog, baseline: str) -> tuple[int | None, str | None]:
    """What the same tokens would have cost on the baseline model (one price() over the summed usage)."""
    from .catalog.pricing import price
    from .models import Usage

    try:
        model = catalog.get(baseline)
    except CatalogError as e:
        return None, str(e)
    total = Usage()
    for r in rows:
        total = total + Usage(input_tokens=r["input_tokens"], cached_tokens=r["cached_tokens"],
                              cache_write_tokens=r["cache_write_tokens"], output_tokens=r["output_tokens"],
                              reasoning_tokens=r["reasoning_tokens"])
    try:
        return price(total, model).micros, None
    except PricingError as e:
        return None, str(e)


def build_report(conn: Connection, job_id: str, catalog: Catalog, *, baseline_model: str = "gpt-4o",
                 top: int = 10) -> dict[str, Any]:
    job = repo.get_job(conn, job_id)
    if job is None:
        raise LookupError(job_id)
    rows = repo.by_model(conn, job_id)
    counts = repo.task_counts(conn, job_id)
    # by_model read the whole ledger once: its sums are the ledger sum and the unsettled/unpriced counts.
    ledger_micros = sum(r["cost_micros"] or 0 for r in rows)
    base_micros, base_err = _baseline_micros(rows, catalog, baseline_model)
    unpriced = conn.execute(select(attempts.c.id, attempts.c.model, attempts.c.pricing_error)
                            .where(attempts.c.job_id == job_id, attempts.c.cost_source == "unpriced")).all() \
        if any(r["unpriced_attempts"] for r in rows) else []
    unsettled = sum(r["unsettled_attempts"] or 0 for r in rows)
    escalations = int(conn.execute(select(func.coalesce(func.sum(tasks.c.escalations), 0))
                                   .where(tasks.c.job_id == job_id, tasks.c.escalations > 0)).scalar())
    expensive = conn.execute(
        select(tasks.c.task_id, tasks.c.model, tasks.c.cost_micros, tasks.c.attempts)
        .where(tasks.c.job_id == job_id).order_by(tasks.c.cost_micros.desc()).limit(top)).all()
    total_tasks = counts["total"]
    return {
        "job_id": job_id,
        "status": job["status"],
        "spent_usd": usd_json(job["spent_micros"]),
        "reserved_usd": usd_json(job["reserved_micros"]),
        "budget_usd": usd_json(job["budget_micros"]),
        "spent_micros": job["spent_micros"],
        "ledger_micros": ledger_micros,
        "reconciled": ledger_micros == job["spent_micros"],
        "counts": {k: counts[k] for k in ("total", "succeeded", "failed", "skipped", "cancelled", "queued", "running")},
        "skips": repo.skip_reason_counts(conn, job_id),
        "escalations": escalations,
        "by_model": [{
            "provider": r["provider"], "model": r["model"], "tasks": r["tasks"], "attempts": r["attempts"],
            "succeeded_attempts": r["succeeded_attempts"], "input_tokens": r["input_tokens"],
            "cached_tokens": r["cached_tokens"], "cache_write_tokens": r["cache_write_tokens"],
            "output_tokens": r["output_tokens"], "reasoning_tokens": r["reasoning_tokens"],
            "cost_usd": usd_json(r["cost_micros"]), "cost_micros": r["cost_micros"],
        } for r in rows],
        "cost_per_1k_tasks_usd": (float(Decimal(job["spent_micros"]) * 1000 / total_tasks / 1_000_000)
                                  if total_tasks else None),
        "most_expensive_tasks": [{"id": t.task_id, "model": t.model, "cost_usd": usd_json(t.cost_micros),
                                  "attempts": t.attempts} for t in expensive],
        "baseline": {"model": baseline_model, "cost_usd": usd_json(base_micros), "error": base_err},
        "savings_usd": usd_json(base_micros - job["spent_micros"]) if base_micros is not None else None,
        "unpriced_attempts": [{"attempt_id": a.id, "model": a.model, "error": a.pricing_error} for a in unpriced],
        "unsettled_attempts": unsettled,
    }


def attempt_lines(conn: Connection, job_id: str) -> Iterator[dict[str, Any]]:
    """Every ledger row of the job (report --attempts): the audit trail down to each call."""
    for r in repo.iter_attempt_rows(conn, job_id):
        d = dict(r)
        d["cost_usd"] = usd_json(d["cost_micros"])
        d["reserved_usd"] = usd_json(d["reserved_micros"])
        yield d
