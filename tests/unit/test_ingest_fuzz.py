"""Fuzz: valid lines mixed with garbage never crash parse_lines, and no valid line is lost or moved."""

from __future__ import annotations

import os
import tempfile

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbatch.ingest import LineError, parse_lines
from llmbatch.models import JobSpec

text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
# Labels are distinct after trimming and case-folding, and none is blank (models._labels_problem).
labels = st.lists(
    st.text(min_size=1, max_size=8).filter(lambda s: s.strip()),
    min_size=1,
    max_size=4,
    unique_by=lambda s: s.strip().casefold(),
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text}),
    min_size=1,
    max_size=3,
)

# Valid native line bodies; the id is added later so that ids are unique.
native_body = st.one_of(
    st.fixed_dictionaries(
        {"task": st.just("summarize"), "input": text},
        optional={
            "max_output_tokens": st.integers(1, 4000),
            "metadata": st.dictionaries(text, st.integers(-(2**63), 2**63 - 1)),
        },
    ),
    st.fixed_dictionaries({"task": st.just("classify"), "input": text, "labels": labels}),
    st.fixed_dictionaries(
        {"task": st.just("chat"), "messages": messages}, optional={"temperature": st.floats(0, 2), "model": text}
    ),
    st.fixed_dictionaries(
        {
            "task": st.just("extract"),
            "input": text,
            "schema": st.just({"type": "object", "properties": {"n": {"type": "integer"}}}),
        }
    ),
)
batch_body = st.fixed_dictionaries({"messages": messages}, optional={"max_tokens": st.integers(1, 999), "model": text})

# Values that are wrong for a field whatever the rest of the line says.
WRONG: dict[str, list] = {
    "id": [[1], {"x": 1}, True, None, "", 1.5],
    "task": ["translate", 5, None, ["chat"]],
    "input": [5, True, [1], {"x": 1}, "   "],
    "messages": [5, "hi", [{"role": "robot", "content": "x"}], {"x": 1}, [{"content": "x"}]],
    "labels": [5, "a,b", [], [1, 2], ["a", "a"], {"a": 1}],
    "max_output_tokens": ["lots", 0, -1, [1], 10**9],
    "schema": [5, "x", [1], True, {"type": "nonsense"}],
    "temperature": [-1, 3, "warm"],
    "min_tier": ["ultra", 1],
    "metadata": [[1], "x", 5],
}
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def garbage(draw) -> tuple[str, object]:
    """(kind, how to build it): the line is built once earlier lines are known."""
    kind = draw(st.sampled_from(["bytes", "truncated", "wrong_type", "not_object", "any_json", "duplicate"]))
    if kind == "bytes":
        return kind, draw(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b))
    if kind == "truncated":
        return kind, (draw(native_body), draw(st.floats(0, 0.999)))
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(WRONG)))
        return kind, (draw(native_body), field, draw(st.sampled_from(WRONG[field])))
    if kind == "not_object":
        return kind, draw(json_value.filter(lambda v: not isinstance(v, dict)))
    if kind == "any_json":  # an object missing what every task needs: never valid
        return kind, draw(st.dictionaries(st.sampled_from(["task", "labels", "foo"]), json_value, max_size=3))
    return kind, draw(st.integers(0, 10**6))


def is_blank(content: bytes, line_no: int) -> bool:
    if line_no == 1 and content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    return not content.strip(b" \t\r")


@settings(
    max_examples=int(os.environ.get("INGEST_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.just("native"), native_body),
            st.tuples(st.just("batch"), batch_body),
            st.tuples(st.just("blank"), st.sampled_from([b"", b"  ", b"\t", b"\r"])),
            st.tuples(st.just("garbage"), garbage()),
        ),
        max_size=40,
    ),
    crlf=st.booleans(),
    bom=st.booleans(),
    max_line_bytes=st.sampled_from([120, 400, 8 << 20]),
)
def test_valid_lines_survive_any_garbage(items, crlf, bom, max_line_bytes):
    lines: list[bytes] = []
    valid: dict[int, str] = {}  # line number -> id of a valid line that must be accepted
    must_fail: set[int] = set()
    valid_lines: list[bytes] = []
    for n, (kind, spec) in enumerate(items, start=1):
        if kind == "native":
            content = orjson.dumps({"id": f"v-{n}", **spec})
        elif kind == "batch":
            content = orjson.dumps(
                {"custom_id": f"v-{n}", "method": "POST", "url": "/v1/chat/completions", "body": spec}
            )
        elif kind == "blank":
            content = spec
        else:
            content, always_bad = build_garbage(n, spec, valid_lines)
            if always_bad or not is_blank(content, n):
                must_fail.add(n)
        if kind in ("native", "batch"):
            valid_lines.append(content)
            if len(content) <= max_line_bytes:
                valid[n] = f"v-{n}"
            else:
                must_fail.add(n)
        lines.append(content)
    data = (b"\r\n" if crlf else b"\n").join(lines)
    if bom:
        data = b"\xef\xbb\xbf" + data

    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        accepted: dict[int, str] = {}
        rejected: set[int] = set()
        for line_no, item in parse_lines(path, JobSpec(), max_line_bytes=max_line_bytes):
            if isinstance(item, LineError):
                assert item.reason.startswith(f"line {line_no}: ")
                assert "\n" not in item.reason
                rejected.add(line_no)
            else:
                assert line_no not in accepted
                accepted[line_no] = item.id
    finally:
        os.unlink(path)

    assert accepted == valid  # every valid line, exactly once, on its own line number
    assert must_fail <= rejected
    assert not (rejected & set(valid))


def build_garbage(n: int, spec, valid_lines: list[bytes]) -> tuple[bytes, bool]:
    """(line content, whether it must be reported even if it happens to look blank)."""
    kind, arg = spec
    if kind == "bytes":
        return arg, False
    if kind == "truncated":
        body, frac = arg
        full = orjson.dumps({"id": f"g-{n}", **body})
        return full[: int(len(full) * frac)] or b"{", True
    if kind == "wrong_type":
        body, field, value = arg
        if field == "labels":
            body = {**body, "task": "classify", "input": "x"}
        elif field == "schema":
            body = {**body, "task": "extract", "input": "x"}
        elif field == "messages":
            body = {k: v for k, v in body.items() if k != "input"}
        return orjson.dumps({"id": f"g-{n}", **body, field: value}), True
    if kind == "not_object":
        return orjson.dumps(arg), True
    if kind == "any_json":
        return orjson.dumps(arg), True
    # duplicate: a copy of an earlier valid line, or garbage when there is none yet
    if not valid_lines:
        return b"{", True
    return valid_lines[arg % len(valid_lines)], True
