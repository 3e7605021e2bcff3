"""Input files -> validated lines, streaming and pure: no store, no SQL, no network.

Memory stays flat at any file size: the file is read in binary one line at a time, and a line over
`max_line_bytes` is measured and skipped in bounded pieces, never held whole. Duplicate ids are found
with a compact table of 64-bit digests (seen_ids).

Each bad line becomes a `LineError` whose reason is one sentence starting with "line N: ". Besides its
shape, each line is held to the operator's `InputLimits` (line size, labels, schema size, depth and
`$ref`s, images: see limits), and every limit's error names the setting that raises it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import orjson
from pydantic import ValidationError

from ..config import InputLimits
from ..errors import InputError
from ..models import JobSpec, TaskLine
from ..validate import deeper_than
from .explain import explain_validation_error
from .limits import line_problem
from .openai_batch import BatchLineError, batch_line_to_native, field_origin, is_batch_line, json_kind
from .seen_ids import SeenIds

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineError", "parse_lines"]

DEFAULT_MAX_LINE_BYTES = InputLimits.max_line_bytes
EXCERPT_CHARS = 120
# Deeper lines are rejected: pydantic cannot serialize a payload much beyond 250 levels, and no
# real task needs more than a few dozen (a JSON Schema included).
MAX_DEPTH = 100
_READ_BUFFER = 1 << 20
_SKIP_PIECE = 64 << 10  # bytes read at a time while skipping an overlong line
_BOM = b"\xef\xbb\xbf"
_JSON_BLANK = b" \t\r"


@dataclass(frozen=True)
class LineError:
    line_no: int
    reason: str  # full sentence starting with "line N: "
    task_id: str | None
    excerpt: str | None  # first ~120 chars of the line, decoded with errors="replace"


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Overlong:
    size: int  # bytes in the line, line ending excluded
    head: bytes  # enough of its start for an excerpt


def _open_input(path: str | os.PathLike) -> io.BufferedReader:
    try:
        return cast(io.BufferedReader, open(path, "rb", buffering=_READ_BUFFER))  # typeshed: BinaryIO
    except OSError as e:
        raise InputError(f"cannot read input file {os.fspath(path)}: {e.strerror or e}") from None


def _physical_lines(f: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | _Overlong]]:
    """(line number, content without its line ending) for each non-blank line; blank lines only count."""
    limit = max_line_bytes + 2  # room for a CRLF after a line exactly at the limit
    readline = f.readline
    line_no = 0
    while True:
        chunk = readline(limit)
        if not chunk:
            return
        line_no += 1
        if chunk[-1:] != b"\n" and len(chunk) == limit:
            size, tail, head = len(chunk), chunk[-2:], chunk[: EXCERPT_CHARS * 4]
            del chunk  # hold only the head while the rest is skipped
            yield line_no, _skip_rest(readline, size, tail, head)
            continue
        content = chunk[:-1] if chunk[-1:] == b"\n" else chunk
        if content[-1:] == b"\r":
            content = content[:-1]
        if len(content) > max_line_bytes:
            yield line_no, _Overlong(len(content), content[: EXCERPT_CHARS * 4])
        elif content.strip(_JSON_BLANK):
            yield line_no, content


def _skip_rest(readline, size: int, tail: bytes, head: bytes) -> _Overlong:
    """Measure the rest of an overlong line while discarding it piece by piece."""
    while True:
        piece = readline(_SKIP_PIECE)
        if not piece:
            break
        size += len(piece)
        tail = piece[-2:] if len(piece) >= 2 else (tail + piece)[-2:]
        if piece[-1:] == b"\n":
            break
    size -= 2 if tail == b"\r\n" else 1 if tail[-1:] == b"\n" else 0
    return _Overlong(size, head)


def _excerpt(raw: bytes) -> str:
    return raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]


# ---------------------------------------------------------------- judging one line


class _LineDefaults:
    """The job spec's values a line inherits for keys it lacks (absent or null).

    labels and schema are only inherited by lines of the task that uses them, so a chat line in a
    classify job does not carry a label set it will never use.
    """

    def __init__(self, spec: JobSpec) -> None:
        common: dict[str, Any] = {}
        if spec.task is not None:
            common["task"] = spec.task
        if spec.max_output_tokens is not None:
            common["max_output_tokens"] = spec.max_output_tokens
        if spec.min_tier is not None:
            common["min_tier"] = spec.min_tier.value
        if spec.models:
            common["models"] = list(spec.models)
        if spec.model:
            common["model"] = spec.model
        self.common = common
        self.labels = list(spec.labels) if spec.labels else None
        self.schema = spec.json_schema or None

    def apply(self, obj: dict[str, Any]) -> None:
        for key, value in self.common.items():
            if obj.get(key) is None:
                obj[key] = value
        task = obj.get("task")
        if task == "classify" and self.labels and obj.get("labels") is None:
            obj["labels"] = self.labels
        elif task == "extract" and self.schema and obj.get("schema") is None and obj.get("json_schema") is None:
            obj["schema"] = self.schema


def _judge(raw: bytes, offset: int, defaults: _LineDefaults, limits: InputLimits) -> TaskLine | tuple[str, str | None]:
    """The validated line, or (reason without the "line N: " prefix, task id if one was readable)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return _json_problem(raw, offset, e), None
    if type(obj) is not dict:
        return f"expected a JSON object {{...}}, got {json_kind(obj)}", None
    # Counting brackets is a cheap upper bound on depth; only lines that pass it get walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and deeper_than(obj, MAX_DEPTH):
        id_field = "custom_id" if is_batch_line(obj) else "id"
        return f"the JSON is nested more than {MAX_DEPTH} levels deep", _readable_id(obj.get(id_field))
    batch_obj = None
    if is_batch_line(obj):
        task_id = _readable_id(obj.get("custom_id"))
        try:
            native = batch_line_to_native(obj)
        except BatchLineError as e:
            return str(e), task_id
        batch_obj, obj = obj, native
    else:
        task_id = _readable_id(obj.get("id"))
    defaults.apply(obj)
    try:
        line = TaskLine.model_validate(obj)
    except ValidationError as e:
        return explain_validation_error(e, field_origin(batch_obj) if batch_obj else None), task_id
    except RecursionError:
        return "the line is nested too deeply to validate", task_id
    problem = line_problem(line, limits)
    return (problem, task_id) if problem else line


