"""The spend audit (`llmbatch report`) and the per-attempt ledger export.

Every number in the report is a SQL aggregate over the ledger (attempts), so the report reconciles to the
job totals by construction; `check_reconciliation` verifies it anyway and the report shows the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from sqlalchemy import Connection, func, select

from ..errors import CatalogError
from ..money import usd_json
from ..store import job_counts, reads, repo
from ..store.schema import attempts, tasks

if TYPE_CHECKING:  # the catalog and pydantic models load only for a report (status starts without them)
    from ..catalog import Catalog, ModelInfo


def _baseline_picos(conn: Connection, job_id: str, model: ModelInfo, groups: list[reads.LedgerGroup]) -> int:
    """What the FINAL attempts of the SUCCEEDED tasks would have cost on the baseline model: one request each,
    as if sent there directly. Failed, retried and escalated attempts are not counted (the baseline would
    have been billed once per finished request). Summed per long-context tier of the baseline model, so the
    price is exact: price() is linear within a tier. The succeeded attempts come from the ledger groups
    (read once); those of tasks that did not succeed are read apart (few) and taken off."""
    from ..catalog.pricing import cost_at
    from ..models import Usage

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
    from ..cache.report import cache_section, prompt_cache_section
    from ..channel_report import by_channel  # discount channels
    from ..quality.report import quality_summary

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
