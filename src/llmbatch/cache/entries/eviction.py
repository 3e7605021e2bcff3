"""Keeping the response cache within its bound: answers past the TTL go, then, when the table holds more
than cache_max_entries, the oldest; counting the table only when the caller's estimate says it may be over
(a count is a full scan).
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, func, select

from ...store.schema import response_cache
from ._table import _is_claim


def low_water(max_entries: int) -> int:
    """The size an over-full cache is cut back to: 90 % of its bound, so the next exact count (a full scan of
    the table or an index) is needed only after a tenth of the bound has been stored again."""
    return max_entries - max_entries // 10


def evict(
    conn: Connection, *, max_entries: int, ttl_s: float, now: float | None = None, known_count: int | None = None
) -> tuple[int, int]:
    """Drop answers past the TTL; then, when the cache holds more than `max_entries`, the oldest down to
    low_water(max_entries). Returns (entries removed, entries left).

    `known_count` is the caller's upper bound of the cache's size (its last exact count plus what it stored
    since). While that is within the bound, neither the count nor the sweep of stale claims runs: each is a
    full scan, ~0.3 s at a million entries on SQLite, and every EVICT_EVERY answers would pay it (the hook
    runs them every RECOUNT_EVERY passes instead, see hook.py). None: count now and sweep."""
    now = now if now is not None else time.time()
    # created_at is indexed: a range delete. A claim's created_at is its claim time, so stale claims older
    # than the TTL go here too; the younger ones a dead worker left go with the sweep below.
    gone = conn.execute(delete(response_cache).where(response_cache.c.created_at < now - ttl_s)).rowcount
    if known_count is not None and known_count - gone <= max_entries:
        return gone, max(0, known_count - gone)
    gone_claims = conn.execute(
        delete(response_cache).where(_is_claim(), response_cache.c.claim_expires_at < now - 3600)
    ).rowcount
    gone += gone_claims
    count = int(conn.execute(select(func.count()).select_from(response_cache)).scalar() or 0)
    if count > max_entries:
        over = count - low_water(max_entries)
        oldest = select(response_cache.c.key).order_by(response_cache.c.created_at).limit(over).scalar_subquery()
        cut = conn.execute(delete(response_cache).where(response_cache.c.key.in_(oldest))).rowcount
        gone, count = gone + cut, count - cut
    return gone, count
