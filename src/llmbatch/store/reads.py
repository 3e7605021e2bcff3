"""The ledger's aggregates for `report`, in one pass over a job's ledger rows (issue 14: a report of a
million-task job in seconds).

`ledger_groups` reads every attempt of the job once, grouped by (status, provider, model, channel): the
index ix_attempts_job_status_model (migration 0013) hands the rows over in that order, so neither store sorts
a million rows to group them. Everything the report derives from the ledger comes from these few groups:
by model, by channel, the response and prompt caches, the baseline, the unsettled and unpriced counts. Every
figure is an exact integer sum, equal to the per-section queries it replaced (tests/integration/
test_report_reads.py compares them on a ledger with retries, escalations, refusals and every channel).

Two figures are not plain sums:
- distinct tasks per model (and per model and channel): an attempt counts once for its task unless an
  earlier attempt of the same task (lower attempt_no) was on the same model (and channel). Only attempts after
  a task's first need that look-up (one probe of the (job_id, task_seq, attempt_no) key each).
- sums over the rows with input_tokens > 0 (the prompt cache's calls): the group's sums minus those of its rows
  with input_tokens <= 0, which FILTER picks out cheaply because they are few.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import Connection, and_, case, exists, func, literal, select

from .schema import AttemptStatus, TaskStatus, attempts, tasks

TOKENS = ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


@dataclass
class LedgerGroup:
    """The ledger rows of one job with one (status, provider, model, channel): counts and exact sums."""

    status: str
    provider: str
    model: str
    channel: str
    attempts: int
    first_on_model: int  # attempts that are their task's first on this provider/model
    first_on_channel: int  # ... on this provider/model and channel
    tokens: dict[str, int]
    cost_picos: int
    saved_picos: int
    unsettled: int
    held_picos: int  # reserved_picos of the unsettled attempts
    unpriced: int
    calls: int  # attempts with input_tokens > 0 (the prompt cache's calls)
    hits: int  # ... that read cached tokens
    call_tokens: dict[str, int]  # token sums of those calls
    # Baseline tiers (tier k >= 1: the baseline model's k-th long-context tier): (attempts, token sums)
    tiers: dict[int, tuple[int, dict[str, int]]] = field(default_factory=dict)


def _int(v: Any) -> int:
    return int(v or 0)  # Postgres sums bigints as numeric (Decimal); an empty FILTER sums to NULL


def tier_of(thresholds: Sequence[int]):
    """The baseline model's tier of an attempt, as SQL: the highest k whose threshold its input exceeds
    (0: none). `thresholds` ascending, as the catalog keeps them."""
    return case(
        *[(attempts.c.input_tokens > t, k + 1) for k, t in reversed(list(enumerate(thresholds)))],
        else_=0,
    )


def ledger_groups(conn: Connection, job_id: str, tiers: Sequence[int] = ()) -> list[LedgerGroup]:
    """Every ledger row of the job, read once, as groups (status, provider, model, channel), sorted.
    `tiers`: the baseline model's long-context thresholds, whose attempts are summed apart."""
    a = attempts.c
    b = attempts.alias("earlier")
    earlier = and_(
        b.c.job_id == a.job_id,
        b.c.task_seq == a.task_seq,
        b.c.attempt_no < a.attempt_no,
        b.c.provider == a.provider,
        b.c.model == a.model,
    )
    later = a.attempt_no > 1
    low = a.input_tokens <= 0
    unsettled = a.settled.is_(False)
    cols: list[Any] = [
        a.status,
        a.provider,
        a.model,
        a.channel,
        func.count().label("attempts"),
        func.count().filter(and_(later, exists().where(earlier))).label("dup_model"),
        func.count().filter(and_(later, exists().where(earlier, b.c.channel == a.channel))).label("dup_channel"),
        *(func.sum(getattr(a, k)).label(k) for k in TOKENS),
        func.sum(a.cost_picos).label("cost_picos"),
        func.sum(a.saved_picos).filter(a.saved_picos != 0).label("saved_picos"),
        func.count().filter(unsettled).label("unsettled"),
        func.sum(a.reserved_picos).filter(unsettled).label("held_picos"),
        func.count().filter(a.cost_source == "unpriced").label("unpriced"),
        func.count().filter(low).label("low"),
        *(func.sum(getattr(a, k)).filter(low).label(f"low_{k}") for k in TOKENS),
        func.count().filter(and_(a.cached_tokens > 0, a.input_tokens > 0)).label("hits"),
    ]
    tier = tier_of(tiers)
    for k in range(1, len(tiers) + 1):
        in_tier = and_(a.input_tokens > tiers[0], tier == k)
        cols.append(func.count().filter(in_tier).label(f"t{k}_n"))
        cols += [func.sum(getattr(a, t)).filter(in_tier).label(f"t{k}_{t}") for t in TOKENS]
    q = select(*cols).where(a.job_id == job_id).group_by(a.status, a.provider, a.model, a.channel)
    if conn.dialect.name == "postgresql":
        # The planner prices the earlier-attempt probes for every row (only later attempts make them) and
        # would spend ~0.5 s compiling the query (JIT) to save less than that; for this transaction only.
        conn.exec_driver_sql("SET LOCAL jit = off")
    out = []
    for r in conn.execute(q).mappings():
        n = int(r["attempts"])
        tokens = {k: _int(r[k]) for k in TOKENS}
        out.append(
            LedgerGroup(
                status=r["status"],
                provider=r["provider"],
                model=r["model"],
                channel=r["channel"],
                attempts=n,
                first_on_model=n - int(r["dup_model"]),
                first_on_channel=n - int(r["dup_channel"]),
                tokens=tokens,
                cost_picos=_int(r["cost_picos"]),
                saved_picos=_int(r["saved_picos"]),
                unsettled=int(r["unsettled"]),
                held_picos=_int(r["held_picos"]),
                unpriced=int(r["unpriced"]),
                calls=n - int(r["low"]),
                hits=int(r["hits"]),
                call_tokens={k: tokens[k] - _int(r[f"low_{k}"]) for k in TOKENS},
                tiers={
                    k: (int(r[f"t{k}_n"]), {t: _int(r[f"t{k}_{t}"]) for t in TOKENS}) for k in range(1, len(tiers) + 1)
                },
            )
        )
    out.sort(key=lambda g: (g.status, g.provider, g.model, g.channel))
    return out


