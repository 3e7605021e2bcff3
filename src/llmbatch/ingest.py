"""Input files -> validated tasks: stream a JSONL file, judge each line, write tasks in batches.

Memory stays flat at any file size: the file is read in binary one line at a time, and a line over
`max_line_bytes` is measured and skipped in bounded pieces, never held whole. Duplicate ids are found
with a compact table of 64-bit digests (about 24 MB per million ids).

Each bad line becomes a `LineError` whose reason is one sentence starting with "line N: ". Valid lines
still run unless `strict=True`. Besides its shape, each line is held to the operator's `InputLimits`
(line size, labels, schema size, depth and `$ref`s, images: see line_checks), and every limit's error
names the setting that raises it.

Strict mode reads the input once: validated rows go to an anonymous temporary file (not the store)
and are inserted only after the last line proved clean, so a bad line raises `InputError` before this
file has written a single row. The caller still owns the transaction and rolls back on error.
"""

from __future__ import annotations

import os
import re
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import IO, Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError

from .config import InputLimits
from .errors import InputError
from .ingest_openai_batch import BatchLineError, batch_line_to_native, field_origin, is_batch_line, json_kind
from .line_checks import line_problem
from .models import TASK_TYPES, JobSpec, TaskLine
from .store.schema import TaskStatus, input_errors, tasks
from .validate import deeper_than

__all__ = ["DEFAULT_MAX_LINE_BYTES", "IngestReport", "LineError", "explain_validation_error", "ingest", "parse_lines"]

DEFAULT_MAX_LINE_BYTES = InputLimits.max_line_bytes
DEFAULT_BATCH_SIZE = 5000
DEFAULT_MAX_ERRORS_KEPT = 1000
EXCERPT_CHARS = 120
# A batch is also flushed at this many payload bytes, so batch_size lines of large inputs stay bounded.
FLUSH_BYTES = 32 << 20
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


@dataclass
class IngestReport:
    accepted: int = 0
    rejected: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first max_errors_kept; `rejected` counts all
    by_task: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Overlong:
    size: int  # bytes in the line, line ending excluded
    head: bytes  # enough of its start for an excerpt


def _open_input(path: str | os.PathLike) -> IO[bytes]:
    try:
        return open(path, "rb", buffering=_READ_BUFFER)
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


# ---------------------------------------------------------------- duplicate ids


class _SeenIds:
    """Which ids were accepted, and on which line: an open-addressing table of 64-bit digests.

    Two flat arrays (12 bytes a slot, half full at most) instead of a set of Python ints (~75 bytes
    an id). Digests are the per-process string hash; a false "duplicate" needs a 64-bit collision,
    about 3e-8 for a file of a million ids.
    """

    __slots__ = ("_count", "_digests", "_lines", "_mask")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._digests = array("Q", bytes(8 * capacity))  # 0 marks an empty slot
        self._lines = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def first_line(self, task_id: str, line_no: int) -> int | None:
        """The line where task_id was first seen, or None (and remember it as seen on line_no)."""
        digest = (hash(task_id) & 0xFFFF_FFFF_FFFF_FFFF) or 1
        digests, mask = self._digests, self._mask
        i = digest & mask
        while True:
            d = digests[i]
            if d == 0:
                digests[i] = digest
                self._lines[i] = line_no
                self._count += 1
                if self._count * 2 > mask:
                    self._grow()
                return None
            if d == digest:
                return self._lines[i]
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_digests, old_lines = self._digests, self._lines
        capacity = (self._mask + 1) * 2
        digests, lines = array("Q", bytes(8 * capacity)), array("I", bytes(4 * capacity))
        mask = capacity - 1
        for d, n in zip(old_digests, old_lines):
            if d:
                i = d & mask
                while digests[i]:
                    i = (i + 1) & mask
                digests[i], lines[i] = d, n
        self._digests, self._lines, self._mask = digests, lines, mask

    @property
    def nbytes(self) -> int:
        return self._digests.itemsize * len(self._digests) + self._lines.itemsize * len(self._lines)


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


# ---------------------------------------------------------------- validation errors as one sentence

_FIELDS = sorted(f.alias or name for name, f in TaskLine.model_fields.items())
_FIELD_NAMES = set(_FIELDS) | set(TaskLine.model_fields)
_QUOTED = re.compile(r"'([a-z_]+)'")
_MAX_PROBLEMS = 3


