"""Read-side views of a job: status counts, result lines, and the spend audit (report).

Every number in the report is a SQL aggregate over the ledger (attempts), so the report reconciles to the
job totals by construction; `check_reconciliation` verifies it anyway and the report shows the verdict.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterator

import orjson
from sqlalchemy import Connection, bindparam, func, select

from .errors import CatalogError
from .money import json_default, usd_json
from .store import job_counts, reads, repo
from .store.schema import attempts, tasks

if TYPE_CHECKING:  # the catalog and pydantic models load only for a report (status starts without them)
    from .catalog import Catalog, ModelInfo


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


def _final_attempts(conn: Connection, job_id: str, lo: int, hi: int) -> dict[int, Any]:
    """The last attempt (highest attempt_no) of each task with lo <= seq <= hi: what the task's result is.
    Dicts of _FINAL_FULL's columns (the OpenAI export)."""
    rows = conn.execute(
        select(*_FINAL_FULL)
        .where(attempts.c.job_id == job_id, attempts.c.task_seq >= lo, attempts.c.task_seq <= hi)
        .order_by(attempts.c.task_seq, attempts.c.attempt_no)
    )
    final = {r.task_seq: r for r in rows}  # ordered by attempt_no: the last one stays
    return {seq: r._asdict() for seq, r in final.items()}


class _Raw:
    """A Core statement run on the connection's own DBAPI cursor, in the connection's transaction (one snapshot):
    plain tuples, none of SQLAlchemy's per-row work, which was half of `results`' time on a million tasks."""

    def __init__(self, conn: Connection, stmt) -> None:
        if not conn.in_transaction():
            conn.begin()  # as conn.execute would: on SQLite the reading() BEGIN, so every page sees one snapshot
        compiled = stmt.compile(dialect=conn.dialect)
        self.sql = compiled.string
        self.names = compiled.positiontup if compiled.positional else None
        self.defaults = compiled.params  # the statement's own (SQLite renders LIMIT ? OFFSET ?, offset 0)
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def all(self, params: dict[str, Any]) -> list[Any]:
        params = {**self.defaults, **params}
        self.cursor.execute(self.sql, tuple(params[n] for n in self.names) if self.names is not None else params)
        return list(self.cursor.fetchall())


_SEQ, _TASK_ID, _STATUS, _PROVIDER, _MODEL, _OUTPUT, _ERROR = range(7)  # _RESULT_TASK's positions
_IN, _CACHED, _WRITE, _OUT, _REASON, _COST, _ATTEMPTS, _PAYLOAD, _SKIP = range(7, 16)


def _result_pages(conn: Connection, job_id: str, page: int = 2000, *, full: bool = False):
    """(task rows, final attempt by seq) a page of tasks at a time, in input order: the result columns of the
    tasks (tuples in _RESULT_TASK's order) by keyset pages (an index range each), and their attempts (one
    range query per page). Memory stays flat at any job size, and no statement stays open across pages.
    The final attempt is (seq, finish_reason, channel), or with `full` a dict of _FINAL_FULL's columns."""
    task_q = _Raw(
        conn,
        select(*_RESULT_TASK)
        .where(tasks.c.job_id == bindparam("b_job"), tasks.c.seq > bindparam("b_last"))
        .order_by(tasks.c.seq)
        .limit(bindparam("b_page", literal_execute=False)),
    )
    final_q = _Raw(
        conn,
        select(*_FINAL_SHORT)
        .where(
            attempts.c.job_id == bindparam("b_job"),
            attempts.c.task_seq >= bindparam("b_lo"),
            attempts.c.task_seq <= bindparam("b_hi"),
        )
        .order_by(attempts.c.task_seq, attempts.c.attempt_no),
    )
    last = -1
    while True:
        rows = task_q.all({"b_job": job_id, "b_last": last, "b_page": page})
        if not rows:
            return
        lo, last = rows[0][_SEQ], rows[-1][_SEQ]
        if full:
            yield rows, _final_attempts(conn, job_id, lo, last)
        else:  # ordered by attempt_no: the last one stays
            yield rows, {a[0]: a for a in final_q.all({"b_job": job_id, "b_lo": lo, "b_hi": last})}


def result_lines(conn: Connection, job_id: str, *, with_final_attempt: bool = False) -> Iterator[dict[str, Any]]:
    """One dict per task in input order: the `results --format jsonl` shape. `usage` and `cost_usd` are the
    task's totals over all its billed attempts; `finish_reason` is the final attempt's, as the provider sent it.
    with_final_attempt adds `_final` (that attempt's ledger row) for the OpenAI export."""
    usd = functools.lru_cache(maxsize=4096)(usd_json)  # a job's task costs repeat: one Decimal per distinct cost
    for rows, finals in _result_pages(conn, job_id, full=with_final_attempt):
        for row in rows:
            final = finals.get(row[_SEQ])
            if with_final_attempt:
                finish, channel = (final["finish_reason"], channel_of(final)) if final else (None, None)
            else:
                finish, channel = (final[1], _channel_name(final[2])) if final else (None, None)
            line = _line(row, finish, usd(row[_COST]), channel)
            if with_final_attempt:
                line["_final"] = final
                line["_skip_reason"] = row[_SKIP]
            yield line


