"""The report's ledger figures as the per-section queries computed them before store/reads.py (issue 14): the
reference the one-pass report must equal, figure for figure (test_report_reads.py, test_report_audit.py).
Kept as written then: five scans of the ledger and a join, slow at a million rows, obviously right."""

# ruff: noqa: E501
from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from llmbatch import channels
from llmbatch.catalog import Catalog
from llmbatch.catalog.pricing import price
from llmbatch.errors import CatalogError, PricingError
from llmbatch.models import Usage
from llmbatch.money import usd_json
from llmbatch.store.schema import AttemptStatus, TaskStatus, attempts, tasks

CACHE_CHANNEL = "cache"


def by_model(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    """Ledger aggregated per provider/model: attempts (failed ones included), tasks touched, tokens, cost."""
    succeeded = func.sum(case((attempts.c.status == AttemptStatus.succeeded, 1), else_=0))
    rows = (
        conn.execute(
            select(
                attempts.c.provider,
                attempts.c.model,
                func.count(func.distinct(attempts.c.task_seq)).label("tasks"),
                func.count().label("attempts"),
                succeeded.label("succeeded_attempts"),
                func.sum(attempts.c.input_tokens).label("input_tokens"),
                func.sum(attempts.c.cached_tokens).label("cached_tokens"),
                func.sum(attempts.c.cache_write_tokens).label("cache_write_tokens"),
                func.sum(attempts.c.output_tokens).label("output_tokens"),
                func.sum(attempts.c.reasoning_tokens).label("reasoning_tokens"),
                func.sum(attempts.c.cost_picos).label("cost_picos"),
                func.sum(attempts.c.reserved_picos * case((attempts.c.settled.is_(False), 1), else_=0)).label(
                    "held_picos"
                ),
                # The report's other ledger figures, from this one scan (a million-row ledger is read once).
                func.sum(case((attempts.c.settled.is_(False), 1), else_=0)).label("unsettled_attempts"),
                func.sum(case((attempts.c.cost_source == "unpriced", 1), else_=0)).label("unpriced_attempts"),
            )
            .where(attempts.c.job_id == job_id)
            .group_by(attempts.c.provider, attempts.c.model)
            .order_by(func.sum(attempts.c.cost_picos).desc())
        )
        .mappings()
        .all()
    )
    # Postgres returns SUM(bigint) as numeric (Decimal), SQLite as int: every aggregate leaves here as int.
    return [{k: (v if k in ("provider", "model") or v is None else int(v)) for k, v in r.items()} for r in rows]


def _baseline_picos(conn: Connection, job_id: str, catalog: Catalog, baseline: str) -> tuple[int | None, str | None]:
    """What the FINAL attempts of the SUCCEEDED tasks would have cost on the baseline model: one request each,
    as if sent there directly. Failed, retried and escalated attempts are not counted (the baseline would
    have been billed once per finished request). Summed per long-context tier of the baseline model, so the
    price is exact: price() is linear within a tier."""
    from llmbatch.catalog.pricing import cost_at
    from llmbatch.models import Usage

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


def by_channel(conn: Connection, job_id: str, catalog: Catalog) -> list[dict[str, Any]]:
    """Per channel: tasks answered, attempts, cost, and saved = what the same tokens cost online minus what
    they cost (0 for online)."""
    q = (
        select(
            attempts.c.channel,
            attempts.c.provider,
            attempts.c.model,
            func.count().label("attempts"),
            func.count(func.distinct(attempts.c.task_seq)).label("tasks"),
            func.coalesce(func.sum(attempts.c.cost_picos), 0).label("cost"),
            *(
                func.coalesce(func.sum(getattr(attempts.c, k)), 0).label(k)
                for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
            ),
        )
        .where(attempts.c.job_id == job_id)
        .group_by(attempts.c.channel, attempts.c.provider, attempts.c.model)
    )
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"tasks": 0, "attempts": 0, "cost_picos": 0, "saved_picos": 0})
    for r in conn.execute(q).mappings():
        ch = channels.canonical(r["channel"])
        row = out[ch]
        row["tasks"] += r["tasks"]
        row["attempts"] += r["attempts"]
        row["cost_picos"] += int(r["cost"])
        if ch != channels.ONLINE and r["cost"]:
            model = catalog.find(f"{r['provider']}/{r['model']}")
            usage = Usage(
                **{
                    k: int(r[k])
                    for k in (
                        "input_tokens",
                        "cached_tokens",
                        "cache_write_tokens",
                        "output_tokens",
                        "reasoning_tokens",
                    )
                }
            )
            try:
                online = price(usage, model).picos if model is not None else None
            except PricingError:
                online = None
            if online is not None:
                row["saved_picos"] += max(0, online - int(r["cost"]))
    order = {c: i for i, c in enumerate(channels.CHANNELS)}
    return [
        {
            "channel": ch,
            "tasks": v["tasks"],
            "attempts": v["attempts"],
            "cost_usd": usd_json(v["cost_picos"]),
            "cost_picos": v["cost_picos"],
            "saved_usd": usd_json(v["saved_picos"]),
        }
        for ch, v in sorted(out.items(), key=lambda kv: order.get(kv[0], 99))
    ]


