"""Issue 17, end to end on the simulator (embedded, SQLite, zero latency): `run --quality` keeps agreement with
a full reference run >= the target at a fraction of its cost, plain cheapest routing agrees less; calibration
spend is capped by its budget and shows in the ledger (purpose=calibration) and the report."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from llmbatch.store import ledger as ledger_api, repo
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts
from tests.support.cli import cli_env, results, run_cli, run_json, write_reviews


def _job(url: str, job_id: str) -> dict:
    with get_engine(url).connect() as c:
        return repo.get_job(c, job_id)


def _calibration_ledger(url: str, job_ids: list[str]) -> tuple[int, set[str]]:
    with get_engine(url).connect() as c:
        spent = sum(ledger_api.ledger_sum(c, j) for j in job_ids)
        purposes = {p for (p,) in c.execute(select(attempts.c.purpose).where(attempts.c.job_id.in_(job_ids)))}
        for j in job_ids:
            assert repo.get_job(c, j)["spent_picos"] == ledger_api.ledger_sum(c, j)
    return spent, purposes


def _agreement(a: list[dict], b: list[dict]) -> float:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    return sum(x["status"] == "succeeded" and x["output"] == y["output"] for x, y in zip(a, b)) / len(a)


def test_run_quality_meets_the_target_for_a_fraction_of_the_reference_cost(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 2000)
    env = cli_env(sqlite_url)

    p, q = run_json(["run", str(src), "--simulate", "--quality", "0.95"], env, timeout=900)
    assert p.returncode == 0, p.stderr
    assert q["counts"]["succeeded"] == 2000
    job = _job(sqlite_url, q["job_id"])
    pol = json.loads(job["spec"])["policy"]
    (group,) = pol["groups"].values()
    assert group["lower_bound"] >= 0.95 and group["model"] != group["escalate_to"]
    cal_spent, purposes = _calibration_ledger(sqlite_url, pol["calibration"]["jobs"])
    assert cal_spent == pol["calibration"]["spent_picos"] > 0 and purposes == {"calibration"}

    # the full reference run and the plain cheapest run, side by side (each is its own process)
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda args: run_json(args, env, timeout=900),
                [["run", str(src), "--simulate", "--model", group["escalate_to"]], ["run", str(src), "--simulate"]],
            )
        )
    for p, _ in runs:
        assert p.returncode == 0, p.stderr
    (_, ref), (_, cheap) = runs
    ref_rows = results(ref["job_id"], env)
    agree_quality = _agreement(results(q["job_id"], env), ref_rows)
    agree_cheap = _agreement(results(cheap["job_id"], env), ref_rows)
    ref_cost = _job(sqlite_url, ref["job_id"])["spent_picos"]
    quality_cost = job["spent_picos"] + cal_spent
    print(
        f"\nagreement with the full {group['escalate_to']} run: run --quality 0.95 {agree_quality:.4f}, "
        f"plain cheapest routing {agree_cheap:.4f}"
    )
    print(
        f"cost: reference ${ref_cost / 1e12:.6f}; run --quality ${quality_cost / 1e12:.6f} "
        f"(calibration ${cal_spent / 1e12:.6f}) = {quality_cost / ref_cost:.1%} of it; "
        f"policy {group['model']} threshold {group['threshold']}"
    )
    assert agree_quality >= 0.95
    assert quality_cost <= 0.40 * ref_cost
    assert agree_cheap < agree_quality - 0.03  # measurably less

    p, rep = run_json(["report", q["job_id"]], env)
    assert p.returncode == 0, p.stderr
    qs = rep["quality"]
    assert qs["calibration_picos"] == cal_spent and qs["actual_picos"] == job["spent_picos"]
    assert qs["total_picos"] == quality_cost and qs["expected_picos"] > 0
    assert qs["groups"][0]["tasks"] == 2000 and qs["groups"][0]["lower_bound"] >= 0.95
    text = run_cli(["report", q["job_id"]], env).stdout
    assert "quality policy" in text and "calibration:" in text and "expected" in text


def test_calibration_spend_is_capped_by_its_budget_and_in_ledger_and_report(tmp_path, sqlite_url):
    src = tmp_path / "reviews.jsonl"
    write_reviews(src, 150)
    env = cli_env(sqlite_url)
    out = tmp_path / "policy.json"
    p = run_cli(["calibrate", str(src), "--simulate", "--sample", "100", "--budget", "0.01", "-o", str(out)], env)
    assert p.returncode == 0, p.stderr
    assert "estimated" in p.stderr and "calibration spent" in p.stdout
    pol = json.loads(out.read_text())
    (cal_job,) = pol["calibration"]["jobs"]
    spent, purposes = _calibration_ledger(sqlite_url, [cal_job])
    job = _job(sqlite_url, cal_job)
    assert spent == pol["calibration"]["spent_picos"] and 0 < spent <= 10_000 * 10**6 and purposes == {"calibration"}
    assert job["budget_picos"] == 10_000 * 10**6 and job["status"] == "budget_exhausted"  # the cap cut it short
    p, rep = run_json(["report", cal_job], env)
    assert rep["spent_picos"] == spent and rep["reconciled"]

    # run --policy: the report shows the policy and the calibration's spend next to the run's
    p, st = run_json(["run", str(src), "--simulate", "--policy", str(out)], env)
    assert p.returncode == 0, p.stderr
    p, rep = run_json(["report", st["job_id"]], env)
    assert rep["quality"]["calibration_picos"] == spent and rep["quality"]["calibration_jobs"] == [cal_job]

    # run --quality under a job budget: calibration and run together stay within it
    p, st = run_json(["run", str(src), "--simulate", "--quality", "0.95", "--budget", "0.005"], env)
    assert p.returncode in (0, 4), p.stderr
    job = _job(sqlite_url, st["job_id"])
    cal = json.loads(job["spec"])["policy"]["calibration"]
    assert 0 < cal["spent_picos"] and cal["spent_picos"] + job["spent_picos"] <= 5_000 * 10**6
