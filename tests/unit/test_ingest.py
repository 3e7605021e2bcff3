"""Ingest: every bad-input corpus case gives the right line numbers and reasons, and valid lines still run."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from llmbatch.errors import InputError
from llmbatch.ingest import IngestReport, LineError, ingest, parse_lines
from llmbatch.models import JobSpec, TaskLine
from llmbatch.store.db import get_engine
from llmbatch.store.schema import input_errors, jobs, tasks

CORPUS = Path(__file__).parents[1] / "data" / "bad_input"


def run(path, spec: JobSpec | None = None, **kw) -> tuple[dict[int, str], dict[int, LineError]]:
    """(line -> accepted id, line -> error) for a file."""
    ok, bad = {}, {}
    for line_no, item in parse_lines(path, spec or JobSpec(), **kw):
        if isinstance(item, LineError):
            assert item.line_no == line_no
            assert item.reason.startswith(f"line {line_no}: "), item.reason
            bad[line_no] = item
        else:
            ok[line_no] = item.id
    return ok, bad


def write(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def line(**kw) -> bytes:
    return orjson.dumps(kw)


# ---------------------------------------------------------------- the corpus

# file -> (accepted {line: id}, rejected {line: fragments every one of which the reason contains})
EXPECTED: dict[str, tuple[dict[int, str], dict[int, tuple[str, ...]]]] = {
    "invalid_json.jsonl": (
        {1: "j-1", 3: "j-3", 6: "j-6"},
        {
            2: ("invalid JSON", "unexpected end of data", "column 35"),
            4: ("invalid JSON", "column 2"),
            5: ("invalid JSON", "unexpected content after document"),
        },
    ),
    "invalid_utf8.jsonl": (
        {1: "u-1", 3: "u-3"},
        {
            2: ("line 2: not valid UTF-8 at byte offset 48",),
            4: ("line 4: not valid UTF-8 at byte offset 49",),
        },
    ),
    "bom_crlf.jsonl": ({1: "b-1", 3: "b-2", 5: "b-3"}, {}),
    "missing_fields.jsonl": (
        {6: "m-6"},
        {
            1: ("field 'input'", "needs 'input'"),
            2: ("field 'labels'", "classify needs 'labels'", "--labels"),
            3: ("field 'schema'", "extract needs 'schema'"),
            4: ("field 'id' is missing",),
            5: ("field 'task' is missing", "summarize, classify, extract, chat", "--task"),
            7: ("field 'input' is empty",),
        },
    ),
    "mistyped_fields.jsonl": (
        {9: "t-9"},
        {
            1: ("field 'max_output_tokens'", "valid integer", '"lots"'),
            2: ("field 'labels'", "valid list", '"a,b"'),
            3: ("field 'temperature'", "less than or equal to 2"),
            4: ("field 'id'", "must be a string"),
            5: ("field 'messages'", "valid list"),
            6: ("field 'messages[0].role'", "'user'", '"tool"'),
            7: ("field 'input'", "valid string", "42"),
            8: ("unknown field 'colour'", "valid fields:", "max_output_tokens"),
        },
    ),
    "unknown_task.jsonl": (
        {2: "k-2"},
        {
            1: ("field 'task': unknown task \"translate\"", "summarize, classify, extract, chat"),
            3: ("unknown task 7",),
        },
    ),
    "duplicate_ids.jsonl": (
        {**{n: f"r-{n}" for n in (1, 2, 4, 6, 7, 8, 9, 10, 11)}, 3: "r-5", 5: "r-x", 13: "7"},
        {
            12: ("line 12: duplicate id 'r-5' (first seen on line 3)",),
            14: ("line 14: duplicate id '7' (first seen on line 13)",),
        },
    ),
    "non_object.jsonl": (
        {6: "n-6"},
        {
            1: ("expected a JSON object", "got an array"),
            2: ("got a string",),
            3: ("got a number",),
            4: ("got null",),
            5: ("got a boolean",),
        },
    ),
    "openai_batch.jsonl": (
        {3: "ob-3"},
        {
            1: ("url '/v1/embeddings' is not supported", "POST /v1/chat/completions"),
            2: ("method 'GET' is not supported", "POST /v1/chat/completions"),
            4: ("body.tools is not supported",),
            5: ("field 'body.messages[0].role'", '"robot"'),
        },
    ),
    "empty.jsonl": ({}, {}),
    "blank_only.jsonl": ({}, {}),
    "only_bad.jsonl": (
        {},
        {
            1: ("invalid JSON",),
            2: ("field 'task' is missing",),
            3: ("got an array",),
            4: ("not valid UTF-8 at byte offset 45",),
            5: ("field 'input'",),
        },
    ),
}


def test_every_corpus_file_has_expectations():
    assert sorted(p.name for p in CORPUS.glob("*.jsonl")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(name):
    want_ok, want_bad = EXPECTED[name]
    ok, bad = run(CORPUS / name)
    assert ok == want_ok
    assert sorted(bad) == sorted(want_bad)
    for line_no, fragments in want_bad.items():
        for fragment in fragments:
            assert fragment in bad[line_no].reason, (line_no, fragment, bad[line_no].reason)


def test_errors_carry_the_readable_id_and_a_short_excerpt():
    _, bad = run(CORPUS / "mistyped_fields.jsonl")
    assert bad[1].task_id == "t-1"
    assert bad[4].task_id is None  # `true` is no id
    assert bad[1].excerpt.startswith('{"id": "t-1"')
    _, bad = run(CORPUS / "invalid_utf8.jsonl")
    assert "\ufffd" in bad[2].excerpt  # decoded with errors="replace"
    _, bad = run(CORPUS / "openai_batch.jsonl")
    assert bad[1].task_id == "ob-1"


def test_excerpt_is_capped(tmp_path):
    p = write(tmp_path, b'{"id": "long", "task": "nope", "input": "' + b"x" * 5000 + b'"}\n')
    (err,) = run(p)[1].values()
    assert len(err.excerpt) == 120


def test_one_sentence_for_several_bad_fields(tmp_path):
    p = write(tmp_path, line(id="a", task="summarize", input=3, max_output_tokens=0, temperature="hot") + b"\n")
    (err,) = run(p)[1].values()
    assert "\n" not in err.reason
    for field in ("'input'", "'max_output_tokens'", "'temperature'"):
        assert field in err.reason


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read input file"):
        list(parse_lines(tmp_path / "nope.jsonl", JobSpec()))


def test_last_line_without_newline_and_crlf_are_read(tmp_path):
    p = write(tmp_path, line(id="a", task="summarize", input="x") + b"\r\n" + line(id="b", task="summarize", input="y"))
    assert run(p) == ({1: "a", 2: "b"}, {})


def test_bom_only_counts_on_line_one(tmp_path):
    bom = b"\xef\xbb\xbf"
    p = write(
        tmp_path,
        bom + line(id="a", task="summarize", input="x") + b"\n" + bom + line(id="b", task="summarize", input="y"),
    )
    ok, bad = run(p)
    assert ok == {1: "a"}
    assert "invalid JSON" in bad[2].reason or "not valid UTF-8" in bad[2].reason


def test_utf8_offset_counts_the_bom(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbf" + b'{"id": "\xff"}\n')
    assert "byte offset 11" in run(p)[1][1].reason  # 3 BOM bytes + 8


# ---------------------------------------------------------------- long lines


def test_ten_megabyte_line_is_rejected_with_size_and_limit(tmp_path):
    big = b'{"id": "big", "task": "summarize", "input": "' + b"a" * (10 * 2**20) + b'"}'
    p = write(
        tmp_path,
        line(id="a", task="summarize", input="x")
        + b"\n"
        + big
        + b"\n"
        + line(id="b", task="summarize", input="y")
        + b"\n",
    )
    ok, bad = run(p)
    assert ok == {1: "a", 3: "b"}
    reason = bad[2].reason
    assert f"{len(big):,} bytes" in reason and f"{8 * 2**20:,} bytes" in reason
    assert bad[2].excerpt.startswith('{"id": "big"')


def test_long_line_is_skipped_in_bounded_memory(tmp_path):
    limit = 256 << 10
    big = b'{"id": "big", "input": "' + b"a" * (64 * limit) + b'"}'
    p = write(tmp_path, big + b"\r\n" + line(id="b", task="summarize", input="y"))
    tracemalloc.start()
    try:
        ok, bad = run(p, max_line_bytes=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ok == {2: "b"}
    assert f"{len(big):,} bytes" in bad[1].reason  # the size excludes the CRLF
    # A few pieces of the limit's size plus the 1 MiB read buffer; never the 16 MiB line.
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_line_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not(tmp_path, ending):
    base = line(id="a", task="summarize", input="x")
    limit = len(base)
    assert run(write(tmp_path, base + ending), max_line_bytes=limit) == ({1: "a"}, {})
    over = line(id="a", task="summarize", input="xy")
    ok, bad = run(write(tmp_path, over + ending), max_line_bytes=limit)
    assert ok == {} and f"{limit + 1:,} bytes, over the limit of {limit:,}" in bad[1].reason


# ---------------------------------------------------------------- job defaults


def test_spec_defaults_make_bare_lines_valid(tmp_path):
    p = write(
        tmp_path,
        b"\n".join(
            [
                line(id="a", input="Great product"),
                line(id="b", input="Awful", labels=["good", "bad"]),  # the line's own labels win
                line(id="c", input="So-so", labels=None),  # null counts as absent
            ]
        ),
    )
    spec = JobSpec(
        task="classify",
        labels=["positive", "negative"],
        max_output_tokens=5,
        min_tier="standard",
        models=["gpt-4o-mini"],
        deny=["gpt-4o"],
    )
    got = {n: t for n, t in parse_lines(p, spec)}
    assert got[1].task == "classify" and got[1].labels == ["positive", "negative"]
    assert got[1].max_output_tokens == 5 and got[1].min_tier.value == "standard" and got[1].models == ["gpt-4o-mini"]
    assert got[2].labels == ["good", "bad"]
    assert got[3].labels == ["positive", "negative"]


def test_task_specific_defaults_only_reach_lines_of_that_task(tmp_path):
    p = write(
        tmp_path,
        b"\n".join(
            [
                line(id="a", input="x"),
                line(id="b", task="chat", messages=[{"role": "user", "content": "hi"}]),
                line(id="c", task="extract", input="Invoice 7"),
            ]
        ),
    )
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    got = {n: t for n, t in parse_lines(p, JobSpec(task="classify", labels=["a", "b"], schema=schema, model="gpt-4o"))}
    assert got[1].labels == ["a", "b"] and got[1].json_schema is None
    assert got[2].labels is None and got[2].model == "gpt-4o"
    assert got[3].json_schema == schema and got[3].labels is None


def test_without_a_spec_task_a_bare_line_is_told_to_pass_task(tmp_path):
    (err,) = run(write(tmp_path, line(id="a", input="x")))[1].values()
    assert "--task" in err.reason


# ---------------------------------------------------------------- OpenAI Batch lines


def batch(custom_id="q-1", **body) -> bytes:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def one(tmp_path, data: bytes, spec: JobSpec | None = None) -> TaskLine | LineError:
    ((_, item),) = list(parse_lines(write(tmp_path, data), spec or JobSpec()))
    return item


def test_openai_batch_chat_line(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarize this."}]
    t = one(tmp_path, batch("q-1", model="gpt-4o-mini", messages=msgs, max_tokens=50, temperature=0.2, top_p=0.9))
    assert isinstance(t, TaskLine)
    assert (t.id, t.task, t.model, t.max_output_tokens, t.temperature) == ("q-1", "chat", "gpt-4o-mini", 50, 0.2)
    assert [m.model_dump() for m in t.messages] == msgs
    assert t.metadata == {"openai_batch": True}


def test_openai_batch_max_completion_tokens_wins_over_max_tokens(tmp_path):
    t = one(tmp_path, batch(max_tokens=50, max_completion_tokens=80))
    assert t.max_output_tokens == 80


def test_openai_batch_json_schema_becomes_extract(tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    t = one(tmp_path, batch(model="gpt-4o-mini", response_format=fmt))
    assert t.task == "extract" and t.json_schema == schema and t.model == "gpt-4o-mini"
    t = one(tmp_path, batch(response_format={"type": "json_object"}))
    assert t.task == "extract" and t.json_schema == {"type": "object"}
    assert one(tmp_path, batch(response_format={"type": "text"})).task == "chat"


def test_openai_batch_line_without_model_is_routed_or_takes_the_spec_model(tmp_path):
    assert one(tmp_path, batch()).model is None
    assert one(tmp_path, batch(), JobSpec(model="gpt-4.1-nano", task="classify")).model == "gpt-4.1-nano"
    assert one(tmp_path, batch(), JobSpec(task="classify")).task == "chat"  # the batch line says what it is


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (orjson.dumps({"custom_id": "x", "url": "/v1/chat/completions", "body": {}}), "method None is not supported"),
        (orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/responses", "body": {}}), "url '/v1/responses'"),
        (orjson.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}), "no 'custom_id'"),
        (
            orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": []}),
            "'body' must be",
        ),
        (
            orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}),
            "body.messages is missing",
        ),
        (
            orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}, "extra": 1}),
            "unknown key(s) 'extra'",
        ),
        (batch(n=3), "body.n = 3 is not supported"),
        (batch(stream=True), "body.stream"),
        (batch(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "no json_schema.schema"),
        (batch(response_format={"type": "grammar"}), "type 'grammar' is not supported"),
        (batch(max_completion_tokens=0), "field 'body.max_completion_tokens'"),
        (batch(max_tokens="many"), "field 'body.max_tokens'"),
        (batch(messages=[{"role": "user", "content": "hi", "name": "bob"}]), "unknown field 'body.messages[0].name'"),
        (batch(custom_id=""), "field 'custom_id'"),
    ],
)
def test_openai_batch_line_errors(tmp_path, data, fragment):
    err = one(tmp_path, data)
    assert isinstance(err, LineError)
    assert fragment in err.reason, err.reason


def test_a_native_line_with_a_stray_body_key_is_told_about_the_field(tmp_path):
    err = one(tmp_path, line(id="a", task="summarize", input="x", body="?"))
    assert "unknown field 'body'" in err.reason


def test_native_and_batch_lines_share_one_id_space(tmp_path):
    p = write(tmp_path, line(id="q-1", task="summarize", input="x") + b"\n" + batch("q-1"))
    assert run(p)[1][2].reason == "line 2: duplicate id 'q-1' (first seen on line 1)"


# ---------------------------------------------------------------- writing to the store


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """The write tests run on SQLite and on the real test Postgres (a fresh database per test)."""
    if request.param == "sqlite":
        return get_engine(f"sqlite:///{tmp_path}/store.db")
    return get_engine(request.getfixturevalue("fresh_postgres_url"))


def new_job(conn) -> str:
    job_id = "job-" + uuid.uuid4().hex[:10]
    conn.execute(jobs.insert().values(id=job_id, created_at=time.time()))
    return job_id


def stored(engine, job_id):
    with engine.connect() as conn:
        t = conn.execute(sa.select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.seq)).mappings().all()
        e = (
            conn.execute(
                sa.select(input_errors).where(input_errors.c.job_id == job_id).order_by(input_errors.c.line_no)
            )
            .mappings()
            .all()
        )
    return t, e


def test_ingest_writes_tasks_and_input_errors(engine, tmp_path):
    data = (
        b"".join(
            (line(id=f"d-{i}", task="summarize", input=f"text {i}") if i % 3 else b"{broken") + b"\n"
            for i in range(1, 23)
        )
        + line(id="c", task="classify", input="good", labels=["pos", "neg"])
        + b"\n"
    )
    p = write(tmp_path, data)
    with engine.begin() as conn:
        job_id = new_job(conn)
        report = ingest(conn, job_id, p, JobSpec(), batch_size=4, max_errors_kept=2)
    rows, errs = stored(engine, job_id)
    assert isinstance(report, IngestReport)
    assert (report.accepted, report.rejected) == (16, 7)
    assert report.by_task == {"summarize": 15, "classify": 1}
    assert [e.line_no for e in report.errors] == [3, 6]  # capped; `rejected` still counts all
    assert [r["seq"] for r in rows] == list(range(16))
    assert [r["line_no"] for r in rows] == [n for n in range(1, 24) if n % 3]
    for r in rows:
        assert r["status"] == "queued" and r["input_tokens"] == 0 and r["attempts"] == 0
        t = TaskLine.model_validate_json(r["payload"])
        assert (t.id, t.task) == (r["task_id"], r["task_type"])
        assert "null" not in r["payload"] and " " not in r["payload"].replace("text ", "")  # compact, no nulls
    assert rows[-1]["payload"] == '{"id":"c","task":"classify","input":"good","labels":["pos","neg"]}'
    assert [(e["line_no"], e["task_id"]) for e in errs] == [(n, None) for n in (3, 6, 9, 12, 15, 18, 21)]
    assert errs[0]["reason"].startswith("line 3: invalid JSON") and errs[0]["excerpt"] == "{broken"


def test_payload_round_trips_to_an_equal_task_line(engine, tmp_path):
    schema = {"type": "object", "properties": {"total": {"type": "number"}}}
    originals = [
        TaskLine(id="x-1", task="extract", input="Invoice total 42", schema=schema, metadata={"k": [1, 2]}),
        TaskLine(
            id="c-1",
            task="chat",
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            temperature=0.5,
            min_tier="frontier",
            models=["a", "b"],
        ),
    ]
    p = write(tmp_path, b"\n".join(t.model_dump_json(by_alias=True, exclude_none=True).encode() for t in originals))
    with engine.begin() as conn:
        job_id = new_job(conn)
        ingest(conn, job_id, p, JobSpec())
    rows, _ = stored(engine, job_id)
    assert [TaskLine.model_validate_json(r["payload"]) for r in rows] == originals


def test_payload_carries_the_job_defaults(engine, tmp_path):
    p = write(tmp_path, line(id="a", input="fine") + b"\n")
    with engine.begin() as conn:
        job_id = new_job(conn)
        ingest(conn, job_id, p, JobSpec(task="classify", labels=["ok", "not ok"]))
    (row,), _ = stored(engine, job_id)
    assert orjson.loads(row["payload"])["labels"] == ["ok", "not ok"]


def test_strict_raises_on_the_first_bad_line_and_writes_nothing(engine, tmp_path):
    good = b"".join(line(id=f"g-{i}", task="summarize", input="x") + b"\n" for i in range(10))
    p = write(tmp_path, good + b"[1]\n" + good.replace(b"g-", b"h-") + b"oops\n")
    with engine.connect() as conn, conn.begin():
        job_id = new_job(conn)
        with pytest.raises(InputError, match=r"^line 11: expected a JSON object"):
            ingest(conn, job_id, p, JobSpec(), strict=True, batch_size=3)
        # Nothing reached the store even inside the caller's still-open transaction.
        n = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(tasks.c.job_id == job_id)).scalar()
        e = conn.execute(
            sa.select(sa.func.count()).select_from(input_errors).where(input_errors.c.job_id == job_id)
        ).scalar()
        assert (n, e) == (0, 0)


def test_strict_on_a_clean_file_writes_everything(engine, tmp_path):
    p = write(tmp_path, b"".join(line(id=f"s-{i}", task="summarize", input=f"t{i}") + b"\n\n" for i in range(7)))
    with engine.begin() as conn:
        job_id = new_job(conn)
        report = ingest(conn, job_id, p, JobSpec(), strict=True, batch_size=2)
    rows, errs = stored(engine, job_id)
    assert (report.accepted, report.rejected, errs) == (7, 0, [])
    assert [(r["seq"], r["task_id"], r["line_no"]) for r in rows] == [(i, f"s-{i}", 2 * i + 1) for i in range(7)]


def test_ingest_of_an_empty_file_and_of_only_bad_lines(engine):
    with engine.begin() as conn:
        job_id = new_job(conn)
        empty = ingest(conn, job_id, CORPUS / "empty.jsonl", JobSpec())
        job2 = new_job(conn)
        bad = ingest(conn, job2, CORPUS / "only_bad.jsonl", JobSpec())
    assert (empty.accepted, empty.rejected, empty.errors, empty.by_task) == (0, 0, [], {})
    assert (bad.accepted, bad.rejected) == (0, 5)
    rows, errs = stored(engine, job2)
    assert rows == [] and [e["line_no"] for e in errs] == [1, 2, 3, 4, 5]
    assert errs[1]["task_id"] == "o-2"


def test_same_ids_in_two_jobs_do_not_clash(engine, tmp_path):
    p = write(tmp_path, line(id="same", task="summarize", input="x"))
    with engine.begin() as conn:
        a, b = new_job(conn), new_job(conn)
        assert ingest(conn, a, p, JobSpec()).accepted == 1
        assert ingest(conn, b, p, JobSpec()).accepted == 1


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            b'{"id": "a", "task": "summarize", "input": "x", "metadata": {"k": ' + b"[" * 300 + b"]" * 300 + b"}}",
            "nested more than 100 levels",
        ),
        (
            b'{"id": "a", "task": "extract", "input": "x", "schema": ' + b'{"items": ' * 150 + b"{}" + b"}" * 151,
            "nested more than 100 levels",
        ),
        (
            b'{"id": "a", "task": "summarize", "input": "x", "metadata": {"k": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
            "invalid JSON",
        ),
    ],
)
def test_deeply_nested_lines_are_rejected_not_crashed(tmp_path, data, fragment):
    ok_line = line(id="b", task="summarize", input="[[[[" * 50)  # brackets inside a string are not depth
    ok, bad = run(write(tmp_path, data + b"\n" + ok_line))
    assert ok == {2: "b"}
    assert fragment in bad[1].reason


def test_ingest_stores_lines_just_under_the_depth_limit(engine, tmp_path):
    nested = b"[" * 95 + b"]" * 95
    p = write(tmp_path, b'{"id": "a", "task": "summarize", "input": "x", "metadata": {"k": ' + nested + b"}}")
    with engine.begin() as conn:
        job_id = new_job(conn)
        assert ingest(conn, job_id, p, JobSpec()).accepted == 1


def test_an_id_first_seen_on_a_rejected_line_is_still_free(tmp_path):
    p = write(tmp_path, line(id="a", task="summarize") + b"\n" + line(id="a", task="summarize", input="x"))
    ok, bad = run(p)
    assert ok == {2: "a"} and "needs 'input'" in bad[1].reason


def test_seen_ids_table_grows_and_stays_compact():
    from llmbatch.ingest.seen_ids import SeenIds

    seen = SeenIds(capacity=8)
    n = 200_000
    assert all(seen.first_line(f"id-{i}", i + 1) is None for i in range(n))
    assert [seen.first_line(f"id-{i}", 0) for i in (0, 77_777, n - 1)] == [1, 77_778, n]
    assert seen.first_line("new", 5) is None
    # 12 bytes a slot, between a quarter and half full: at most 48 bytes an id (a set of ints costs ~75).
    assert seen.nbytes <= 48 * n


def test_parser_and_planning_load_nothing_from_the_store():
    """The parser is pure: importing it (or planning, which reads files with it) loads no llmbatch.store module."""
    code = (
        "import sys, llmbatch.ingest, llmbatch.ingest.reader, llmbatch.planning; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['llmbatch', 'store']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # The loader is still reachable from the package, and it is what brings the store in.
    code = "import sys; from llmbatch.ingest import ingest; print(ingest.__module__, 'llmbatch.store.schema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["llmbatch.ingest.load", "True"]
