"""`llmbatch catalog sync` against the real LiteLLM price file of the installed `litellm` package (the dev
extra pins it; the package is only read as data, never imported)."""

from __future__ import annotations

import json
import sys
from datetime import date
from fractions import Fraction

import pytest
from click.testing import CliRunner

from llmbatch.catalog.loading import clear_cache, load_catalog
from llmbatch.catalog.pricing import price
from llmbatch.catalog.sync import installed_price_file, sync
from llmbatch.cli import main
from llmbatch.config import load_settings
from llmbatch.models import TaskLine, Usage
from llmbatch.prompts import build_request
from llmbatch.routing import route

TODAY = date(2026, 11, 30)
NON_CHAT = ("guard", "flux", "lyria", "tts", "audio", "embed", "moderation", "image", "whisper", "realtime")


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync") / "catalog.json"
    settings = load_settings(catalog_file=str(out), database_url="sqlite:///:memory:")
    res = sync(settings, today=TODAY)
    clear_cache()
    return res, load_catalog(settings)


def test_the_file_is_located_without_importing_litellm():
    path = installed_price_file()
    assert path.name.startswith("model_prices_and_context_window") and path.stat().st_size > 100_000
    assert "litellm" not in sys.modules


def test_sync_keeps_only_priced_text_chat_models(synced):
    res, cat = synced
    assert res.written and res.imported > 300 and res.added
    assert res.skipped["priced at $0 (free or experimental)"] > 0
    assert res.skipped["not a text chat model (image, audio, music, embedding or guard)"] > 0
    synced_keys = {f"{m['provider']}/{m['model']}" for m in json.loads(open(res.output).read())["models"]}
    for m in cat:
        if m.key in synced_keys:
            assert m.input_per_mtok > 0 and m.output_per_mtok > 0, m.key
            assert not any(w in m.model.lower() for w in NON_CHAT), m.key
            assert m.context_window >= 2048, m.key


def test_no_free_or_non_chat_model_is_ever_routed(synced):
    _, cat = synced
    creds = set(cat.providers)
    tasks = [
        TaskLine(id="c", task="classify", input="I love it", labels=["p", "n"]),
        TaskLine(id="s", task="summarize", input="word " * 2000),
        TaskLine(id="x", task="chat", input="hi"),
        TaskLine(id="i", task="chat", input="describe", images=["https://example.com/a.png"]),
    ]
    for t in tasks:
        d = route(t, build_request(t), cat, credentials=creds, now=1_796_000_000.0)
        assert d.candidates, t.id
        for c in d.candidates:
            assert c.model.input_per_mtok > 0 and c.model.output_per_mtok > 0, c.model.key
            assert not any(w in c.model.model.lower() for w in NON_CHAT), c.model.key
            assert c.model.status_on(TODAY) == "active", c.model.key


def test_a_300k_token_prompt_is_priced_at_the_long_context_rate(synced):
    _, cat = synced
    m = cat.get("gemini/gemini-2.5-pro")
    assert m.price_tiers and m.price_tiers[0].above_input_tokens == 200_000
    long = price(Usage(input_tokens=300_000, output_tokens=1_000), m).picos
    assert (
        Fraction(long, 10**12)
        == (300_000 * Fraction(m.price_tiers[0].input_per_mtok) + 1_000 * Fraction(m.price_tiers[0].output_per_mtok))
        / 10**6
    )
    assert m.price_tiers[0].input_per_mtok == 2 * m.input_per_mtok  # 2.50 vs 1.25: twice the short rate
    t = TaskLine(id="g", task="chat", input="word " * 300_000, model="gemini/gemini-2.5-pro")
    (c,) = route(t, build_request(t), cat, credentials=set(cat.providers), now=1_796_000_000.0).candidates
    assert c.estimated_picos == c.input_tokens_est * 2_500_000 + c.output_tokens_est * 15_000_000


def test_cli_dry_run_writes_nothing_and_names_what_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMBATCH_CATALOG_FILE", raising=False)
    monkeypatch.delenv("LLMBATCH_CONFIG", raising=False)
    r = CliRunner().invoke(main, ["catalog", "sync", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["written"] is False and out["added"] and not (tmp_path / "llmbatch.catalog.json").exists()
    r = CliRunner().invoke(main, ["catalog", "sync", "--from", str(tmp_path / "missing.json")])
    assert r.exit_code == 2


def test_a_dry_run_names_only_what_bills_differently(tmp_path):
    """A file without batch prices and without tier cache prices (as LiteLLM 1.74 has gemini-2.5-pro): the known
    batch discount is kept, and the tier change shows the cache prices that really differ."""
    from tests.unit.test_catalog_litellm import OLD_GEMINI_PRO

    src = tmp_path / "prices.json"
    src.write_text(json.dumps(OLD_GEMINI_PRO), "utf-8")
    settings = load_settings(catalog_file=str(tmp_path / "catalog.json"), database_url="sqlite:///:memory:")
    res = sync(settings, source=str(src), dry_run=True, today=TODAY)
    assert dict(res.changed)["gemini/gemini-2.5-pro"] == [
        "price_tiers: >200000:2.5/15 (cached 0.25, write 2.5) -> >200000:2.5/15"
    ]
    assert not res.written
