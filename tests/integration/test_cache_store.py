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
        assert gone == 7 and left == {"e6", "e7", "e8", "e9"}
        assert c.execute(select(func.count()).select_from(response_cache)).scalar() == 4


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
