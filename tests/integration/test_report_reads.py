"""The one-pass report (store/reads.py) equals the per-section queries it replaced, figure for figure, on SQLite
and Postgres, for a ledger holding every case those figures distinguish: retries on the same model, an
escalation to another model, the same model on two channels, a refusal, a succeeded attempt of a task that did
not succeed, an unsettled call, an unpriced one, a response-cache answer, a prompt-cache hit, a call without
input tokens, a long-context call on a tiered baseline, a model the catalog does not know."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert

from llmbatch.catalog import builtin_catalog
from llmbatch.money import usd_json
from llmbatch.reporting import build_report
from llmbatch.store import repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts, tasks
from tests.support.report_reference import reference_report

pytestmark = pytest.mark.integration

LLAMA, MINI, GPT4O = ("groq", "llama-3.1-8b-instant"), ("openai", "gpt-4.1-mini"), ("openai", "gpt-4o")
PRO, UNKNOWN = ("gemini", "gemini-2.5-pro"), ("local", "not-in-the-catalog")

# task seq -> (task status, [(model, channel, attempt status, settled, cost_source, input, cached, cache_write,
#                              output, reasoning, reserved, cost, saved)])
LEDGER = {
    0: (
        "succeeded",
        [
            (LLAMA, "sync", "failed", True, "none", 0, 0, 0, 0, 0, 40, 0, 0),  # 429, retried
            (LLAMA, "sync", "succeeded", True, "usage", 41, 0, 0, 9, 0, 40, 3, 0),
        ],
    ),
    1: (
        "succeeded",
        [
            (LLAMA, "online", "invalid_output", True, "usage", 41, 0, 0, 9, 0, 40, 3, 0),
            (MINI, "online", "succeeded", True, "usage", 41, 0, 0, 9, 0, 300, 22, 0),
        ],
    ),  # escalated
    2: (
        "succeeded",
        [
            (LLAMA, "batch", "failed", True, "usage", 41, 0, 0, 9, 0, 40, 2, 0),  # batch, then online
            (LLAMA, "online", "succeeded", True, "usage", 41, 0, 0, 9, 0, 40, 3, 0),
            (LLAMA, "batch", "succeeded", True, "usage", 43, 0, 0, 9, 0, 40, 2, 0),
        ],
    ),
    3: ("succeeded", [(MINI, "cache", "succeeded", True, "none", 41, 0, 0, 9, 0, 0, 0, 22)]),  # response cache
    4: (
        "failed",
        [
            (LLAMA, "online", "succeeded", True, "usage", 41, 0, 0, 9, 0, 40, 3, 0),  # not the task's end
            (MINI, "online", "invalid_output", True, "usage", 41, 0, 0, 9, 0, 300, 22, 0),
        ],
    ),
    5: ("running", [(MINI, "online", "in_flight", False, None, 0, 0, 0, 0, 0, 300, 0, 0)]),  # unsettled
    6: ("failed", [(UNKNOWN, "flex", "succeeded", True, "unpriced", 41, 0, 0, 9, 0, 0, 0, 0)]),
    7: ("succeeded", [(MINI, "flex", "succeeded", True, "usage", 0, 0, 0, 12, 3, 300, 9, 0)]),  # no input tokens
    8: ("succeeded", [(GPT4O, "online", "succeeded", True, "usage", 2048, 1024, 0, 50, 0, 9000, 4000, 0)]),
    9: ("failed", [(GPT4O, "online", "failed", True, "usage", 30, 0, 0, 5, 0, 9000, 120, 0)]),  # refusal, billed
    10: ("succeeded", [(PRO, "online", "succeeded", True, "usage", 250_000, 0, 0, 100, 20, 10**9, 6 * 10**8, 0)]),
    11: ("skipped", []),
    12: (
        "succeeded",
        [
            (PRO, "online", "unknown", True, "reservation", 0, 0, 0, 0, 0, 5000, 5000, 0),
            (PRO, "online", "succeeded", True, "usage", 1000, 500, 200, 100, 0, 5000, 700, 0),
        ],
    ),
}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _store_ledger(url: str) -> str:
    now = time.time()
    with get_engine(url).begin() as c:
        job_id = repo.create_job(
            c, name="ledger", spec={}, input_path=None, executor="local", simulate=True, budget_picos=None,
            max_cost_per_task_picos=None,
        )  # fmt: skip
        for seq, (status, rows) in LEDGER.items():
            c.execute(
                insert(tasks).values(
                    job_id=job_id, seq=seq, task_id=f"t-{seq}", line_no=seq + 1, task_type="summarize",
                    payload="{}", status=status, cost_picos=sum(r[11] for r in rows), attempts=len(rows),
                    escalations=sum(1 for r in rows if r[0] != rows[0][0]),
                )
            )  # fmt: skip
            for no, r in enumerate(rows, 1):
                (p, m), ch, st, settled, source, tin, tcached, tcw, tout, treason, reserved, cost, saved = r
                c.execute(
                    insert(attempts).values(
                        job_id=job_id, task_seq=seq, task_id=f"t-{seq}", attempt_no=no, provider=p, model=m,
                        channel=ch, status=st, settled=settled, cost_source=source,
                        pricing_error="no price" if source == "unpriced" else None, input_tokens=tin,
                        cached_tokens=tcached, cache_write_tokens=tcw, output_tokens=tout, reasoning_tokens=treason,
                        reserved_picos=reserved, cost_picos=cost, saved_picos=saved, overrun=cost > reserved,
                        started_at=now, finished_at=now,
                    )
                )  # fmt: skip
        repo.set_job_counts(c, job_id, total=len(LEDGER), invalid=0)
    return job_id


@pytest.mark.parametrize("baseline", ["gpt-4o", "gemini/gemini-2.5-pro", "no/such-model"])
def test_the_one_pass_report_equals_the_per_section_queries(store_url, baseline):
    job_id = _store_ledger(store_url)
    catalog = builtin_catalog()
    with get_engine(store_url).connect() as c:
        want = reference_report(c, job_id, catalog, baseline)
        got = build_report(c, job_id, catalog, baseline_model=baseline)
        model_mix = repo.by_model(c, job_id)

    # The ledger held every case: retries, an escalation, two channels of one model, the cache, unsettled...
    assert {r["provider"] + "/" + r["model"] for r in want["by_model"]} == {
        "/".join(m) for m in (LLAMA, MINI, GPT4O, PRO, UNKNOWN)
    }
    assert want["unsettled_attempts"] == 1 and want["cache"]["hits"] == 1 and want["prompt_cache"]["hits"] == 2

    key = lambda r: (-r["cost_picos"], r["provider"], r["model"])  # noqa: E731 - ties: the old query's order was the store's
    assert model_mix == sorted(want["by_model"], key=key)
    assert got["by_model"] == [
        {k: v for k, v in r.items() if k not in ("held_picos", "unsettled_attempts", "unpriced_attempts")}
        | {"cost_usd": usd_json(r["cost_picos"])}
        for r in sorted(want["by_model"], key=key)
    ]
    assert got["ledger_picos"] == want["ledger_picos"] == sum(a[11] for _, rows in LEDGER.values() for a in rows)
    assert got["unsettled_attempts"] == want["unsettled_attempts"]
    assert [a["attempt_id"] for a in got["unpriced_attempts"]] and len(got["unpriced_attempts"]) == 1
    assert got["baseline"]["cost_usd"] == usd_json(want["baseline_picos"])
    assert got["baseline"]["error"] == want["baseline_error"]
    if want["baseline_picos"] is not None:
        assert want["baseline_picos"] > 0
    assert got["cache"] == want["cache"]
    assert got["prompt_cache"] == want["prompt_cache"]
    assert got["by_channel"] == want["by_channel"]
    assert {r["channel"] for r in got["by_channel"]} == {"online", "flex", "batch", "cache"}
