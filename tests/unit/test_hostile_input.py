"""Hostile input: every case of tests/data/hostile is refused at ingest with its line number, or handled safely.

While the corpus is ingested and its schemas are used to validate outputs, a Python audit hook records every
file open, socket connect and name lookup of this process, and a listening loopback socket waits for a
connection: no file named by a line is opened, no socket is opened, and the listener stays silent.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from llmbatch.config import InputLimits, load_settings
from llmbatch.errors import ConfigError, InputError
from llmbatch.image_inputs import image_problem
from llmbatch.ingest import LineError, parse_lines
from llmbatch.models import JobSpec, TaskLine
from llmbatch.providers.redact import REDACTED, redact, scrub
from llmbatch.specfile import load_schema_file, load_spec_file, read_bounded
from llmbatch.terminal_text import printable, rich_printable
from llmbatch.validate import InvalidOutput, schema_problem, validate_output

CORPUS = Path(__file__).parents[1] / "data" / "hostile"
SECRET_CONTENTS = "TOP-SECRET-CONTENTS-7f3a9c"
# Expectations of lines that cannot carry metadata (OpenAI Batch lines).
BATCH_EXPECT = {"batch-img-metadata": ("refused", "link-local")}


# ---------------------------------------------------------------- what this process touches

_recording: list[tuple[str, object]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _recording is None:
        return
    if event == "open":
        _recording.append((event, args[0]))
    elif event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
        _recording.append((event, args[1] if event == "socket.connect" else args[0]))


sys.addaudithook(_audit)


class Recorder:
    def __enter__(self):
        global _recording
        _recording = self.events = []
        return self

    def __exit__(self, *exc):
        global _recording
        _recording = None

    def network(self) -> list:
        return [e for e in self.events if e[0] != "open"]

    def opened(self, path: Path) -> bool:
        return any(e[0] == "open" and str(e[1]) == str(path) for e in self.events)


def assert_silent(listener: socket.socket) -> None:
    """A connection would sit completed in the backlog; accept() finds none."""
    with pytest.raises(BlockingIOError):
        conn, addr = listener.accept()
        conn.close()
        raise AssertionError(f"a connection arrived from {addr}")


@pytest.fixture(scope="module")
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "credentials.json"
    p.write_text(SECRET_CONTENTS)
    return p


def corpus_text(secret_file: Path, port: int) -> str:
    text = (CORPUS / "lines.jsonl").read_text("utf-8")
    return text.replace("{SECRET_FILE}", str(secret_file)).replace("{SILENT_PORT}", str(port))


def expectations(text: str) -> dict[int, tuple[str, str, str]]:
    """line number -> (id, 'accepted'|'refused', phrase)."""
    out = {}
    for n, raw in enumerate(text.splitlines(), 1):
        obj = json.loads(raw)
        if "custom_id" in obj:
            out[n] = (obj["custom_id"], *BATCH_EXPECT[obj["custom_id"]])
        else:
            out[n] = (obj["id"], obj["metadata"]["expect"], obj["metadata"].get("why", ""))
    return out


CASES = expectations((CORPUS / "lines.jsonl").read_text("utf-8"))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, secret_file, listener):
    """The corpus parsed once, with everything the process touched meanwhile."""
    path = tmp_path_factory.mktemp("corpus") / "hostile.jsonl"
    path.write_text(corpus_text(secret_file, listener.getsockname()[1]), "utf-8")
    with Recorder() as rec:
        items = dict(parse_lines(path, JobSpec()))
        # The accepted schemas in use: validating an output never fetches either.
        for item in items.values():
            if isinstance(item, TaskLine) and item.task == "extract":
                try:
                    validate_output(item, '{"name": "Ada", "children": [{"name": "Byron"}]}')
                except InvalidOutput:
                    pass
    return items, rec


@pytest.mark.parametrize("line_no", sorted(CASES), ids=[repr(CASES[n][0])[1:-1][:40] for n in sorted(CASES)])
def test_corpus_line(line_no, ingested):
    items, _ = ingested
    task_id, expect, why = CASES[line_no]
    item = items[line_no]
    if expect == "accepted":
        assert isinstance(item, TaskLine), item
        assert item.id == task_id  # ids with escapes are kept exactly
    else:
        assert isinstance(item, LineError), f"line {line_no} ({task_id!r}) was accepted"
        assert item.reason.startswith(f"line {line_no}: ") and why in item.reason, item.reason
        assert item.task_id == task_id


def test_corpus_reads_no_file_and_opens_no_socket(ingested, secret_file, listener):
    items, rec = ingested
    assert len(items) == len(CASES)
    assert not rec.opened(secret_file)
    assert rec.network() == []
    assert_silent(listener)
    reasons = " ".join(i.reason + (i.excerpt or "") for i in items.values() if isinstance(i, LineError))
    assert SECRET_CONTENTS not in reasons


def test_validator_refuses_retrieval_even_without_ingest(secret_file, listener):
    """Defence in depth: a task stored before these checks (never seen by ingest) still fetches nothing."""
    port = listener.getsockname()[1]
    schemas = [
        {"$ref": f"file://{secret_file}"},
        {"properties": {"a": {"$ref": f"http://127.0.0.1:{port}/s.json"}}},
        {"$ref": "#"},
    ]
    with Recorder() as rec:
        for schema in schemas:
            task = TaskLine.model_construct(id="x", task="extract", input="x", json_schema=schema)
            with pytest.raises(InvalidOutput) as e:
                validate_output(task, '{"a": 1}')
            assert SECRET_CONTENTS not in str(e.value) and len(str(e.value)) < 400
    assert not rec.opened(secret_file) and rec.network() == []
    assert_silent(listener)


def test_validation_is_bounded_in_time():
    """A catastrophic pattern ((a|aa)+$ on 60 a's takes minutes with re) ends at the timeout."""
    for schema, output in (
        ({"type": "string", "pattern": "(a|aa)+$"}, json.dumps("a" * 60 + "!")),
        (
            {"type": "object", "patternProperties": {"(a|aa)+$": {}}, "additionalProperties": False},
            json.dumps({"a" * 60 + "!": 1}),
        ),
    ):
        task = TaskLine(id="x", task="extract", input="x", schema=schema)
        started = time.monotonic()
        with pytest.raises(InvalidOutput, match="schema_validation_timeout_s"):
            validate_output(task, output, timeout_s=0.2)
        assert time.monotonic() - started < 3


def test_validation_still_works_for_ordinary_patterns():
    task = TaskLine(
        id="x",
        task="extract",
        input="x",
        schema={
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        },
    )
    assert validate_output(task, '{"zip": "12345", "x-n": 1}') == {"zip": "12345", "x-n": 1}
    for bad, where in (('{"zip": "1234"}', "zip"), ('{"x-n": "a"}', "x-n"), ('{"other": 1}', "(root)")):
        with pytest.raises(InvalidOutput, match=re.escape(f"at {where}")):
            validate_output(task, bad)


def test_deep_output_is_refused_not_crashed():
    task = TaskLine(
        id="x",
        task="extract",
        input="x",
        schema={"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"},
    )
    with pytest.raises(InvalidOutput, match="nested more than"):
        validate_output(task, "[" * 500 + "]" * 500)


def test_schema_size_limit_names_the_setting():
    schema = {"type": "object", "description": "x" * 5000}
    assert "max_schema_bytes" in schema_problem(schema, max_bytes=1000, max_depth=32)
    assert schema_problem(schema, max_bytes=10_000, max_depth=32) is None


def test_unevaluated_properties_with_pattern_properties_is_refused():
    schema = {"type": "object", "patternProperties": {"^a": {}}, "unevaluatedProperties": False}
    assert "unevaluatedProperties" in schema_problem(schema, max_bytes=10_000, max_depth=32)


# ---------------------------------------------------------------- settings reach ingest


def _one_line(tmp_path, **line) -> Path:
    p = tmp_path / "one.jsonl"
    p.write_bytes(orjson.dumps(line) + b"\n" + orjson.dumps({"id": "fine", "task": "summarize", "input": "x"}))
    return p


@pytest.mark.parametrize(
    "limit, line, phrase",
    [
        (
            {"max_labels_per_line": 2},
            {"task": "classify", "input": "x", "labels": ["a", "b", "c"]},
            "max_labels_per_line",
        ),
        (
            {"max_images_per_line": 1},
            {"task": "summarize", "input": "x", "images": ["https://example.com/1.png", "https://example.com/2.png"]},
            "max_images_per_line",
        ),
        (
            {"max_image_bytes": 10},
            {
                "task": "summarize",
                "input": "x",
                "images": ["data:image/gif;base64," + base64.b64encode(b"GIF89a" + bytes(40)).decode()],
            },
            "max_image_bytes",
        ),
        (
            {"max_schema_bytes": 100},
            {"task": "extract", "input": "x", "schema": {"type": "object", "description": "d" * 200}},
            "max_schema_bytes",
        ),
        (
            {"max_schema_depth": 3},
            {
                "task": "extract",
                "input": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}},
            },
            "max_schema_depth",
        ),
        ({"max_line_bytes": 60}, {"task": "summarize", "input": "x" * 100}, "max_line_bytes"),
    ],
)
def test_each_limit_is_a_setting_named_in_its_error(tmp_path, monkeypatch, limit, line, phrase):
    path = _one_line(tmp_path, id="over", **line)
    ((name, value),) = limit.items()
    monkeypatch.setenv(f"LLMBATCH_{name.upper()}", str(value))
    monkeypatch.delenv("LLMBATCH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert getattr(settings.input_limits, name) == value
    items = dict(parse_lines(path, JobSpec(), limits=settings.input_limits))
    assert isinstance(items[1], LineError) and phrase in items[1].reason, items[1]
    assert isinstance(items[2], TaskLine)  # the valid line still runs
    # Under the default limits the same line is fine (or, for the line size, smaller than 8 MiB).
    assert isinstance(dict(parse_lines(path, JobSpec()))[1], TaskLine)


def test_line_size_error_names_an_existing_setting(tmp_path):
    p = _one_line(tmp_path, id="big", task="summarize", input="y" * 500)
    reason = dict(parse_lines(p, JobSpec(), limits=InputLimits(max_line_bytes=100)))[1].reason
    assert "raise max_line_bytes" in reason and "LLMBATCH_MAX_LINE_BYTES" in reason
    assert "max_line_bytes" in {f for f in InputLimits.__dataclass_fields__}


def test_limits_from_toml_and_bad_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k in ("LLMBATCH_CONFIG", "LLMBATCH_ALLOW_HTTP_IMAGES", "LLMBATCH_MAX_SPEC_BYTES"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "llmbatch.toml").write_text("allow_http_images = true\nmax_spec_bytes = 4096\n")
    limits = load_settings().input_limits
    assert limits.allow_http_images is True and limits.max_spec_bytes == 4096
    assert image_problem("http://example.com/x.png", limits) is None
    monkeypatch.setenv("LLMBATCH_MAX_SPEC_BYTES", "lots")
    with pytest.raises(ConfigError, match="(?i)max_spec_bytes"):
        load_settings()


def test_local_images_allowed_by_setting():
    limits = InputLimits(allow_local_images=True, allow_http_images=True)
    for url in ("file:///srv/images/a.png", "http://127.0.0.1:8000/a.png", "https://10.1.2.3/a.png"):
        assert image_problem(url, limits) is None, url
    assert "non-public" in image_problem("https://10.1.2.3/a.png", InputLimits())


@pytest.mark.parametrize(
    "url",
    [
        "https://[fe80::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://[64:ff9b::a9fe:a9fe]/x",
        "https://0177.0.0.1/x",
        "https://0/x",
        "https://[::]/x",
        "https://224.0.0.1/x",
        "https://100.64.0.1/x",
        "https://169.254.169.254./x",
        "HTTPS://LOCALHOST/x",
        "https://user@127.0.0.1/x",
        "https://example.com@169.254.169.254/x",
    ],
)
def test_non_public_hosts_in_any_notation(url):
    assert image_problem(url, InputLimits()) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.png",
        "https://8.8.8.8/a.png",
        "https://[2606:4700::1111]/a.png",
        "https://cdn.example.co.uk:8443/a/b.jpg?x=1",
    ],
)
def test_public_hosts_pass(url):
    assert image_problem(url, InputLimits()) is None


