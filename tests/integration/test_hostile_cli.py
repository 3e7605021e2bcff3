"""Hostile input through the real CLI: the corpus runs (valid lines succeed, the rest are named with their line
numbers), terminal escapes are shown escaped in tables and exact in --json, a provider that echoes the key
across the 300-character cut leaves no fragment of it anywhere, and spec bombs are refused in bounded memory.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from tests.support.cli import REPO, cli_env, custom_provider_toml, run_cli, run_json
from tests.unit.test_hostile_input import CORPUS, SECRET_CONTENTS, assert_silent, corpus_text, expectations, listener  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

PROVIDER_KEY_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "TOGETHER_API_KEY",
)
RAW_CONTROLS = ("\x1b", "\x9b", "\x07", "\u202e")


def _no_raw_controls(text: str, what: str) -> None:
    found = [repr(c) for c in RAW_CONTROLS if c in text]
    assert not found, f"{what} printed raw control characters {found}"


def test_corpus_valid_lines_run_and_each_bad_line_is_named(tmp_path, sqlite_url, listener):  # noqa: F811
    secret = tmp_path / "credentials.json"
    secret.write_text(SECRET_CONTENTS)
    text = corpus_text(secret, listener.getsockname()[1])
    src = tmp_path / "hostile.jsonl"
    src.write_text(text, "utf-8")
    cases = expectations(text)
    accepted = {tid for tid, expect, _ in cases.values() if expect == "accepted"}
    env = cli_env(sqlite_url)

    p, st = run_json(["run", str(src), "--simulate"], env)
    assert p.returncode == 2, p.stderr[-3000:]  # the valid lines ran; the input was not clean
    assert st["counts"]["total"] == len(accepted) and st["counts"]["succeeded"] == len(accepted), st
    assert ": line 10: " in p.stderr  # the first bad lines are named right away
    _no_raw_controls(p.stderr, "run (line errors)")

    job = st["job_id"]
    results = [orjson.loads(x) for x in run_cli(["results", job], env).stdout.splitlines()]
    assert {r["id"] for r in results} == accepted  # ids with escapes come back byte-exact in jsonl

    p_status = run_cli(["status", job, "--errors"], env)
    for n, (_, expect, why) in cases.items():  # every bad line, by number, with its reason
        if expect == "refused":
            line = next((x for x in p_status.stdout.splitlines() if x.startswith(f"line {n}: ")), None)
            assert line is not None and why in line, (n, why, line)

    # Terminal escapes and rich markup in ids: escaped in tables, exact in --json.
    p_route = run_cli(["route", str(src), "--simulate"], env)
    p_table = run_cli(["report", job], env)
    p_json, rep = run_json(["report", job], env)
    for p2, what in ((p_status, "status --errors"), (p_route, "route table"), (p_table, "report table")):
        assert p2.returncode == 0, (what, p2.stderr)
        _no_raw_controls(p2.stdout + p2.stderr, what)
    assert "esc-\\x1b[2J\\x1b]52;c;aGk=\\x07-\\x9b31m-\\u202e" in p_table.stdout, p_table.stdout
    assert "[link=file:///etc/passwd]click[/link]" in p_table.stdout  # shown as written, not made a link
    assert "\\x1b" in p_route.stdout
    assert {t["id"] for t in rep["most_expensive_tasks"]} == accepted

    everything = "".join(x.stdout + x.stderr for x in (p, p_status, p_route, p_table, p_json))
    assert SECRET_CONTENTS not in everything
    assert SECRET_CONTENTS.encode() not in Path(sqlite_url.removeprefix("sqlite:///")).read_bytes()
    assert_silent(listener)


# ---------------------------------------------------------------- redaction across the cut, end to end

KEY = "hk/Zq8+T4vW9xR2mN7pL3sJ6yB1cF5gH0dK=Xe9uA"


def _error_body(case: str) -> tuple[int, str, bytes]:
    if case == "cut":  # the key straddles the 300th character of the provider's message
        msg = "Invalid request: " + "x" * 270 + " " + KEY + " was rejected"
        return 400, "application/json", orjson.dumps({"error": {"message": msg, "type": "invalid_request_error"}})
    if case == "b64":
        basic = base64.b64encode(f"user:{KEY}".encode()).decode()
        msg = "y" * 250 + f" upstream said Basic {basic} is not allowed"
        return 400, "application/json", orjson.dumps({"error": {"message": msg, "type": "invalid_request_error"}})
    if case == "url":
        msg = "z" * 250 + f" callback https://hooks.example/cb?k={quote(KEY, safe='')} failed"
        return 400, "application/json", orjson.dumps({"error": {"message": msg, "type": "invalid_request_error"}})
    page = "<html><body>" + "<p>gateway</p>" * 20 + f"<pre>{KEY}</pre></body></html>"
    return 502, "text/html", page.encode()


class _EchoingProvider(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = json.dumps(body["messages"])
        case = next(c for c in ("cut", "b64", "url", "html") if f"case:{c}" in text)
        status, ctype, payload = _error_body(case)
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _needles() -> list[str]:
    forms = [KEY, quote(KEY, safe="")]
    for offset in range(3):
        enc = base64.b64encode(bytes(offset) + KEY.encode()).decode()
        forms.append(enc[3:-3])
    return [f[i : i + 10] for f in forms for i in range(len(f) - 9)]


def test_key_echoed_across_the_cut_leaves_no_fragment_anywhere(tmp_path, sqlite_url):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingProvider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = tmp_path / "llmbatch.toml"
        cfg.write_text(
            "[retry]\nbase_delay_s = 0.01\nmax_delay_s = 0.05\nmax_attempts_per_model = 2\n"
            "max_attempts_per_task = 2\n" + custom_provider_toml(f"http://127.0.0.1:{server.server_address[1]}/v1")
        )
        src = tmp_path / "in.jsonl"
        src.write_text(
            "".join(
                json.dumps({"id": f"t-{c}", "task": "summarize", "input": f"case:{c}", "model": "house/house-llama"})
                + "\n"
                for c in ("cut", "b64", "url", "html")
            )
        )
        env = cli_env(sqlite_url, LLMBATCH_CONFIG=str(cfg), HOUSE_KEY=KEY)
        for k in PROVIDER_KEY_VARS:
            env.pop(k, None)
        p, st = run_json(["-vv", "run", str(src)], env)
    finally:
        server.shutdown()
    assert p.returncode == 3 and st["counts"]["failed"] == 4, p.stderr[-3000:]
    blobs = {"run": p.stdout + p.stderr}
    job = st["job_id"]
    # The store file is searched whole below; these are the ways a user reads errors back (results,
    # the audit rows, the report table), at -vv.
    for args in (["results", job], ["report", job, "--attempts"], ["report", job]):
        q = run_cli(["-vv", *args], env)
        blobs[" ".join(args)] = q.stdout + q.stderr
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    for f in db.parent.glob(db.name + "*"):
        blobs[f.name] = f.read_bytes().decode("utf-8", "replace")
    errors = {r["id"]: r["error"] for r in map(orjson.loads, blobs[f"results {job}"].splitlines())}
    assert "[REDACTED]" in errors["t-cut"], errors  # the key really was echoed, and caught
    assert all("…" in e for e in errors.values()), errors  # each message was cut where the key was
    leaks = sorted({f"{name}: {n!r}" for name, blob in blobs.items() for n in _needles() if n in blob})
    assert not leaks, "key fragments leaked:\n" + "\n".join(leaks[:20])


# ---------------------------------------------------------------- spec files in bounded memory


def _estimate_rss(args: list[str], env: dict, tmp_path: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MiB) of `llmbatch estimate ...` as a child process."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmbatch.cli", "estimate", *args],
            env=env,
            cwd=str(REPO),
            stdout=o,
            stderr=e,
            # A safety net so a regression fails this test instead of the machine.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.read_text(), usage.ru_maxrss // 1024


def test_spec_bombs_are_refused_in_bounded_memory(tmp_path, sqlite_url):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "input": "Ada Lovelace, born 1815."}) + "\n")
    good = tmp_path / "good.yaml"
    good.write_text("task: extract\nschema:\n  type: object\n  properties:\n    name: {type: string}\n")
    env = cli_env(sqlite_url)
    code, err, baseline = _estimate_rss([str(src), "--simulate", "--spec", str(good)], env, tmp_path)
    assert code == 0, err
    # (The recursive alias, an oversized file and --schema /dev/zero are the same code paths: unit tests.)
    for spec, phrase in ((CORPUS / "alias_bomb.yaml", "max_spec_nodes"), ("/dev/zero", "max_spec_bytes")):
        code, err, rss = _estimate_rss([str(src), "--simulate", "--spec", str(spec)], env, tmp_path)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and phrase in lines[0] and str(spec) in lines[0], (spec, code, err)
        print(f"\n{spec}: peak RSS {rss} MiB (a valid spec: {baseline} MiB)")
        assert rss < baseline + 64, (spec, rss, baseline)


def test_a_run_with_no_provider_key_is_one_line_and_stores_nothing(tmp_path, sqlite_url):
    """Without a key (and without --simulate) every task would fail `no credentials`: say so before storing."""
    src = tmp_path / "t.jsonl"
    src.write_text('{"id": "a", "task": "classify", "input": "fine", "labels": ["pos", "neg"]}\n')
    env = {k: v for k, v in cli_env(sqlite_url).items() if k not in PROVIDER_KEY_VARS}
    p = run_cli(["run", str(src), "--budget", "1"], env)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("llmbatch: no provider key is set (") and "OPENAI_API_KEY" in line and "--simulate" in line
    assert json.loads(run_cli(["jobs", "--json"], env).stdout) == []


def test_one_provider_key_is_enough_to_get_going(monkeypatch):
    from llmbatch.config import load_settings
    from llmbatch.errors import ConfigError
    from llmbatch.jobs import check_credentials

    for var in PROVIDER_KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(database_url="sqlite:///:memory:")
    with pytest.raises(ConfigError, match="no provider key is set"):
        check_credentials(settings, simulate=False)
    check_credentials(settings, simulate=True)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test")
    check_credentials(settings, simulate=False)