def _json_problem(raw: bytes, offset: int, e: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return f"not valid UTF-8 at byte offset {u.start + offset} (the file must be UTF-8 encoded)"
    return f"invalid JSON: {e.msg} at column {e.colno}"


def _readable_id(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:512] or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# ---------------------------------------------------------------- the public interface


def parse_lines(
    path: str | os.PathLike, spec: JobSpec, *, limits: InputLimits | None = None, max_line_bytes: int | None = None
) -> Iterator[tuple[int, TaskLine | LineError]]:
    """Each non-blank line of `path` as (1-based line number, validated TaskLine or LineError), streaming.

    Job defaults from `spec` fill keys a line lacks before validation. An id seen on an earlier
    accepted line makes this line a LineError. `limits` are the operator's (Settings.input_limits);
    `max_line_bytes` overrides theirs.
    """
    limits = limits or InputLimits()
    if max_line_bytes is None:
        max_line_bytes = limits.max_line_bytes
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be at least 1")
    defaults = _LineDefaults(spec)
    seen = SeenIds()
    with _open_input(path) as f:
        # A BOM is encoding noise, not content: it counts neither toward line 1's length nor as JSON.
        bom = len(_BOM) if f.peek(len(_BOM))[: len(_BOM)] == _BOM else 0
        f.read(bom)
        for line_no, raw in _physical_lines(f, max_line_bytes):
            offset = bom if line_no == 1 else 0  # UTF-8 error offsets count bytes as they are in the file
            if isinstance(raw, _Overlong):
                reason = (
                    f"line {line_no}: the line is {raw.size:,} bytes, over the limit of {max_line_bytes:,} "
                    "bytes (max_line_bytes); shorten it or raise max_line_bytes (LLMBATCH_MAX_LINE_BYTES "
                    "or llmbatch.toml)"
                )
                yield line_no, LineError(line_no, reason, None, _excerpt(raw.head))
                continue
            result = _judge(raw, offset, defaults, limits)
            if isinstance(result, tuple):
                reason, task_id = result
                yield line_no, LineError(line_no, f"line {line_no}: {reason}", task_id, _excerpt(raw))
                continue
            first = seen.first_line(result.id, line_no)
            if first is not None:
                reason = f"line {line_no}: duplicate id {result.id!r} (first seen on line {first})"
                yield line_no, LineError(line_no, reason, result.id, _excerpt(raw))
                continue
            yield line_no, result
