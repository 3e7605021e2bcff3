"""The throughput benchmarks at a tiny size: the harness works, the counts add up and every summary has
its fields. A correctness check, never a timed assertion (the real figures: `bash scripts/bench.sh`)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import bench_inflight, bench_overhead, bench_ratelimit, bench_reads, bench_scaling, bench_submit

FIELDS = {
    "benchmark",
    "figure",
    "unit",
    "baseline",
    "baseline_desc",
    "ratio",
    "ratio_desc",
    "target",
    "pass",
    "settings",
    "machine",
    "details",
}
MACHINE = {"nproc", "cpu_model", "python", "commit"}


@pytest.fixture
def bench_services(monkeypatch, redis_url, postgres_url):
    """Point the benchmarks at the test servers (they pick their own Redis db numbers and fresh databases)."""
    monkeypatch.setenv("LLMBATCH_BENCH_REDIS_URL", redis_url)
    monkeypatch.setenv("LLMBATCH_BENCH_DATABASE_URL", postgres_url)


def check(res: dict, name: str, tmp_path) -> dict:
    assert FIELDS <= set(res), set(FIELDS) - set(res)
    assert res["benchmark"] == name
    assert MACHINE <= set(res["machine"])
    assert isinstance(res["figure"], (int, float)) and res["figure"] > 0
    assert isinstance(res["baseline"], (int, float)) and res["baseline"] > 0
    # ratio is rounded to 3 decimals, so a tiny ratio (a smoke-sized figure) needs an absolute tolerance too
    assert res["ratio"] == pytest.approx(res["figure"] / res["baseline"], rel=0.01, abs=6e-4)
    assert res["pass"] in (True, False)
    out = tmp_path / f"{name}.json"
    assert json.loads(out.read_text())["benchmark"] == name  # --out wrote the same summary
    return res["details"]


def test_inflight_smoke(tmp_path, bench_services):
    res = bench_inflight.main(
        [
            "--tasks",
            "120",
            "--concurrency",
            "30",
            "--latency",
            "0.05",
            "--p50",
            "0.05",
            "--p99",
            "0.3",
            "--mini-error-rate",
            "0.2",
            "--out",
            str(tmp_path / "inflight.json"),
        ]
    )
    d = check(res, "inflight", tmp_path)
    assert set(d["ratios"]) == {"lognormal/embedded", "lognormal/celery", "fixed/embedded", "fixed/celery"}
    for run in d["runs"]:
        assert run["correct"], run
        p, b = run["pipeline"], run["baseline"]
        assert p["counts"]["succeeded"] == p["counts"]["total"] == 120
        assert p["spent_picos"] == p["ledger_picos"] > 0
        # Escalations happened, and the baseline made exactly the pipeline's calls, model by model.
        assert p["sim_total"] > 120 and len(p["sim_by_model"]) >= 2
        assert b["requests"] == b["ok"] == p["sim_total"]


def test_overhead_smoke(tmp_path, bench_services):
    res = bench_overhead.main(
        ["--tasks", "150", "--concurrency", "20", "--workers", "2", "--out", str(tmp_path / "overhead.json")]
    )
    d = check(res, "overhead", tmp_path)
    assert set(d["modes"]) == {"embedded", "celery"}
    for r in d["modes"].values():
        assert r["correct"], r
        assert r["counts"]["succeeded"] == r["tasks"] == r["sim_requests"] == 150
    assert d["modes"]["celery"]["units"] >= 1
    assert res["figure"] == min(r["per_s"] for r in d["modes"].values())


def test_submit_smoke(tmp_path, bench_services):
    res = bench_submit.main(["--lines", "3000", "--out", str(tmp_path / "submit_ingest.json")])
    d = check(res, "submit_ingest", tmp_path)
    for store in ("sqlite", "postgres"):
        r = d["stores"][store]
        assert r["correct"], r
        assert r["stored_tasks"] == r["output"]["tasks"] == 3000
        assert r["queued_messages"] == r["output"]["units"] > 0
        assert 0 < r["peak_rss_mb"] < 4096


def test_ratelimit_smoke(tmp_path, bench_services):
    res = bench_ratelimit.main(
        [
            "--rpm",
            "600",
            "--workers",
            "3",
            "--concurrency",
            "10",
            "--latency",
            "0.05",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--out",
            str(tmp_path / "ratelimit.json"),
        ]
    )
    d = check(res, "ratelimit", tmp_path)
    assert d["correct"]
    assert d["requests_total"] == sum(d["by_status"].values()) > 0
    assert 0 <= d["fraction_429"] <= 1
    assert res["baseline"] == 600


def test_scaling_smoke(tmp_path, bench_services):
    res = bench_scaling.main(
        [
            "--workers",
            "1,2",
            "--tasks-per-worker",
            "60",
            "--concurrency",
            "20",
            "--latency",
            "0.05",
            "--out",
            str(tmp_path / "scaling.json"),
        ]
    )
    d = check(res, "scaling", tmp_path)
    assert d["correct"]
    assert [r["workers"] for r in d["rows"]] == [1, 2]
    for r in d["rows"]:
        assert r["counts"]["succeeded"] == r["tasks"] == r["sim_requests"] == 60 * r["workers"]
    assert d["rows"][0]["speedup"] == 1.0
    assert len(d["table"]) == 2 + 2


def test_reads_smoke(tmp_path, bench_services):
    res = bench_reads.main(["--tasks", "300", "--out", str(tmp_path / "reads.json")])
    d = check(res, "reads", tmp_path)
    assert set(d["stores"]) == {"sqlite", "postgres"}
    for store in d["stores"].values():
        assert store["correct"] and store["results"]["lines"] == 300
        assert store["status"]["stdout_bytes"] > 0 and store["report"]["stdout_bytes"] > 0
    assert d["startup"]["help"]["stdout_bytes"] > 0
