"""Pydantic validation errors as one readable sentence naming each bad field (the reason of a LineError)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..models import TASK_TYPES, TaskLine

__all__ = ["explain_validation_error"]

_FIELDS = sorted(f.alias or name for name, f in TaskLine.model_fields.items())
_FIELD_NAMES = set(_FIELDS) | set(TaskLine.model_fields)
_QUOTED = re.compile(r"'([a-z_]+)'")
_MAX_PROBLEMS = 3


def explain_validation_error(e: ValidationError, origin: dict[str, str] | None = None) -> str:
    """One readable sentence naming each bad field; `origin` renames fields the user wrote elsewhere."""
    by_path: dict[str, list[ErrorDetails]] = {}
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


def _problem(path: str, errs: list[ErrorDetails]) -> str:
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
