"""The planning commands end to end: models, route --explain, estimate (with the budget warning), and
catalog import wired through to routing via catalog_file and [models] overrides."""

from __future__ import annotations

import base64
import json

from tests.support.cli import cli_env, custom_provider_toml, run_cli, run_json, write_reviews
from tests.unit.test_catalog_litellm import FIXTURE

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def test_route_explain_says_why_cheaper_models_were_not_eligible(tmp_path, sqlite_url):
    src = tmp_path / "t.jsonl"
    src.write_text(
        json.dumps({"id": "img", "task": "classify", "input": "What is it?", "images": [PNG], "labels": ["cat", "dog"]})
        + "\n"
    )
    p, routes = run_json(["route", str(src), "--explain", "--simulate"], cli_env(sqlite_url))
    assert p.returncode == 0, p.stderr
    (r,) = routes
    assert r["id"] == "img" and r["model"] and r["estimated_usd"] > 0
    reasons = {x["model"]: x["reason"] for x in r["not_chosen"]}
    # The cheapest mini model has no vision: it must be listed as not eligible, with that reason.
    assert any("vision" in why for why in reasons.values()), reasons
    assert "groq/llama-3.1-8b-instant" in reasons


def test_estimate_flags_an_upper_bound_over_the_budget(tmp_path, sqlite_url):
    src = tmp_path / "r.jsonl"
    write_reviews(src, 50)
    env = cli_env(sqlite_url)
    p, est = run_json(["estimate", str(src), "--simulate", "--budget", "0.00001"], env)
    assert p.returncode == 0
    assert est["over_budget"] is True and est["upper_bound_usd"] > 0.00001
    assert "exceeds the budget" in p.stderr
    p, est = run_json(["estimate", str(src), "--simulate", "--budget", "10"], env)
    assert est["over_budget"] is False and est["tasks"] == 50
    assert sum(m["tasks"] for m in est["by_model"]) == 50


def test_catalog_import_then_route_to_an_imported_model(tmp_path, sqlite_url):
    lite = tmp_path / "model_prices_and_context_window.json"
    lite.write_text(FIXTURE)
    out = tmp_path / "imported.json"
    env = cli_env(sqlite_url)
    p = run_cli(["catalog", "import", str(lite), "-o", str(out)], env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["models"] and all(isinstance(m["input_per_mtok"], str) for m in doc["models"])
    env["LLMBATCH_CATALOG_FILE"] = str(out)
    p, models = run_json(["models"], env)
    assert p.returncode == 0, p.stderr
    keys = {f"{m['provider']}/{m['model']}" for m in models}
    assert {f"{m['provider']}/{m['model']}" for m in doc["models"]} <= keys


def test_custom_openai_compatible_provider_from_config(tmp_path, sqlite_url):
    """A user-defined endpoint (vLLM, Ollama, a gateway) with its own cheap model takes the work."""
    from llmbatch.simulator import SimulatorConfig, SimulatorThread

    # The simulator errs only on mini-tier names; declare the house model frontier there so every answer is valid.
    with SimulatorThread(SimulatorConfig(extra_models={"house-llama": "frontier"})) as sim:
        (tmp_path / "llmbatch.toml").write_text(custom_provider_toml(f"{sim.url}/v1"))
        src = tmp_path / "r.jsonl"
        write_reviews(src, 5)
        env = cli_env(sqlite_url, LLMBATCH_CONFIG=str(tmp_path / "llmbatch.toml"), HOUSE_KEY="house-secret")
        # Real (non-simulated) run: only providers with credentials are eligible; HOUSE_KEY is set, the
        # others' keys are not, so the house model must take every task.
        for k in (
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "GEMINI_API_KEY",
            "GROQ_API_KEY",
            "MISTRAL_API_KEY",
            "TOGETHER_API_KEY",
        ):
            env.pop(k, None)
        p, st = run_json(["run", str(src)], env)
    assert p.returncode == 0, p.stderr
    assert st["counts"]["succeeded"] == 5
    p, rep = run_json(["report", st["job_id"]], env)
    assert [(m["provider"], m["model"]) for m in rep["by_model"]] == [("house", "house-llama")]


def test_route_streams_every_valid_line_and_reports_the_bad_ones(tmp_path, sqlite_url):
    """route plans line by line (no decision list in memory): --json is one array of every valid line, the
    table shows the first --limit and counts the rest, and bad lines are named on stderr in both modes."""
    src = tmp_path / "r.jsonl"
    write_reviews(src, 30)
    with src.open("a") as f:
        f.write('{"id": "bad", "task": "nope", "input": "x"}\nnot json\n')
    env = cli_env(sqlite_url)
    p, routes = run_json(["route", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    assert len(routes) == 30 and len({r["id"] for r in routes}) == 30 and all(r["model"] for r in routes)
    assert "line 31:" in p.stderr and "line 32:" in p.stderr and "2 line(s) invalid" in p.stderr
    p = run_cli(["route", str(src), "--simulate", "--limit", "4"], env)
    assert p.returncode == 0, p.stderr
    assert "... 26 more" in p.stdout and "line 31:" in p.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    p, routes = run_json(["route", str(empty), "--simulate"], env)
    assert routes == []
