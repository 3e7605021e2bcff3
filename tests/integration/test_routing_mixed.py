"""Issue 3 on the simulator, end to end: a mixed job lands each task on the right kind of model, and a
mini model that answers outside the label set escalates with both attempts in the ledger."""

from __future__ import annotations

import base64
import json

from sqlalchemy import select

from llmbatch.catalog import builtin_catalog
from llmbatch.simulator import SimulatorConfig, SimulatorThread
from llmbatch.store.db import get_engine
from llmbatch.store.schema import attempts
from tests.support.cli import cli_env, results, run_json

# A 1x1 PNG: enough for the image part to be real.
PNG = (
    "data:image/png;base64,"
    + base64.b64encode(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8ffff3f0005fe02fea7"
            "3581e40000000049454e44ae426082"
        )
    ).decode()
)
LABELS = ["positive", "negative", "neutral"]


def _cheapest(models, **where):
    return min(
        (m for m in models if all(getattr(m, k) == v for k, v in where.items())),
        key=lambda m: m.input_per_mtok * 80 + m.output_per_mtok * 5,
    )


def test_mixed_job_routes_each_task_to_an_eligible_model(tmp_path, sqlite_url):
    catalog = builtin_catalog()
    long_text = "The quarterly report covers revenue, churn and hiring across every region. " * 22000
    lines = [
        {"id": "short-1", "task": "classify", "input": "Great product, works well.", "labels": LABELS},
        {"id": "short-2", "task": "classify", "input": "Broke on day one.", "labels": LABELS},
        {
            "id": "image-1",
            "task": "classify",
            "input": "What does this picture show?",
            "images": [PNG],
            "labels": ["cat", "dog", "other"],
        },
        {"id": "long-1", "task": "summarize", "input": long_text, "max_output_tokens": 100},
        {"id": "frontier-1", "task": "summarize", "input": "A short note. It matters a lot.", "min_tier": "frontier"},
        {
            "id": "o1-1",
            "task": "chat",
            "model": "o1-mini",
            "max_output_tokens": 200,
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "What colour is the sky on a clear day?"},
            ],
        },
    ]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    env = cli_env(sqlite_url)
    p, st = run_json(["run", str(src), "--simulate"], env)
    assert p.returncode == 0, p.stderr
    by_id = {r["id"]: r for r in results(st["job_id"], env)}
    assert all(r["status"] == "succeeded" for r in by_id.values()), by_id

    def model_of(tid):
        r = by_id[tid]
        return catalog.get(f"{r['provider']}/{r['model']}")

    # Short classifications go to the cheapest (active, credentialed: all, when simulating) mini model.
    active_mini = [m for m in catalog if m.tier.value == "mini" and m.status == "active"]
    cheapest_mini = min(active_mini, key=lambda m: m.input_per_mtok + m.output_per_mtok)
    assert model_of("short-1").key == model_of("short-2").key == cheapest_mini.key
    # Images only go to vision models.
    assert model_of("image-1").has("vision")
    # ~300k tokens only go to models whose context holds them.
    assert by_id["long-1"]["usage"]["input_tokens"] > 250_000
    assert model_of("long-1").context_window >= by_id["long-1"]["usage"]["input_tokens"]
    # min_tier frontier never gets a mini (or standard) model.
    assert model_of("frontier-1").tier.value == "frontier"
    # o1-mini (pinned, retired: allowed with a warning) takes a system message, adapted into the user turn.
    assert model_of("o1-1").model == "o1-mini"
    assert by_id["o1-1"]["output"]
    assert by_id["o1-1"]["usage"]["reasoning_tokens"] > 0
    assert "o1-mini" in p.stderr and "retired" in p.stderr  # the pin warning is visible


def test_cascade_escalates_out_of_set_labels_and_ledger_has_both_attempts(tmp_path, sqlite_url):
    catalog = builtin_catalog()
    active_mini = [m for m in catalog if m.tier.value == "mini" and m.status == "active"]
    cheapest_mini = min(active_mini, key=lambda m: m.input_per_mtok + m.output_per_mtok)
    src = tmp_path / "c.jsonl"
    src.write_text(
        "\n".join(
            json.dumps({"id": f"c{i}", "task": "classify", "input": f"Item {i} is fine.", "labels": LABELS})
            for i in range(10)
        )
        + "\n"
    )
    # The cheapest mini model always answers outside the label set.
    cfg = SimulatorConfig(model_overrides={cheapest_mini.model: {"label_error_rate": 1.0}})
    with SimulatorThread(cfg) as sim:
        env = cli_env(sqlite_url, LLMBATCH_SIMULATOR_URL=sim.url)
        p, st = run_json(["run", str(src), "--simulate"], env)
        assert p.returncode == 0, p.stderr
        p2, st2 = run_json(["run", str(src), "--simulate", "--no-escalate"], env)
    assert st["counts"]["succeeded"] == 10
    rows = results(st["job_id"], env)
    assert all(r["model"] != cheapest_mini.model and r["attempts"] == 2 for r in rows)
    assert all(catalog.get(f"{r['provider']}/{r['model']}").tier.rank > cheapest_mini.tier.rank for r in rows)
    with get_engine(sqlite_url).connect() as c:
        att = c.execute(
            select(attempts.c.task_id, attempts.c.model, attempts.c.status, attempts.c.purpose, attempts.c.cost_picos)
            .where(attempts.c.job_id == st["job_id"])
            .order_by(attempts.c.task_id, attempts.c.attempt_no)
        ).all()
    assert len(att) == 20
    for first, second in zip(att[::2], att[1::2]):
        assert first.model == cheapest_mini.model and first.status == "invalid_output" and first.cost_picos > 0
        assert second.status == "succeeded" and second.purpose == "escalation"
    p3, rep = run_json(["report", st["job_id"]], env)
    assert rep["escalations"] == 10
    # With escalation off, the same tasks fail with the validation reason instead.
    assert p2.returncode == 3 and st2["counts"]["failed"] == 10
    assert "escalation disabled" in results(st2["job_id"], env)[0]["error"]