def explain_validation_error(e: ValidationError, origin: dict[str, str] | None = None) -> str:
    """One readable sentence naming each bad field; `origin` renames fields the user wrote elsewhere."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in e.errors(include_url=False):
        by_path.setdefault(_field_path(err["loc"], origin), []).append(err)
    problems = [_problem(path, errs) for path, errs in by_path.items()]
    text = "; ".join(problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        text += f" (and {len(problems) - _MAX_PROBLEMS} more problems)"
    return text


def _field_path(loc: tuple, origin: dict[str, str] | None) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_type_tag(part):
            break  # pydantic names the union member it tried; the user only cares about the field
        else:
            if not out and origin and part in origin:
                part = origin[part]
            out += f".{part}" if out else part
    return out


def _is_type_tag(part: str) -> bool:
    return "[" in part or part.startswith("function-") or part in ("str", "int", "float", "bool", "dict", "list")


def _problem(path: str, errs: list[dict[str, Any]]) -> str:
    err = errs[0]
    kind, got = err["type"], err.get("input")
    if not path:  # a rule across fields (models.TaskLine._fields_fit_task)
        msg = _strip_prefix(err["msg"])
        named = next((m for m in _QUOTED.findall(msg) if m in _FIELD_NAMES), None)
        if named == "schema" and "needs" in msg:
            msg += " (or set schema in the job spec)"
        if not named:
            return msg
        if msg.startswith(f"'{named}' "):  # "'input' is empty" reads better as "field 'input' is empty"
            return f"field {msg}"
        return f"field '{named}': {msg}"
    if kind == "missing":
        if path == "task":
            return f"field 'task' is missing: say which task the line is ({', '.join(TASK_TYPES)}) or pass --task"
        if path in ("id", "custom_id"):
            return f"field '{path}' is missing: every line needs a unique id"
        return f"field '{path}' is missing"
    if kind == "extra_forbidden":
        if "." not in path and "[" not in path:
            return f"unknown field '{path}' (valid fields: {', '.join(_FIELDS)})"
        return f"unknown field '{path}'"
    if kind == "literal_error" and path == "task":
        return f"field 'task': unknown task {_show(got)}; valid tasks are {', '.join(TASK_TYPES)}"
    if len(errs) > 1:  # the value matched no member of a union: list what would have been accepted
        wanted = " or ".join(_strip_prefix(x["msg"]).removeprefix("Input should be ") for x in errs)
        return f"field '{path}': should be {wanted} (got {_show(got)})"
    msg = _strip_prefix(err["msg"])
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"field '{path}': {msg} (got {_show(got)})"


def _strip_prefix(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    seen = _SeenIds()
    with _open_input(path) as f:
        # A BOM is encoding noise, not content: it counts neither toward line 1's length nor as JSON.
        bom = len(_BOM) if f.peek(len(_BOM))[: len(_BOM)] == _BOM else 0
        f.read(bom)
        for line_no, raw in _physical_lines(f, max_line_bytes):
            offset = bom if line_no == 1 else 0  # UTF-8 error offsets count bytes as they are in the file
            if type(raw) is _Overlong:
                reason = (
                    f"line {line_no}: the line is {raw.size:,} bytes, over the limit of {max_line_bytes:,} "
                    "bytes (max_line_bytes); shorten it or raise max_line_bytes (LLMBATCH_MAX_LINE_BYTES "
                    "or llmbatch.toml)"
                )
                yield line_no, LineError(line_no, reason, None, _excerpt(raw.head))
                continue
            result = _judge(raw, offset, defaults, limits)
            if type(result) is tuple:
                reason, task_id = result
                yield line_no, LineError(line_no, f"line {line_no}: {reason}", task_id, _excerpt(raw))
                continue
            first = seen.first_line(result.id, line_no)
            if first is not None:
                reason = f"line {line_no}: duplicate id {result.id!r} (first seen on line {first})"
                yield line_no, LineError(line_no, reason, result.id, _excerpt(raw))
                continue
            yield line_no, result


def ingest(
    conn: sa.Connection,
    job_id: str,
    path: str | os.PathLike,
    spec: JobSpec,
    *,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limits: InputLimits | None = None,
    max_line_bytes: int | None = None,
    max_errors_kept: int = DEFAULT_MAX_ERRORS_KEPT,
) -> IngestReport:
    """Write the accepted lines of `path` to `tasks` and the rejected ones to `input_errors`.

    Runs inside the caller's transaction (the caller inserts the job row first and commits after).
    Tasks get seq 0..n-1 in file order and status "queued". With strict=True the first bad line
    raises InputError and this call has written nothing.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = IngestReport()
    task_writer = _BulkInsert(conn, tasks, _TASK_KEYS, job_id=job_id, status=TaskStatus.queued)
    error_writer = _BulkInsert(conn, input_errors, _ERROR_KEYS, job_id=job_id)
    spool = _Spool() if strict else None
    sink = spool or task_writer
    rows: list[tuple] = []
    rows_bytes = 0
    bad_rows: list[tuple] = []
    try:
        for line_no, item in parse_lines(path, spec, limits=limits, max_line_bytes=max_line_bytes):
            if type(item) is LineError:
                if strict:
                    raise InputError(item.reason)
                report.rejected += 1
                if len(report.errors) < max_errors_kept:
                    report.errors.append(item)
                bad_rows.append((line_no, item.task_id, item.reason, item.excerpt))
                if len(bad_rows) >= batch_size:
                    error_writer.write(bad_rows)
                    bad_rows = []
                continue
            payload = item.model_dump_json(by_alias=True, exclude_none=True)
            rows.append((report.accepted, item.id, line_no, item.task, payload))
            rows_bytes += len(payload)
            report.accepted += 1
            report.by_task[item.task] = report.by_task.get(item.task, 0) + 1
            if len(rows) >= batch_size or rows_bytes >= FLUSH_BYTES:
                sink.write(rows)
                rows, rows_bytes = [], 0
        if rows:
            sink.write(rows)
        if bad_rows:
            error_writer.write(bad_rows)
        if spool is not None:
            spool.replay_into(task_writer, batch_size)
    finally:
        if spool is not None:
            spool.close()
    return report


