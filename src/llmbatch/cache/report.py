"""What `report` and `results` show about the caches, as SQL aggregates over the ledger.

- cache: tasks answered from the response cache (their $0 attempts on channel `cache`) and what they saved
  (the original attempts' costs, copied into the ledger when served).
- prompt_cache: the provider prompt cache seen in the calls' usage: cached (read) and cache-write tokens,
  the hit rate (calls that read a cached prefix / calls), and the money it saved (the same usage priced
  as if nothing were cached, minus its price; write premiums included, so the figure is net).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from ..catalog import Catalog
from ..catalog.pricing import price
from ..errors import CatalogError, PricingError
from ..models import Usage
from ..money import usd_json
from ..store.reads import TOKENS, LedgerGroup, ledger_groups
from ..store.schema import AttemptStatus, attempts

CACHE_CHANNEL = "cache"


def cache_seqs(conn: Connection, job_id: str) -> set[int]:
    """Seqs of the job's tasks answered from the response cache."""
    rows = conn.execute(
        select(attempts.c.task_seq).where(
            attempts.c.job_id == job_id,
            attempts.c.channel == CACHE_CHANNEL,
            attempts.c.status == AttemptStatus.succeeded,
        )
    ).all()
    return {r.task_seq for r in rows}


def cache_section(conn: Connection, job_id: str, groups: list[LedgerGroup] | None = None) -> dict[str, Any]:
    """`groups`: the job's ledger groups (store/reads.py), if the caller read them already."""
    if groups is None:
        groups = ledger_groups(conn, job_id)
    hits = saved = 0
    for g in groups:
        if g.channel == CACHE_CHANNEL and g.status == AttemptStatus.succeeded:
            hits, saved = hits + g.attempts, saved + g.saved_picos
    return {"hits": hits, "saved_usd": usd_json(saved), "saved_picos": saved}


def prompt_cache_section(
    conn: Connection, job_id: str, catalog: Catalog, groups: list[LedgerGroup] | None = None
) -> dict[str, Any]:
    """The calls (attempts with input tokens, not answered from the response cache) per provider/model."""
    if groups is None:
        groups = ledger_groups(conn, job_id)
    per: dict[tuple[str, str], dict[str, int]] = {}
    for g in groups:
        if g.channel == CACHE_CHANNEL or not g.calls:
            continue
        r = per.setdefault((g.provider, g.model), {"calls": 0, "hits": 0, **{k: 0 for k in TOKENS}})
        r["calls"] += g.calls
        r["hits"] += g.hits
        for k in TOKENS:
            r[k] += g.call_tokens[k]
    rows: list[dict[str, Any]] = [{"provider": p, "model": m, **r} for (p, m), r in sorted(per.items())]
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