def cache_section(conn: Connection, job_id: str) -> dict[str, Any]:
    row = conn.execute(
        select(func.count().label("hits"), func.coalesce(func.sum(attempts.c.saved_picos), 0).label("saved")).where(
            attempts.c.job_id == job_id,
            attempts.c.channel == CACHE_CHANNEL,
            attempts.c.status == AttemptStatus.succeeded,
        )
    ).one()
    return {"hits": int(row.hits), "saved_usd": usd_json(int(row.saved)), "saved_picos": int(row.saved)}


def prompt_cache_section(conn: Connection, job_id: str, catalog: Catalog) -> dict[str, Any]:
    rows = (
        conn.execute(
            select(
                attempts.c.provider,
                attempts.c.model,
                func.count().label("calls"),
                func.sum(case((attempts.c.cached_tokens > 0, 1), else_=0)).label("hits"),
                func.sum(attempts.c.input_tokens).label("input_tokens"),
                func.sum(attempts.c.cached_tokens).label("cached_tokens"),
                func.sum(attempts.c.cache_write_tokens).label("cache_write_tokens"),
                func.sum(attempts.c.output_tokens).label("output_tokens"),
                func.sum(attempts.c.reasoning_tokens).label("reasoning_tokens"),
            )
            .where(attempts.c.job_id == job_id, attempts.c.channel != CACHE_CHANNEL, attempts.c.input_tokens > 0)
            .group_by(attempts.c.provider, attempts.c.model)
        )
        .mappings()
        .all()
    )
    calls = hits = cached = written = inputs = 0
    saved = input_cost = 0
    errors: list[str] = []
    for r in rows:
        n = {
            k: int(r[k] or 0)
            for k in (
                "calls",
                "hits",
                "input_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
            )
        }
        calls, hits, inputs = calls + n["calls"], hits + n["hits"], inputs + n["input_tokens"]
        cached, written = cached + n["cached_tokens"], written + n["cache_write_tokens"]
        actual = Usage(
            input_tokens=n["input_tokens"],
            cached_tokens=n["cached_tokens"],
            cache_write_tokens=n["cache_write_tokens"],
            output_tokens=n["output_tokens"],
            reasoning_tokens=n["reasoning_tokens"],
        )
        try:
            model = catalog.get(f"{r['provider']}/{r['model']}")
            paid = price(actual, model)
            plain = price(actual.model_copy(update={"cached_tokens": 0, "cache_write_tokens": 0}), model)
        except (CatalogError, PricingError) as e:
            errors.append(str(e))
            continue
        saved += plain.picos - paid.picos
        input_cost += paid.uncached_input_picos + paid.cached_input_picos + paid.cache_write_picos
    return {
        "calls": calls,
        "hits": hits,
        "hit_rate": round(hits / calls, 4) if calls else None,
        "input_tokens": inputs,
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "saved_usd": usd_json(saved),
        "saved_picos": saved,
        "input_cost_usd": usd_json(input_cost),
        "errors": errors,
    }


def reference_report(conn: Connection, job_id: str, catalog: Catalog, baseline_model: str) -> dict[str, Any]:
    """The ledger-derived part of the report, as build_report() computed it before the one-pass read."""
    rows = by_model(conn, job_id)
    base_picos, base_err = _baseline_picos(conn, job_id, catalog, baseline_model)
    return {
        "by_model": rows,
        "ledger_picos": sum(r["cost_picos"] or 0 for r in rows),
        "unsettled_attempts": sum(r["unsettled_attempts"] or 0 for r in rows),
        "baseline_picos": base_picos,
        "baseline_error": base_err,
        "cache": cache_section(conn, job_id),
        "prompt_cache": prompt_cache_section(conn, job_id, catalog),
        "by_channel": by_channel(conn, job_id, catalog),
    }
