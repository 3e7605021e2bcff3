"""Migration 0004: a store written in micro-dollars keeps every amount exactly, now in pico-dollars, on SQLite
and Postgres; attempts billed above their reservation before the upgrade are flagged as overruns."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text

from llmbatch.store.db import _alembic_config, make_engine, upgrade

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("empty_sqlite_url" if request.param == "sqlite" else "empty_postgres_url")


def _to(engine, revision: str) -> None:
    if engine.dialect.name == "sqlite":
        command.upgrade(_alembic_config(engine), revision)
        return
    with engine.connect() as conn:
        cfg = _alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def test_micro_dollar_rows_become_exact_pico_dollars(store_url):
    engine = make_engine(store_url)
    _to(engine, "0002")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO jobs (id, status, spec, executor, simulate, budget_micros, spent_micros, "
                "reserved_micros, total_tasks, invalid_lines, cancel_requested, created_at) VALUES "
                "('j', 'succeeded', '{}', 'local', true, 5000, 837, 0, 1, 0, false, 0)"
            )
        )
        c.execute(
            text(
                "INSERT INTO tasks (job_id, seq, task_id, line_no, task_type, payload, status, input_tokens, "
                "cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_micros, attempts, "
                "escalations, deliveries) VALUES ('j', 0, 't', 1, 'chat', '{}', 'succeeded', 0, 0, 0, 0, 0, "
                "837, 2, 0, 1)"
            )
        )
        for i, (reserved, cost) in enumerate([(500, 300), (400, 537)]):
            c.execute(
                text(
                    "INSERT INTO attempts (job_id, task_seq, task_id, attempt_no, provider, model, channel, purpose, "
                    "status, settled, input_tokens, cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, "
                    f"reserved_micros, cost_micros, started_at) VALUES ('j', 0, 't', {i + 1}, 'p', 'm', 'sync', 'first', "
                    f"'succeeded', true, 0, 0, 0, 0, 0, {reserved}, {cost}, 0)"
                )
            )
        c.execute(
            text(
                'INSERT INTO budget_windows ("window", cap_micros, spent_micros, reserved_micros) '
                "VALUES ('2026-11-30', 1000000, 837, 0)"
            )
        )
    upgrade(engine)
    with engine.connect() as c:
        job = c.execute(text("SELECT budget_picos, spent_picos, reserved_picos, stop_reason FROM jobs")).one()
        assert tuple(job) == (5000 * 10**6, 837 * 10**6, 0, None)
        assert c.execute(text("SELECT cost_picos FROM tasks")).scalar() == 837 * 10**6
        rows = c.execute(
            text("SELECT reserved_picos, cost_picos, overrun, finish_reason FROM attempts ORDER BY attempt_no")
        ).all()
        assert [(r[0], r[1], bool(r[2]), r[3]) for r in rows] == [
            (500 * 10**6, 300 * 10**6, False, None),
            (400 * 10**6, 537 * 10**6, True, None),
        ]
        assert tuple(c.execute(text("SELECT cap_picos, spent_picos FROM budget_windows")).one()) == (
            10**12,
            837 * 10**6,
        )
    engine.dispose()