_TASK_KEYS = ("seq", "task_id", "line_no", "task_type", "payload")
_ERROR_KEYS = ("line_no", "task_id", "reason", "excerpt")


class _BulkInsert:
    """Batched inserts of one Core table, prepared once for the connection's dialect.

    conn.execute(table.insert(), dicts) spent more time in SQLAlchemy's per-row parameter handling
    than SQLite spent inserting. These columns are plain str and int and need no type conversion, so
    rows go to the driver as they are: one executemany of the compiled Core insert, or on Postgres
    (psycopg) a COPY, about 4x faster than executemany there. Column defaults of the table (status,
    token counters) are still filled from the Core table definition.
    """

    def __init__(self, conn: sa.Connection, table: sa.Table, keys: tuple[str, ...], **constants: Any) -> None:
        for col in table.columns:
            if col.key not in keys and col.key not in constants and col.default is not None:
                if not col.default.is_scalar:
                    raise TypeError(f"{table.name}.{col.key} has a non-constant default; pass it explicitly")
                constants[col.key] = col.default.arg
        self._conn = conn
        self._names = (*keys, *constants)
        self._constants = tuple(constants.values())
        self._copy_sql = None
        if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
            quote = conn.dialect.identifier_preparer
            columns = ", ".join(quote.format_column(table.c[n]) for n in self._names)
            self._copy_sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN"
            return
        compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(self._names))
        self._sql = str(compiled)
        self._order = None  # named paramstyle: rows become dicts instead
        if compiled.positional:
            getter = itemgetter(*(self._names.index(n) for n in compiled.positiontup))
            self._order = getter if len(compiled.positiontup) > 1 else lambda row: (getter(row),)

    def write(self, rows: list[tuple]) -> None:
        extra = self._constants
        if self._copy_sql is not None:
            # The same DBAPI connection, so the COPY is part of the caller's transaction.
            with self._conn.connection.driver_connection.cursor() as cur, cur.copy(self._copy_sql) as copy:
                for row in rows:
                    copy.write_row(row + extra)
        elif self._order is not None:
            order = self._order
            self._conn.exec_driver_sql(self._sql, [order(row + extra) for row in rows])
        else:
            names = self._names
            self._conn.exec_driver_sql(self._sql, [dict(zip(names, row + extra)) for row in rows])


class _Spool:
    """Strict mode's holding area: validated task rows in an anonymous temp file until the input is clean."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - lives across calls; close() ends it

    def write(self, rows: list[tuple]) -> None:
        self._file.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))

    def replay_into(self, writer: _BulkInsert, batch_size: int) -> None:
        self._file.seek(0)
        rows: list[tuple] = []
        size = 0
        for line in self._file:
            row = tuple(orjson.loads(line))
            rows.append(row)
            size += len(row[-1])
            if len(rows) >= batch_size or size >= FLUSH_BYTES:
                writer.write(rows)
                rows, size = [], 0
        if rows:
            writer.write(rows)

    def close(self) -> None:
        self._file.close()
