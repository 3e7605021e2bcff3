"""What the channels cost: the report's `by_channel` (with the saving against the same tokens online), the
estimate's expected cost per channel, and each task's channel for result lines."""

from __future__ import annotations

import math
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from . import channels
from .catalog import Catalog
from .catalog.pricing import price
from .errors import PricingError
from .models import Usage
from .money import usd_json
from .store.reads import TOKENS, LedgerGroup, ledger_groups
from .store.schema import AttemptStatus, attempts


def task_channels(conn: Connection, job_id: str) -> dict[int, str]:
    """seq -> channel of the attempt that answered the task, for tasks not answered online (few rows kept)."""
    rows = conn.execute(
        select(attempts.c.task_seq, attempts.c.channel).where(
            attempts.c.job_id == job_id,
            attempts.c.status == AttemptStatus.succeeded,
            attempts.c.channel.not_in(("sync", channels.ONLINE)),
        )
    ).all()
    return {seq: channels.canonical(ch) for seq, ch in rows}


def by_channel(
    conn: Connection, job_id: str, catalog: Catalog, groups: list[LedgerGroup] | None = None
) -> list[dict[str, Any]]:
    """Per channel: tasks answered, attempts, cost, and saved = what the same tokens cost online minus what
    they cost (0 for online). `groups`: the job's ledger groups, if the caller read them already."""
    if groups is None:
        groups = ledger_groups(conn, job_id)
    # Per raw (channel, provider, model), every status together: the unit the saving is priced on.
    per: dict[tuple[str, str, str], dict[str, Any]] = {}
    for g in groups:
        r = per.setdefault(
            (g.channel, g.provider, g.model), {"tasks": 0, "attempts": 0, "cost": 0, **{k: 0 for k in TOKENS}}
        )
        r["tasks"] += g.first_on_channel
        r["attempts"] += g.attempts
        r["cost"] += g.cost_picos
        for k in TOKENS:
            r[k] += g.tokens[k]
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"tasks": 0, "attempts": 0, "cost_picos": 0, "saved_picos": 0})
    for (channel, provider, model_name), r in sorted(per.items()):
        ch = channels.canonical(channel)
        row = out[ch]
        row["tasks"] += r["tasks"]
        row["attempts"] += r["attempts"]
        row["cost_picos"] += int(r["cost"])
        if ch != channels.ONLINE and r["cost"]:
            model = catalog.find(f"{provider}/{model_name}")
            usage = Usage(**{k: int(r[k]) for k in TOKENS})
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


class ChannelEstimate:
    """Expected cost of the planned tasks per channel: each task on its cheapest candidate that offers the
    channel, at the channel's price (online when none offers it). Fed one routing decision at a time."""

    CHANNELS = (channels.ONLINE, channels.FLEX, channels.BATCH)

    def __init__(self) -> None:
        self.totals = {ch: Decimal(0) for ch in self.CHANNELS}
        self.served = {ch: 0 for ch in self.CHANNELS}

    def add(self, candidates) -> None:
        if not candidates:
            return
        for ch in self.CHANNELS:
            offered = [c for c in candidates if channels.supports(c.model, ch)]
            if offered:
                best = min(offered, key=lambda c: c.estimated_picos * channels.discount(c.model, ch))
                self.totals[ch] += best.estimated_picos * channels.discount(best.model, ch)
                self.served[ch] += 1
            else:
                self.totals[ch] += candidates[0].estimated_picos

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"channel": ch, "tasks": self.served[ch], "estimated_usd": usd_json(math.ceil(self.totals[ch]))}
            for ch in self.CHANNELS
        ]
