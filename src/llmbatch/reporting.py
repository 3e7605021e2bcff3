"""Read-side views of a job: status counts, result lines, and the spend audit (report).

Every number in the report is a SQL aggregate over the ledger (attempts), so the report reconciles to the
job totals by construction; `check_reconciliation` verifies it anyway and the report shows the verdict.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterator

import orjson
from sqlalchemy import Connection, and_, bindparam, case, func, select

from .errors import CatalogError
from .money import usd_json
from .store import job_counts, repo
from .store.schema import AttemptStatus, TaskStatus, attempts, tasks

if TYPE_CHECKING:  # the catalog and pydantic models load only for a report (status starts without them)
    from .catalog import Catalog


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


def _usage_of(row) -> dict[str, int]:
    return {
        k: int(row[k] or 0)
        for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
    }


# The attempt columns a result line shows; the OpenAI export (with_final_attempt) wants the whole final attempt.
_FINAL_SHORT = (attempts.c.task_seq, attempts.c.finish_reason, attempts.c.channel)
_FINAL_FULL = (
    attempts.c.task_seq,
    attempts.c.attempt_no,
    attempts.c.model,
    attempts.c.served_model,
    attempts.c.finish_reason,
    attempts.c.provider_request_id,
    attempts.c.finished_at,
    attempts.c.started_at,
    attempts.c.input_tokens,
    attempts.c.cached_tokens,
    attempts.c.cache_write_tokens,
    attempts.c.output_tokens,
    attempts.c.reasoning_tokens,
    attempts.c.error_class,
    attempts.c.http_status,
    attempts.c.channel,
)
_RESULT_TASK = (
    tasks.c.seq,
    tasks.c.task_id,
    tasks.c.status,
    tasks.c.provider,
    tasks.c.model,
    tasks.c.output,
    tasks.c.error,
    tasks.c.input_tokens,
    tasks.c.cached_tokens,
    tasks.c.cache_write_tokens,
    tasks.c.output_tokens,
    tasks.c.reasoning_tokens,
    tasks.c.cost_picos,
    tasks.c.attempts,
    tasks.c.payload,
    tasks.c.skip_reason,
)


def _final_attempts(conn: Connection, job_id: str, lo: int, hi: int, *, full: bool = True) -> dict[int, Any]:
    """The last attempt (highest attempt_no) of each task with lo <= seq <= hi: what the task's result is.
    Rows (attribute access) with _FINAL_SHORT's columns, or dicts of _FINAL_FULL's when `full`."""
    rows = conn.execute(
        select(*(_FINAL_FULL if full else _FINAL_SHORT))
        .where(attempts.c.job_id == job_id, attempts.c.task_seq >= lo, attempts.c.task_seq <= hi)
        .order_by(attempts.c.task_seq, attempts.c.attempt_no)
    )
    final = {r.task_seq: r for r in rows}  # ordered by attempt_no: the last one stays
    return {seq: r._asdict() for seq, r in final.items()} if full else final


def _task_pages(conn: Connection, job_id: str, page: int):
    """The result columns of a job's tasks in input order, a keyset page at a time (an index range each):
    memory stays flat at any job size, and no statement stays open across pages."""
    q = (
        select(*_RESULT_TASK)
        .where(tasks.c.job_id == job_id, tasks.c.seq > bindparam("b_last"))
        .order_by(tasks.c.seq)
        .limit(page)
    )
    last = -1
    while True:
        rows = conn.execute(q, {"b_last": last}).all()
        if not rows:
            return
        yield rows
        last = rows[-1].seq


def _result_rows(conn: Connection, job_id: str, page: int = 2000, *, full: bool = True) -> Iterator[tuple[Any, Any]]:
    """(task row, its final attempt or None) in input order, a page of tasks (and one attempts query) at a time."""
    for rows in _task_pages(conn, job_id, page):
        final = _final_attempts(conn, job_id, rows[0].seq, rows[-1].seq, full=full)
        for r in rows:
            yield r, final.get(r.seq)


def result_lines(conn: Connection, job_id: str, *, with_final_attempt: bool = False) -> Iterator[dict[str, Any]]:
    """One dict per task in input order: the `results --format jsonl` shape. `usage` and `cost_usd` are the
    task's totals over all its billed attempts; `finish_reason` is the final attempt's, as the provider sent it.
    with_final_attempt adds `_final` (that attempt's ledger row) for the OpenAI export."""
    usd = functools.lru_cache(maxsize=4096)(usd_json)  # a job's task costs repeat: one Decimal per distinct cost
    loads = orjson.loads
    for row, final in _result_rows(conn, job_id, full=with_final_attempt):
        # The payload is only read for its metadata: parsed only when it can hold one.
        metadata = loads(row.payload).get("metadata") if '"metadata"' in row.payload else None
        line = {
            "id": row.task_id,
            "status": row.status,
            "provider": row.provider,
            "model": row.model,
            "output": loads(row.output) if row.output is not None else None,
            "error": row.error,
            "finish_reason": (final["finish_reason"] if with_final_attempt else final.finish_reason) if final else None,
            "usage": {
                "input_tokens": int(row.input_tokens or 0),
                "cached_tokens": int(row.cached_tokens or 0),
                "cache_write_tokens": int(row.cache_write_tokens or 0),
                "output_tokens": int(row.output_tokens or 0),
                "reasoning_tokens": int(row.reasoning_tokens or 0),
            },
            "cost_usd": usd(row.cost_picos),
            "attempts": row.attempts,
            "metadata": metadata,
            "channel": channel_of(final if with_final_attempt or final is None else {"channel": final.channel}),
        }
        if with_final_attempt:
            line["_final"] = final
            line["_skip_reason"] = row.skip_reason
        yield line


def channel_of(attempt: dict[str, Any] | None) -> str | None:
    """The channel that answered a task: its final attempt's (online, flex, batch, cache); rows written before
    channels existed say "sync", which was online."""
    if attempt is None:
        return None
    return "online" if attempt["channel"] in (None, "sync") else attempt["channel"]


# Our finish reasons -> OpenAI's (the export claims OpenAI's shape; ChatCompletion accepts only these).
_OPENAI_FINISH = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "STOP": "stop",
    "length": "length",
    "max_tokens": "length",
    "MAX_TOKENS": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "SAFETY": "content_filter",
    "function_call": "function_call",
}