def by_model(groups: list[LedgerGroup]) -> list[dict[str, Any]]:
    """The ledger per provider/model (repo.by_model's rows), most expensive first."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for g in groups:
        r = rows.get((g.provider, g.model))
        if r is None:
            r = rows[(g.provider, g.model)] = {
                "provider": g.provider,
                "model": g.model,
                "tasks": 0,
                "attempts": 0,
                "succeeded_attempts": 0,
                **{k: 0 for k in TOKENS},
                "cost_picos": 0,
                "held_picos": 0,
                "unsettled_attempts": 0,
                "unpriced_attempts": 0,
            }
        r["tasks"] += g.first_on_model
        r["attempts"] += g.attempts
        r["succeeded_attempts"] += g.attempts if g.status == AttemptStatus.succeeded else 0
        for k in TOKENS:
            r[k] += g.tokens[k]
        r["cost_picos"] += g.cost_picos
        r["held_picos"] += g.held_picos
        r["unsettled_attempts"] += g.unsettled
        r["unpriced_attempts"] += g.unpriced
    return sorted(rows.values(), key=lambda r: (-r["cost_picos"], r["provider"], r["model"]))


def succeeded_by_tier(groups: list[LedgerGroup], n_tiers: int) -> dict[int, tuple[int, dict[str, int]]]:
    """Succeeded attempts per baseline tier: (attempts, token sums); tier 0 is what the higher tiers leave."""
    out = {k: (0, {t: 0 for t in TOKENS}) for k in range(n_tiers + 1)}
    for g in groups:
        if g.status != AttemptStatus.succeeded:
            continue
        left_n, left = g.attempts, dict(g.tokens)
        for k, (n, toks) in g.tiers.items():
            out[k] = (out[k][0] + n, {t: out[k][1][t] + toks[t] for t in TOKENS})
            left_n -= n
            left = {t: left[t] - toks[t] for t in TOKENS}
        out[0] = (out[0][0] + left_n, {t: out[0][1][t] + left[t] for t in TOKENS})
    return out


def succeeded_attempts_of_unsucceeded_tasks(
    conn: Connection, job_id: str, tiers: Sequence[int] = ()
) -> dict[int, tuple[int, dict[str, int]]]:
    """Succeeded attempts of the tasks that did not succeed (a later attempt failed validation, the task was
    cancelled or requeued...), per baseline tier: the baseline leaves them out. Read from the tasks not
    succeeded ((job_id, status) index), each joined to its attempts by key: a LEFT JOIN, so that no planner
    starts from the million succeeded attempts instead (SQLite did); a task without one adds a NULL row,
    which neither the count nor the sums see."""
    tier = tier_of(tiers) if tiers else literal(0)
    q = (
        select(
            tier.label("tier"),
            func.count(attempts.c.id).label("n"),
            *(func.sum(getattr(attempts.c, k)).label(k) for k in TOKENS),
        )
        .select_from(
            tasks.join(
                attempts,
                and_(
                    attempts.c.job_id == tasks.c.job_id,
                    attempts.c.task_seq == tasks.c.seq,
                    attempts.c.status == AttemptStatus.succeeded,
                ),
                isouter=True,
            )
        )
        .where(tasks.c.job_id == job_id, tasks.c.status.in_([s for s in TaskStatus.all if s != TaskStatus.succeeded]))
    )
    if tiers:
        q = q.group_by(tier)
    rows = conn.execute(q).mappings().all()
    return {int(r["tier"]): (int(r["n"]), {k: _int(r[k]) for k in TOKENS}) for r in rows if r["n"]}
