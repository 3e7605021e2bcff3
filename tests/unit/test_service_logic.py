"""The service's pure parts and its HTTP edges in-process (Starlette's TestClient over a SQLite store):
money display, the job input rewrite for "auto" routing, request checks, tokens, the loopback rule."""

from __future__ import annotations

import sys

import orjson
import pytest
from starlette.testclient import TestClient

from llmbatch.config import Settings
from llmbatch.errors import ConfigError, InputError
from llmbatch.service import bind_host, check_installed
from llmbatch.service.app import build_app
from llmbatch.service.batches import _job_input, _metadata
from llmbatch.service.dashboard import money, money_unit
from llmbatch.service.errors import APIError
from llmbatch.service.tokens import create_token, parse_cap, revoke_token
from llmbatch.store.db import get_engine


@pytest.fixture
def settings(tmp_path):
    return Settings(database_url=f"sqlite:///{tmp_path}/svc.db", service_files_dir=str(tmp_path / "files"))


def test_money_shows_cents_above_a_dollar_and_micros_below():
    micro = 10**6  # pico-dollars per micro-dollar
    assert money(1_234_560_000 * micro) == "$1,234.56"
    assert money(4_899 * micro) == "$0.004899"
    assert money(None) == "—"
    assert money_unit([4_899 * micro]) == ("millionths of a dollar", micro)
    assert money_unit([250_000 * micro]) == ("US cents", 10_000 * micro)
    assert money_unit([12_000_000 * micro]) == ("USD", 1_000_000 * micro)


def _line(i, model):
    return {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    }


def test_auto_lines_lose_their_model_and_line_numbers_hold(tmp_path):
    src, dest = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(orjson.dumps(_line(1, "gpt-4o")) + b"\n\n" + orjson.dumps(_line(2, "auto")) + b"\n")
    _job_input(str(src), dest, cheapest=False)
    out = dest.read_bytes().split(b"\n")
    assert orjson.loads(out[0])["body"]["model"] == "gpt-4o" and out[1] == b""
    assert "model" not in orjson.loads(out[2])["body"]
    _job_input(str(src), dest, cheapest=True)  # batch metadata llmbatch_routing=cheapest: every line routes
    assert all("model" not in orjson.loads(x)["body"] for x in dest.read_bytes().split(b"\n") if x)


@pytest.mark.parametrize(
    "meta,fragment",
    [
        ({"llmbatch_budget_usd": "lots"}, "llmbatch_budget_usd"),
        ({"llmbatch_budget_usd": "-1"}, "llmbatch_budget_usd"),
        ({"llmbatch_routing": "fastest"}, "llmbatch_routing"),
        ({"n": 3}, "string"),
        ([1], "object"),
    ],
)
def test_bad_metadata_is_refused(meta, fragment):
    with pytest.raises(APIError) as e:
        _metadata(meta)
    assert e.value.status == 400 and e.value.param == "metadata" and fragment in e.value.message


def test_token_inputs(settings):
    assert parse_cap("2.50") == 2_500_000 * 10**6 and parse_cap(None) is None  # pico-dollars
    for bad in ("lots", "-1", "NaN"):
        with pytest.raises(InputError):
            parse_cap(bad)
    engine = get_engine(settings.database_url)
    with pytest.raises(InputError, match="token name"):
        create_token(engine, "has space")
    create_token(engine, "ops")
    with pytest.raises(InputError, match="exists"):
        create_token(engine, "ops")
    revoke_token(engine, "ops")
    with pytest.raises(InputError, match="no active token"):
        revoke_token(engine, "ops")


def test_without_tokens_only_loopback(settings):
    host, notice = bind_host(settings, "0.0.0.0")
    assert host == "127.0.0.1" and "no API token" in notice and "tokens create" in notice
    assert bind_host(settings, "localhost") == ("localhost", None)
    create_token(get_engine(settings.database_url), "ops")
    assert bind_host(settings, "0.0.0.0") == ("0.0.0.0", None)


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ConfigError, match=r"pip install 'llmbatch\[serve\]'"):
        check_installed()


def test_http_errors_have_openai_shape(settings):
    with TestClient(build_app(settings, simulate=True)) as client:
        r = client.get("/v1/batches/batch_missing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert client.get("/v1/batches?limit=500").json()["error"]["param"] == "limit"
        assert client.get("/v1/nothing-here").status_code == 404
        r = client.post(
            "/v1/files", files={"file": ("x.jsonl", b'{"custom_id": 1}\n{oops\n')}, data={"purpose": "batch"}
        )
        assert r.status_code == 400 and "line 1" in r.json()["error"]["message"]
        r = client.post("/v1/files", files={"file": ("x.jsonl", b"{}")}, data={"purpose": "fine-tune"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        empty = client.get("/v1/batches").json()
        assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        page = client.get("/dashboard/jobs/job-missing")
        assert page.status_code == 404 and "<h1>Not found</h1>" in page.text
        create_token(get_engine(settings.database_url), "ops")
        assert client.get("/v1/batches").status_code == 401
        assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/login"
