"""The spend audit reconciles, to the micro-dollar, on SQLite and on Postgres, for a job whose ledger holds
more than one attempt per task: injected 429/5xx (retries) and wrong labels from the cheapest model
(escalations). Job totals == ledger sum == `report --json` == `report --attempts` == `report --csv` ==
the per-task results; and every usage-priced attempt re-prices to its ledger cost from the catalog.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict

import orjson
import pytest

from llmbatch.catalog import builtin_catalog
from llmbatch.catalog.pricing import price
from llmbatch.models import Usage
from llmbatch.money import dumps_json, usd_to_picos
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from tests.support.cli import cli_env, results, run_cli, run_json, write_reviews
from tests.support.report_reference import reference_report

N_TASKS = 150
TOKENS = ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _picos(usd) -> int:
    """A USD amount from JSON/CSV back to exact pico-dollars (never summed as floats)."""
    return usd_to_picos(str(usd))


def _run_job(tmp_path, db_url, n: int, sim_cfg: SimulatorConfig) -> tuple[dict, dict]:
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, n)
    (tmp_path / "llmbatch.toml").write_text("[retry]\nbase_delay_s = 0.01\nmax_delay_s = 0.05\n")
    with SimulatorThread(sim_cfg) as sim:
        env = cli_env(db_url, LLMBATCH_SIMULATOR_URL=sim.url, LLMBATCH_CONFIG=str(tmp_path / "llmbatch.toml"))
        p, st = run_json(["run", str(src), "--simulate"], env, timeout=120)
    assert p.returncode in (0, 3), (p.returncode, p.stdout, p.stderr)
    return env, st


def test_report_reconciles_to_the_ledger_with_retries_and_escalations(tmp_path, store_url):
    cfg = SimulatorConfig(error_rate=0.1, seed=21, model_overrides={"llama-3.1-8b-instant": {"label_error_rate": 0.3}})
    env, st = _run_job(tmp_path, store_url, N_TASKS, cfg)
    job_id = st["job_id"]
    engine = get_engine(store_url)
    with engine.connect() as c:
        job = repo.get_job(c, job_id)
        ledger = ledger_api.ledger_sum(c, job_id)
        ledger_rows = [dict(r) for r in repo.iter_attempt_rows(c, job_id)]
    spent = job["spent_picos"]

    # The job really had retries and escalations, so the ledger holds more rows than tasks.
    statuses = Counter(a["status"] for a in ledger_rows)
    assert statuses["failed"] > 0, statuses  # 429/5xx answers, retried
    assert statuses["invalid_output"] > 0, statuses  # wrong labels, escalated
    assert statuses["succeeded"] == st["counts"]["succeeded"] > 0
    assert len(ledger_rows) > N_TASKS
    assert st["counts"]["total"] == N_TASKS and st["counts"]["queued"] == st["counts"]["running"] == 0

    # Job totals == ledger, nothing reserved or unsettled.
    assert spent == ledger == sum(a["cost_picos"] for a in ledger_rows) > 0
    assert job["reserved_picos"] == 0 and all(a["settled"] for a in ledger_rows)
    assert _picos(st["spent_usd"]) == spent

    # Every attempt's cost: from its usage at catalog prices (rounded up per attempt); never above what
    # was reserved for it; failed calls without usage cost nothing.
    catalog = builtin_catalog()
    for a in ledger_rows:
        assert a["cost_picos"] <= a["reserved_picos"], a
        if a["cost_source"] == "usage":
            usage = Usage(**{k: a[k] for k in TOKENS})
            assert price(usage, catalog.get(f"{a['provider']}/{a['model']}")).picos == a["cost_picos"], a
        else:
            assert a["cost_source"] == "none" and a["cost_picos"] == 0 and a["status"] == "failed", a

    # report --json
    p, rep = run_json(["report", job_id], env)
    assert p.returncode == 0, p.stderr
    assert rep["spent_picos"] == rep["ledger_picos"] == spent and rep["reconciled"] is True
    assert _picos(rep["spent_usd"]) == spent and rep["reserved_usd"] == 0 and rep["unsettled_attempts"] == 0
    assert rep["escalations"] > 0
    by_model = rep["by_model"]
    # int(): Postgres returns the SUMs as Decimal (printed as JSON strings); see test_report_json_amounts_are_numbers.
    assert sum(int(m["cost_picos"]) for m in by_model) == spent
    assert sum(_picos(m["cost_usd"]) for m in by_model) == spent
    assert sum(int(m["attempts"]) for m in by_model) == len(ledger_rows)
    for m in by_model:
        rows = [a for a in ledger_rows if (a["provider"], a["model"]) == (m["provider"], m["model"])]
        assert int(m["attempts"]) == len(rows)
        assert int(m["tasks"]) == len({a["task_seq"] for a in rows})
        assert int(m["cost_picos"]) == sum(a["cost_picos"] for a in rows)
        for k in TOKENS:
            assert int(m[k]) == sum(a[k] for a in rows), (m["model"], k)
    assert len({(m["provider"], m["model"]) for m in by_model}) >= 2  # escalations reached a second model
    if rep["baseline"]["cost_usd"] is not None:
        assert _picos(rep["savings_usd"]) == _picos(rep["baseline"]["cost_usd"]) - spent
    # The one-pass report (store/reads.py) equals the per-section queries it replaced, on this real ledger.
    with engine.connect() as c:
        want = reference_report(c, job_id, catalog, rep["baseline"]["model"])
    assert [(m["provider"], m["model"], int(m["tasks"]), int(m["cost_picos"])) for m in by_model] == [
        (m["provider"], m["model"], m["tasks"], m["cost_picos"])
        for m in sorted(want["by_model"], key=lambda m: (-m["cost_picos"], m["provider"], m["model"]))
    ]
    assert _picos(rep["baseline"]["cost_usd"]) == want["baseline_picos"] > 0
    assert orjson.loads(dumps_json([want["cache"], want["prompt_cache"], want["by_channel"]])) == [
        rep["cache"],
        rep["prompt_cache"],
        rep["by_channel"],
    ]

    # report --attempts: one JSON line per ledger row, summing to the job's spend.
    p = run_cli(["report", job_id, "--attempts"], env)
    assert p.returncode == 0, p.stderr
    lines = [orjson.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert sorted(a["id"] for a in lines) == sorted(a["id"] for a in ledger_rows)
    assert sum(a["cost_picos"] for a in lines) == spent
    assert sum(_picos(a["cost_usd"]) for a in lines) == spent
    assert all(_picos(a["cost_usd"]) == a["cost_picos"] for a in lines)

    # report --csv: parses, one row per model, the same money and tokens.
    p = run_cli(["report", job_id, "--csv"], env)
    assert p.returncode == 0, p.stderr
    table = list(csv.DictReader(io.StringIO(p.stdout)))
    assert {"provider", "model", "tasks", "attempts", "cost_usd", *TOKENS} <= set(table[0])
    assert len(table) == len(by_model)
    assert sum(_picos(r["cost_usd"]) for r in table) == spent
    assert sum(int(r["attempts"]) for r in table) == len(ledger_rows)
    for k in TOKENS:
        assert sum(int(r[k]) for r in table) == sum(a[k] for a in ledger_rows), k

    # results: each task's cost is the sum of its billed attempts, and they add up to the job.
    per_task = defaultdict(int)
    for a in ledger_rows:
        per_task[a["task_id"]] += a["cost_picos"]
    res = results(job_id, env)
    assert len(res) == N_TASKS
    assert sum(_picos(r["cost_usd"]) for r in res) == spent
    for r in res:
        assert _picos(r["cost_usd"]) == per_task[r["id"]], r["id"]
    print(
        f"\nreport audit [{store_url.split(':')[0]}]: {N_TASKS} tasks, {len(ledger_rows)} attempts "
        f"{dict(statuses)}, {rep['escalations']} escalations, {len(by_model)} models; spent {spent} picos "
        f"== ledger == report == attempts == csv == results"
    )


def test_report_json_amounts_are_numbers(tmp_path, store_url, request):
    """`report --json` prints by_model counts, tokens and micro-dollars as JSON integers on every store."""
    env, st = _run_job(tmp_path, store_url, 12, SimulatorConfig(seed=1))
    p, rep = run_json(["report", st["job_id"]], env)
    assert p.returncode == 0, p.stderr
    for m in rep["by_model"]:
        for k in ("tasks", "attempts", "succeeded_attempts", "cost_picos", *TOKENS):
            assert type(m[k]) is int, (m["model"], k, m[k])
        assert isinstance(m["cost_usd"], float)