# ---------------------------------------------------------------- redaction before trimming

KEY = "hk/Zq8+T4vW9xR2mN7pL3sJ6yB1cF5gH0dK=Xe"  # a custom provider's key: no sk- shape for the patterns to catch


def fragments(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("cut_at", [250, 280, 290, 295, 299, 300, 305])
def test_key_across_the_cut_is_redacted_not_left_as_a_fragment(cut_at):
    text = "x" * (cut_at - 10) + " " + KEY + " tail of the message"
    out = scrub(text, [KEY])
    assert len(out) <= 300
    assert not any(f in out for f in fragments(KEY)), out


def test_key_in_encoded_forms_is_redacted():
    forms = {
        "url-encoded": quote(KEY, safe=""),
        "url-encoded lower": quote(KEY, safe="").lower(),
        "basic auth": base64.b64encode(f"user:{KEY}".encode()).decode(),
        "base64 at offset 0": base64.b64encode(KEY.encode()).decode(),
        "base64 at offset 1": base64.b64encode(b"a" + KEY.encode()).decode(),
        "base64 at offset 2": base64.b64encode(b"ab" + KEY.encode()).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(b":" + KEY.encode()).decode(),
    }
    for name, form in forms.items():
        out = redact(f"Authorization failed for Basic {form} (callback ?k={form})", [KEY])
        assert REDACTED in out, name
        core = form[3:-3]
        assert core not in out, (name, out)


def test_redaction_keeps_ordinary_text():
    assert redact("model gpt-4o is overloaded", [KEY]) == "model gpt-4o is overloaded"
    assert scrub("a\nb\x1b[2Jc", []) == "a b\\x1b[2Jc"


# ---------------------------------------------------------------- terminal text


def test_printable_escapes_controls_and_bidi():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\x9b31m\x07\r\n\t") == "x\\x9b31m\\x07\\r\\n\\t"
    assert printable("abc\u202edef\u2066") == "abc\\u202edef\\u2066"
    assert printable("ünïcode, emoji 🙂 and CJK 漢字") == "ünïcode, emoji 🙂 and CJK 漢字"
    assert rich_printable("[link=file:///etc/passwd]x[/link]") == "\\[link=file:///etc/passwd]x\\[/link]"


# ---------------------------------------------------------------- spec files


def test_alias_bomb_is_refused_before_expansion():
    with pytest.raises(InputError, match="max_spec_nodes") as e:
        load_spec_file(CORPUS / "alias_bomb.yaml", InputLimits())
    assert "\n" not in str(e.value)


def test_recursive_alias_is_refused():
    with pytest.raises(InputError, match="contains itself"):
        load_spec_file(CORPUS / "recursive_alias.yaml", InputLimits())


def test_spec_reading_stops_at_the_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 20_000 + "task: summarize\n")
    with pytest.raises(InputError, match="max_spec_bytes"):
        load_spec_file(big, InputLimits(max_spec_bytes=100_000))
    with pytest.raises(InputError, match="max_spec_bytes"):
        read_bounded("/dev/zero", 1 << 20, "spec file")
    with pytest.raises(InputError, match="max_spec_bytes"):
        load_schema_file("/dev/zero", InputLimits())


def test_ordinary_spec_with_anchors_still_loads(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("task: extract\nname: &n people\nschema:\n  type: object\n  title: *n\n")
    assert load_spec_file(spec, InputLimits()) == {
        "task": "extract",
        "name": "people",
        "schema": {"type": "object", "title": "people"},
    }
    spec.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_spec_file(spec, InputLimits())
    spec.write_text("task: [unclosed\n")
    with pytest.raises(InputError, match=r"invalid YAML: line \d+, column \d+"):
        load_spec_file(spec, InputLimits())
