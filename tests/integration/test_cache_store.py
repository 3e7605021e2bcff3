"""Issue 15: the response_cache table's rules (claims, answers, TTL, invalid verdicts, eviction) on SQLite and
on a real Postgres."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from llmbatch.cache import entries
from llmbatch.store.schema import response_cache


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    from llmbatch.store.db import get_engine

    if request.param == "sqlite":
        return get_engine(f"sqlite:///{tmp_path / 'c.db'}")
    url = request.getfixturevalue("fresh_postgres_url")
    return get_engine(url)


def _claim(conn, key, worker="w1", now=None, ttl=100.0):
    return entries.claim_or_get(
        conn, key, scope=None, provider="p", model="m", worker=worker, ttl_s=ttl, claim_s=30.0, now=now
    )


def _put(conn, key, output="x", now=None):
    return entries.put(
        conn, key, scope=None, provider="p", model="m", output=output, usage=None, job_id="j", attempt_id=0, now=now
    )


def test_claims_answers_ttl_and_invalid_verdicts(store):
    now = time.time()
    with store.begin() as c:
        assert _claim(c, "k1", now=now) == (entries.LEAD, None)
        assert _claim(c, "k1", worker="w2", now=now) == (entries.WAIT, "w1")
        assert _claim(c, "k1", worker="w2", now=now + 31)[0] == entries.LEAD  # the claim expired
        _put(c, "k1", output={"a": 1}, now=now)
        verdict, entry = _claim(c, "k1", worker="w3", now=now + 50)
        assert verdict == entries.HIT and entry.output == {"a": 1}
        assert _claim(c, "k1", worker="w3", now=now + 101)[0] == entries.LEAD  # past the TTL: a miss
        # An answer that failed validation is a verdict, never an answer; it never replaces an answer.
        entries.put_invalid(c, "k2", scope=None, provider="p", model="m", error="not a label", job_id="j", now=now)
        assert _claim(c, "k2", now=now) == (entries.INVALID, "not a label")
        _put(c, "k3", now=now)
        entries.put_invalid(c, "k3", scope=None, provider="p", model="m", error="bad", job_id="j", now=now)
        assert _claim(c, "k3", now=now)[0] == entries.HIT
        # A released claim frees the key for the next worker.
        assert _claim(c, "k4", now=now)[0] == entries.LEAD
        entries.release(c, "k4", worker="w1")
        assert _claim(c, "k4", worker="w2", now=now)[0] == entries.LEAD


def test_eviction_is_oldest_first_within_the_size_bound(store):
    now = time.time()
    with store.begin() as c:
        for i in range(10):
            _put(c, f"e{i}", now=now - 100 + i)
        _put(c, "old", now=now - 10_000)
        gone = entries.evict(c, max_entries=4, ttl_s=5_000, now=now)
        left = {r.key for r in c.execute(select(response_cache.c.key))}
        assert gone == (7, 4) and left == {"e6", "e7", "e8", "e9"}
        assert c.execute(select(func.count()).select_from(response_cache)).scalar() == 4


def test_an_over_full_cache_is_cut_to_its_low_water_mark_and_a_known_size_skips_the_count(store):
    now = time.time()
    with store.begin() as c:
        for i in range(25):
            _put(c, f"e{i:02d}", now=now - 100 + i)
        _put(c, "old", now=now - 10_000)  # past the TTL
        # A size the caller knows to be within the bound: only the TTL pass runs (no count, no size cut).
        assert entries.evict(c, max_entries=30, ttl_s=5_000, now=now, known_count=26) == (1, 25)
        assert c.execute(select(func.count()).select_from(response_cache)).scalar() == 25
        # A known size over the bound counts exactly and cuts the oldest down to 90 % of it.
        assert entries.low_water(20) == 18
        assert entries.evict(c, max_entries=20, ttl_s=5_000, now=now, known_count=25) == (7, 18)
        left = sorted(r.key for r in c.execute(select(response_cache.c.key)))
        assert left == [f"e{i:02d}" for i in range(7, 25)]
        # A claim a dead worker left long ago goes with the exact pass, not with the TTL pass.
        assert _claim(c, "stale", now=now - 4_000)[0] == entries.LEAD  # expired at now - 3,970
        assert entries.evict(c, max_entries=20, ttl_s=5_000, now=now, known_count=18) == (0, 18)
        assert entries.evict(c, max_entries=20, ttl_s=5_000, now=now) == (1, 18)


def test_put_many_stores_what_put_stores(store):
    """The hook writes a wave's answers with put_many: the same rows (claims replaced, costs copied from the
    attempts) and the same entries as one put each."""
    now = time.time()
    items = [
        {
            "key": f"m{i}",
            "scope": None,
            "provider": "p",
            "model": "m",
            "output": {"i": i},
            "usage": None,
            "job_id": "j",
            "attempt_id": 0,
        }
        for i in range(3)
    ]
    with store.begin() as c:
        assert _claim(c, "m1", now=now)[0] == entries.LEAD  # a claim marker, replaced by the answer
        got = entries.put_many(c, items, now=now)
        single = _put(c, "one", output={"i": 0}, now=now)
        assert [(e.key, e.output, e.cost_picos) for e in got] == [(f"m{i}", {"i": i}, 0) for i in range(3)]
        assert single.cost_picos == got[0].cost_picos
        for i in range(3):
            verdict, entry = _claim(c, f"m{i}", worker="w2", now=now + 1)
            assert verdict == entries.HIT and entry.output == {"i": i}
        assert entries.put_many(c, []) == []


def test_put_many_copies_each_cost_and_keeps_the_last_answer_of_a_repeated_key(store):
    from llmbatch.store import ledger, repo
    from tests.support.cli import make_store_job

    job = make_store_job(store, 2, None)
    repo.claim_tasks(store, job, 0, 1, worker="w1", lease_s=300, max_deliveries=5)
    ids = []
    for seq, cost in ((0, 123), (1, 4_560_000_000_000_000_001)):
        kw = dict(provider="p", model="m", amount_picos=cost, purpose="first", worker="w1")
        ids.append(ledger.reserve(store, job_id=job, task_seq=seq, task_id=f"t{seq}", **kw))
        ledger.settle(
            store, ledger.Settlement(attempt_id=ids[-1], status="succeeded", cost_picos=cost, cost_source="usage")
        )
    item = {"scope": "s", "provider": "p", "model": "m", "usage": {"input_tokens": 3}, "job_id": job}
    items = [
        {**item, "key": "a", "output": {"n": 1}, "attempt_id": ids[0]},
        {**item, "key": "b", "output": 'quote " back\\slash é 😀', "attempt_id": ids[1]},
        {**item, "key": "a", "output": {"n": 3}, "attempt_id": ids[1]},  # the same key again: this answer stays
    ]
    with store.begin() as c:
        got = entries.put_many(c, items)
        assert (got[1].key, got[1].output, got[1].cost_picos) == ("b", items[1]["output"], 4_560_000_000_000_000_001)
        row = c.execute(select(response_cache).where(response_cache.c.key == "a")).mappings().one()
        assert (row["output"], row["cost_picos"], row["attempt_id"]) == ('{"n":3}', 4_560_000_000_000_000_001, ids[1])
        assert (row["scope"], row["usage"], row["claimed_by"]) == ("s", '{"input_tokens":3}', None)
        assert _claim(c, "b", now=time.time())[1].output == items[1]["output"]


def _prepare(conn, now):
    """Keys in every state: an answer, an invalid verdict, a live claim of w2, an expired claim of w2."""
    _put(conn, "hit", output={"a": 1}, now=now)
    entries.put_invalid(conn, "bad", scope=None, provider="p", model="m", error="nope", job_id="j", now=now)
    _claim(conn, "live", worker="w2", now=now)
    _claim(conn, "stale", worker="w2", now=now - 60)


CLAIMS = ["new1", "hit", "new2", "bad", "live", "new1", "stale", "new3"]  # new1 twice: the second sees the first


def _rows(conn):
    cols = [response_cache.c[n] for n in ("key", "output", "invalid_error", "claimed_by", "claim_expires_at")]
    return [tuple(r) for r in conn.execute(select(*cols).order_by(response_cache.c.key))]


def test_the_set_form_of_a_claim_decides_and_writes_as_the_single_form(store):
    now = time.time()
    items = [entries.ClaimItem(k, None, "p", "m", "w1", 100.0, 30.0, now) for k in CLAIMS]
    with store.begin() as c:
        _prepare(c, now)
        one_by_one = [_claim(c, k, now=now) for k in CLAIMS]
        single_rows = _rows(c)
        c.rollback()
    with store.begin() as c:
        _prepare(c, now)
        together = entries.claim_or_get_many(c, items)
        assert _rows(c) == single_rows
    assert together == one_by_one
    assert [v for v, _ in together] == ["lead", "hit", "lead", "invalid", "wait", "lead", "lead", "lead"]


def test_the_postgres_store_claims_a_batch_of_new_keys_in_one_statement(fresh_postgres_url):
    import asyncio

    from sqlalchemy import event

    from llmbatch.store.aio import AsyncStore
    from llmbatch.store.db import get_engine

    engine = get_engine(fresh_postgres_url)
    inserts: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO RESPONSE_CACHE"):
            inserts.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    store = AsyncStore(fresh_postgres_url, threads=1)

    async def claim_all():
        calls = [
            store.write(
                entries.claim_or_get,
                f"k{i}",
                scope=None,
                provider="p",
                model="m",
                worker="w1",
                ttl_s=100.0,
                claim_s=30.0,
            )
            for i in range(40)
        ]
        return await asyncio.gather(*calls)

    try:
        got = asyncio.run(claim_all())
    finally:
        store.close()
        event.remove(engine, "before_cursor_execute", count)
    assert got == [(entries.LEAD, None)] * 40
    assert len(inserts) < 10  # one per batch, not one per key
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(response_cache)).scalar() == 40
