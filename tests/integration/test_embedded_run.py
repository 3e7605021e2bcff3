"""Issue 2, embedded mode: `llmbatch run --simulate` on SQLite, end to end through the real CLI process."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts
from tests.support.cli import cli_env, results, run_cli, run_json, write_reviews


def test_run_200_lines_all_succeed_and_spend_equals_ledger(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    ids = write_reviews(src, 200)
    env = cli_env(sqlite_url)
    p, st = run_json(["run", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    assert set(st) >= {"job_id", "status", "counts", "spent_usd", "budget_usd"}
    assert st["status"] == "succeeded"
    assert st["counts"]["total"] == 200 and st["counts"]["succeeded"] == 200
    rows = results(st["job_id"], env)
    assert [r["id"] for r in rows] == ids  # exactly one line per input id, in input order
    for r in rows:
        assert r["status"] == "succeeded"
        assert r["output"] in ("positive", "negative", "neutral")
        assert r["cost_usd"] > 0
        assert r["usage"]["input_tokens"] > 0 and r["usage"]["output_tokens"] > 0
        assert set(r) == {
            "id",
            "status",
            "provider",
            "model",
            "output",
            "error",
            "finish_reason",
            "usage",
            "cost_usd",
            "attempts",
            "metadata",
            "channel",
        }
        assert r["finish_reason"] in ("stop", "end_turn", "STOP")  # the provider's own, never a truncation
    assert rows[5]["metadata"] == {"n": 5}
    engine = get_engine(sqlite_url)
    with engine.connect() as c:
        job = repo.get_job(c, st["job_id"])
        assert job["spent_picos"] == ledger_api.ledger_sum(c, st["job_id"]) > 0
        assert job["reserved_picos"] == 0
        task_sum = sum(r["cost_picos"] for r in repo.iter_task_rows(c, st["job_id"]))
        assert task_sum == job["spent_picos"]
    # The report agrees with the ledger to the micro-dollar.
    p, rep = run_json(["report", st["job_id"]], env)
    assert p.returncode == 0, p.stderr
    assert rep["reconciled"] is True and rep["ledger_picos"] == job["spent_picos"]
    assert sum(m["cost_picos"] for m in rep["by_model"]) == job["spent_picos"]
    assert set(rep) >= {"job_id", "spent_usd", "reserved_usd", "by_model", "baseline", "savings_usd"}
    assert set(rep["by_model"][0]) >= {
        "provider",
        "model",
        "tasks",
        "attempts",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
    }
    assert rep["baseline"]["model"] == "gpt-4o" and rep["savings_usd"] > 0


def test_faults_10_percent_still_complete_and_failed_attempts_cost_nothing(tmp_path, sqlite_url):
    from llmbatch.simulator import SimulatorConfig, SimulatorThread

    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 120)
    with SimulatorThread(SimulatorConfig(error_rate=0.10, seed=7)) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        # short backoff so the test is quick; the retry layer is what's under test
        (tmp_path / "llmbatch.toml").write_text("[retry]\nbase_delay_s = 0.01\nmax_delay_s = 0.05\n")
        env["LLMBATCH_CONFIG"] = str(tmp_path / "llmbatch.toml")
        p, st = run_json(["run", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    assert st["counts"]["succeeded"] == 120
    engine = get_engine(sqlite_url)
    with engine.connect() as c:
        failed = (
            c.execute(select(attempts).where(attempts.c.job_id == st["job_id"], attempts.c.status == "failed"))
            .mappings()
            .all()
        )
        assert failed, "about 10% of calls were answered 429/500; the ledger must show them"
        assert {f["http_status"] for f in failed} <= {429, 500, 502, 503, 529}
        for f in failed:
            assert f["cost_picos"] == 0 and f["input_tokens"] == 0  # no usage returned, no cost
        assert repo.get_job(c, st["job_id"])["spent_picos"] == ledger_api.ledger_sum(c, st["job_id"])


def test_bad_lines_reported_by_number_and_the_rest_runs(tmp_path, sqlite_url):
    src = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"id": "a", "task": "summarize", "input": "One. Two. Three."}),
        '{"id": "b", "task": "summarize", "input": "unterminated',  # line 2: malformed JSON
        json.dumps({"id": "c", "task": "summarize"}),  # line 3: missing input
        json.dumps({"id": "d", "task": "translate", "input": "x"}),  # line 4: unknown task
        json.dumps({"id": "a", "task": "summarize", "input": "dup"}),  # line 5: duplicate id
        json.dumps({"id": "e", "task": "classify", "input": "great", "labels": ["pos", "neg"]}),
    ]
    src.write_text("\n".join(lines) + "\n")
    env = cli_env(sqlite_url)
    p = run_cli(["run", str(src), "--simulate", "--json"], env)
    err = p.stderr
    for n in (2, 3, 4, 5):
        assert f"line {n}:" in err, err
    assert "duplicate id 'a'" in err and "line 1" in err
    st = json.loads(p.stdout)
    assert st["counts"]["total"] == 2 and st["counts"]["succeeded"] == 2
    assert p.returncode == 2  # the job ran, but input lines were rejected: scripts must notice


def test_strict_exits_2_and_writes_nothing(tmp_path, sqlite_url):
    src = tmp_path / "mixed.jsonl"
    src.write_text(json.dumps({"id": "a", "task": "summarize", "input": "x y z."}) + "\n{not json\n")
    env = cli_env(sqlite_url)
    p = run_cli(["run", str(src), "--simulate", "--strict"], env)
    assert p.returncode == 2
    assert "line 2" in p.stderr
    with get_engine(sqlite_url).connect() as c:
        assert repo.list_jobs(c) == []


@pytest.mark.parametrize("cmd", [["models"], ["estimate", "{src}", "--simulate"]])
def test_json_shapes(tmp_path, sqlite_url, cmd):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 10)
    env = cli_env(sqlite_url)
    p, out = run_json([c.format(src=src) for c in cmd], env)
    assert p.returncode == 0, p.stderr
    if cmd[0] == "models":
        assert isinstance(out, list) and len(out) >= 15
        assert set(out[0]) >= {
            "provider",
            "model",
            "tier",
            "status",
            "input_per_mtok",
            "cached_input_per_mtok",
            "cache_write_per_mtok",
            "output_per_mtok",
            "context_window",
            "max_output_tokens",
            "capabilities",
        }
        assert {m["status"] for m in out} <= {"active", "deprecated", "retired"}
    else:
        assert set(out) >= {"tasks", "estimated_usd", "by_model"} and out["tasks"] == 10
        assert out["estimated_usd"] > 0 and out["upper_bound_usd"] >= out["estimated_usd"]


def test_exit_code_4_on_budget_and_retry_resumes(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 60)
    env = cli_env(sqlite_url)
    p, st = run_json(["run", str(src), "--simulate", "--budget", "0.0002"], env)
    assert p.returncode == 4, p.stderr
    assert st["status"] == "budget_exhausted" and st["counts"]["skipped"] > 0
    assert st["spent_usd"] <= 0.0002
    p, st2 = run_json(["retry", st["job_id"], "--budget", "5"], env)
    assert p.returncode == 0, p.stderr
    assert st2["counts"]["succeeded"] == 60
    with get_engine(sqlite_url).connect() as c:
        assert repo.get_job(c, st["job_id"])["spent_picos"] == ledger_api.ledger_sum(c, st["job_id"])


def test_unknown_job_is_a_clear_error(sqlite_url):
    p = run_cli(["status", "job-nope"], cli_env(sqlite_url))
    assert p.returncode == 2 and "no job 'job-nope'" in p.stderr