def _error_code(status: str, skip_reason: str | None, error: str | None) -> str:
    if status == "skipped":
        return f"skipped_{skip_reason or 'unknown'}"
    if status == "cancelled":
        return "cancelled"
    if error and error.startswith("truncated"):
        return "truncated"
    return "task_failed"


def openai_batch_line(r: dict[str, Any], job_id: str, seq: int) -> dict[str, Any]:
    """`results --format openai`: the OpenAI Batch output file shape, so existing tooling keeps working.
    `r` is a result_lines(with_final_attempt=True) dict. A succeeded task's body is a complete chat.completion
    of its FINAL attempt: that attempt's own usage, finish reason, served model and the provider's request id."""
    line_id = f"batch_req_{job_id}_{seq}"
    final = r.get("_final")
    if r["status"] == "succeeded" and final is not None:
        content = r["output"] if isinstance(r["output"], str) else orjson.dumps(r["output"]).decode()
        u = _usage_of(final)
        created = int(final["finished_at"] or final["started_at"] or 0)
        body = {
            "id": final["provider_request_id"] or f"chatcmpl-{job_id}-{seq}",
            "object": "chat.completion",
            "created": created,
            "model": final["served_model"] or final["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": _OPENAI_FINISH.get(final["finish_reason"] or "stop", "stop"),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": u["input_tokens"],
                "completion_tokens": u["output_tokens"],
                "total_tokens": u["input_tokens"] + u["output_tokens"],
                "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            },
        }
        return {
            "id": line_id,
            "custom_id": r["id"],
            "response": {"status_code": 200, "request_id": final["provider_request_id"], "body": body},
            "error": None,
        }
    return {
        "id": line_id,
        "custom_id": r["id"],
        "response": None,
        "error": {
            "code": _error_code(r["status"], r.get("_skip_reason"), r["error"]),
            "message": r["error"] or r["status"],
        },
    }


def openai_rejected_line(e: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A rejected input line in the export: an error line with its custom_id (the line number when it had none)."""
    return {
        "id": f"batch_req_{job_id}_line{e['line_no']}",
        "custom_id": e["task_id"] or f"line-{e['line_no']}",
        "response": None,
        "error": {"code": "invalid_input", "message": f"line {e['line_no']}: {e['reason']}"},
    }


def _baseline_picos(conn: Connection, job_id: str, catalog: Catalog, baseline: str) -> tuple[int | None, str | None]:
    """What the FINAL attempts of the SUCCEEDED tasks would have cost on the baseline model: one request each,
    as if sent there directly. Failed, retried and escalated attempts are not counted (the baseline would
    have been billed once per finished request). Summed per long-context tier of the baseline model, so the
    price is exact: price() is linear within a tier."""
    from .catalog.pricing import cost_at
    from .models import Usage

    try:
        model = catalog.get(baseline)
    except CatalogError as e:
        return None, str(e)
    cols = [
        func.coalesce(func.sum(getattr(attempts.c, k)), 0).label(k)
        for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
    ]
    q = (
        select(*cols, func.min(attempts.c.input_tokens).label("min_in"))
        .select_from(
            attempts.join(tasks, and_(tasks.c.job_id == attempts.c.job_id, tasks.c.seq == attempts.c.task_seq))
        )
        .where(
            attempts.c.job_id == job_id,
            attempts.c.status == AttemptStatus.succeeded,
            tasks.c.status == TaskStatus.succeeded,
        )
    )
    if model.price_tiers:
        tier = case(
            *[
                (attempts.c.input_tokens > t.above_input_tokens, i + 1)
                for i, t in reversed(list(enumerate(model.price_tiers)))
            ],
            else_=0,
        )
        q = q.add_columns(tier.label("tier")).group_by(tier)
    total = 0
    for r in conn.execute(q).mappings():
        if r["min_in"] is None:  # no succeeded task
            continue
        u = Usage(
            **{
                k: int(r[k])
                for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
            }
        )
        # The group's requests share a tier: price its summed tokens at the rates of its smallest request.
        total += cost_at(u, model.rates(int(r["min_in"]))).picos
    return total, None


def overrun_rows(conn: Connection, job_id: str, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
    """Attempts billed above their reservation: how many, and the largest (by excess)."""
    n = int(
        conn.execute(select(func.count()).where(attempts.c.job_id == job_id, attempts.c.overrun.is_(True))).scalar_one()
    )
    rows = conn.execute(
        select(
            attempts.c.id,
            attempts.c.task_id,
            attempts.c.provider,
            attempts.c.model,
            attempts.c.reserved_picos,
            attempts.c.cost_picos,
        )
        .where(attempts.c.job_id == job_id, attempts.c.overrun.is_(True))
        .order_by((attempts.c.cost_picos - attempts.c.reserved_picos).desc())
        .limit(limit)
    ).all()
    return n, [
        {
            "attempt_id": a.id,
            "task_id": a.task_id,
            "model": f"{a.provider}/{a.model}",
            "reserved_usd": usd_json(a.reserved_picos),
            "cost_usd": usd_json(a.cost_picos),
            "excess_usd": usd_json(a.cost_picos - a.reserved_picos),
        }
        for a in rows
    ]


def build_report(
    conn: Connection, job_id: str, catalog: Catalog, *, baseline_model: str = "gpt-4o", top: int = 10
) -> dict[str, Any]:
    from .cache.report import cache_section, prompt_cache_section
    from .channel_report import by_channel  # discount channels
    from .quality.report import quality_summary

    job = repo.get_job(conn, job_id)
    if job is None:
        raise LookupError(job_id)
    rows = repo.by_model(conn, job_id)
    counts = job_counts.counts(conn, job_id)
    # by_model read the whole ledger once: its sums are the ledger sum and the unsettled/unpriced counts.
    ledger_picos = sum(r["cost_picos"] or 0 for r in rows)
    base_picos, base_err = _baseline_picos(conn, job_id, catalog, baseline_model)
    n_overruns, overruns = overrun_rows(conn, job_id)
    unpriced = (
        conn.execute(
            select(attempts.c.id, attempts.c.model, attempts.c.pricing_error).where(
                attempts.c.job_id == job_id, attempts.c.cost_source == "unpriced"
            )
        ).all()
        if any(r["unpriced_attempts"] for r in rows)
        else []
    )
    unsettled = sum(r["unsettled_attempts"] or 0 for r in rows)
    escalations = int(
        conn.execute(
            select(func.coalesce(func.sum(tasks.c.escalations), 0)).where(
                tasks.c.job_id == job_id, tasks.c.escalations > 0
            )
        ).scalar_one()
    )
    expensive = conn.execute(
        select(tasks.c.task_id, tasks.c.model, tasks.c.cost_picos, tasks.c.attempts)
        .where(tasks.c.job_id == job_id)
        .order_by(tasks.c.cost_picos.desc())
        .limit(top)
    ).all()
    total_tasks = counts["total"]
    return {
        "job_id": job_id,
        "status": job["status"],
        "spent_usd": usd_json(job["spent_picos"]),
        "reserved_usd": usd_json(job["reserved_picos"]),
        "budget_usd": usd_json(job["budget_picos"]),
        "spent_picos": job["spent_picos"],
        "ledger_picos": ledger_picos,
        "reconciled": ledger_picos == job["spent_picos"],
        "counts": {k: counts[k] for k in ("total", "succeeded", "failed", "skipped", "cancelled", "queued", "running")},
        "skips": repo.skip_reason_counts(conn, job_id),
        "escalations": escalations,
        "by_model": [
            {
                "provider": r["provider"],
                "model": r["model"],
                "tasks": r["tasks"],
                "attempts": r["attempts"],
                "succeeded_attempts": r["succeeded_attempts"],
                "input_tokens": r["input_tokens"],
                "cached_tokens": r["cached_tokens"],
                "cache_write_tokens": r["cache_write_tokens"],
                "output_tokens": r["output_tokens"],
                "reasoning_tokens": r["reasoning_tokens"],
                "cost_usd": usd_json(r["cost_picos"]),
                "cost_picos": r["cost_picos"],
            }
            for r in rows
        ],
        "cost_per_1k_tasks_usd": usd_json(job["spent_picos"] * 1000 // total_tasks) if total_tasks else None,
        "most_expensive_tasks": [
            {"id": t.task_id, "model": t.model, "cost_usd": usd_json(t.cost_picos), "attempts": t.attempts}
            for t in expensive
        ],
        "baseline": {
            "model": baseline_model,
            "cost_usd": usd_json(base_picos),
            "error": base_err,
            "counts": "the final attempt of each succeeded task, priced on the baseline model",
        },
        "savings_usd": usd_json(base_picos - job["spent_picos"]) if base_picos is not None else None,
        "unpriced_attempts": [{"attempt_id": a.id, "model": a.model, "error": a.pricing_error} for a in unpriced],
        "unsettled_attempts": unsettled,
        "overruns": n_overruns,
        "overrun_attempts": overruns,
        "stop_reason": job.get("stop_reason"),
        "cache": cache_section(conn, job_id),
        "prompt_cache": prompt_cache_section(conn, job_id, catalog),
        "by_channel": by_channel(conn, job_id, catalog),
        "quality": quality_summary(conn, job),  # quality-floor: the policy, agreement, expected vs actual cost
    }


def attempt_lines(conn: Connection, job_id: str) -> Iterator[dict[str, Any]]:
    """Every ledger row of the job (report --attempts): the audit trail down to each call."""
    for r in repo.iter_attempt_rows(conn, job_id):
        d = dict(r)
        d["cost_usd"] = usd_json(d["cost_picos"])
        d["reserved_usd"] = usd_json(d["reserved_picos"])
        yield d