def result_jsonl(conn: Connection, job_id: str) -> Iterator[bytes]:
    """`results --format jsonl`, as bytes: a page of lines at a time, each exactly dumps_json(result line) + newline
    (cost_usd rendered once per distinct cost, as json_default renders the Decimal)."""
    dumps = orjson.dumps
    costs: dict[int, orjson.Fragment] = {}
    for rows, finals in _result_pages(conn, job_id):
        out = []
        for row in rows:
            final = finals.get(row[_SEQ])
            cost = costs.get(row[_COST])
            if cost is None and row[_COST] is not None:
                if len(costs) >= 65536:  # a job of many distinct costs: bounded memory
                    costs.clear()
                cost = costs[row[_COST]] = json_default(usd_json(row[_COST]))
            if final is None:
                out.append(dumps(_line(row, None, cost, None)))
            else:
                out.append(dumps(_line(row, final[1], cost, _channel_name(final[2]))))
        out.append(b"")
        yield b"\n".join(out)


def _line(row: tuple, finish_reason: str | None, cost_usd: Any, channel: str | None) -> dict[str, Any]:
    """A result line from a task row (_RESULT_TASK's tuple). The payload is only read for its metadata: parsed
    only when it can hold one."""
    payload, output = row[_PAYLOAD], row[_OUTPUT]
    return {
        "id": row[_TASK_ID],
        "status": row[_STATUS],
        "provider": row[_PROVIDER],
        "model": row[_MODEL],
        "output": orjson.loads(output) if output is not None else None,
        "error": row[_ERROR],
        "finish_reason": finish_reason,
        "usage": {
            "input_tokens": int(row[_IN] or 0),
            "cached_tokens": int(row[_CACHED] or 0),
            "cache_write_tokens": int(row[_WRITE] or 0),
            "output_tokens": int(row[_OUT] or 0),
            "reasoning_tokens": int(row[_REASON] or 0),
        },
        "cost_usd": cost_usd,
        "attempts": row[_ATTEMPTS],
        "metadata": orjson.loads(payload).get("metadata") if '"metadata"' in payload else None,
        "channel": channel,
    }


def _channel_name(channel: str | None) -> str:
    return "online" if channel is None or channel == "sync" else channel


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


def _baseline_picos(conn: Connection, job_id: str, model: ModelInfo, groups: list[reads.LedgerGroup]) -> int:
    """What the FINAL attempts of the SUCCEEDED tasks would have cost on the baseline model: one request each,
    as if sent there directly. Failed, retried and escalated attempts are not counted (the baseline would
    have been billed once per finished request). Summed per long-context tier of the baseline model, so the
    price is exact: price() is linear within a tier. The succeeded attempts come from the ledger groups
    (read once); those of tasks that did not succeed are read apart (few) and taken off."""
    from .catalog.pricing import cost_at
    from .models import Usage

    thresholds = [t.above_input_tokens for t in model.price_tiers]
    per_tier = reads.succeeded_by_tier(groups, len(thresholds))
    for k, (n, toks) in reads.succeeded_attempts_of_unsucceeded_tasks(conn, job_id, thresholds).items():
        m, have = per_tier[k]
        per_tier[k] = (m - n, {t: have[t] - toks[t] for t in reads.TOKENS})
    total = 0
    for k, (n, toks) in per_tier.items():
        if n == 0:  # no succeeded task in this tier
            continue
        # The tier's requests share its rates: those of any input size in it (thresholds ascend, distinct, > 0).
        total += cost_at(Usage(**toks), model.rates(0 if k == 0 else thresholds[k - 1] + 1)).picos
    return total


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
    try:
        base_model, base_err = catalog.get(baseline_model), None
    except CatalogError as e:
        base_model, base_err = None, str(e)
    # The whole ledger, read once (store/reads.py): every ledger figure below comes from these groups.
    groups = reads.ledger_groups(
        conn, job_id, [t.above_input_tokens for t in base_model.price_tiers] if base_model is not None else ()
    )
    rows = reads.by_model(groups)
    counts = job_counts.counts(conn, job_id)
    ledger_picos = sum(r["cost_picos"] or 0 for r in rows)
    base_picos = _baseline_picos(conn, job_id, base_model, groups) if base_model is not None else None
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
        "cache": cache_section(conn, job_id, groups),
        "prompt_cache": prompt_cache_section(conn, job_id, catalog, groups),
        "by_channel": by_channel(conn, job_id, catalog, groups),
        "quality": quality_summary(conn, job),  # quality-floor: the policy, agreement, expected vs actual cost
    }


def attempt_lines(conn: Connection, job_id: str) -> Iterator[dict[str, Any]]:
    """Every ledger row of the job (report --attempts): the audit trail down to each call."""
    for r in repo.iter_attempt_rows(conn, job_id):
        d = dict(r)
        d["cost_usd"] = usd_json(d["cost_picos"])
        d["reserved_usd"] = usd_json(d["reserved_picos"])
        yield d
