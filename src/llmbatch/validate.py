"""Is this output good enough? A failed check triggers the cascade to the next tier.

Returns the normalized output (the label as written in the label set; the parsed JSON object) or raises
InvalidOutput with the reason stored in the ledger.

Extract schemas come from whoever submits the job, so they are treated as hostile:
- `$ref` resolves only inside the schema itself. The registry's retrieve function refuses every URI, so a
  `$ref` to `file:///...`, `http://...` or another document never reads a file or opens a socket;
  `schema_problem` rejects such refs at ingest, with unresolvable ones and with `$ref` cycles that never
  descend into the value (`{"$ref": "#"}`): the validator could not finish those.
- Validation is bounded: size and depth at ingest (max_schema_bytes, max_schema_depth), and time per
  output (schema_validation_timeout_s). Regex keywords run on the `regex` engine with that timeout, since
  a `pattern` like `(a|aa)+$` would otherwise hold the worker's event loop for minutes.
"""

from __future__ import annotations

import json
import math
import re
import time
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import orjson
import regex
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from .models import TaskLine

DEFAULT_VALIDATION_TIMEOUT_S = 2.0
# Outputs nested deeper than this are refused before validation: jsonschema recurses per level.
MAX_OUTPUT_DEPTH = 100


class InvalidOutput(Exception):
    pass


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def _match_label(text: str, labels: list[str]) -> str:
    cleaned = text.strip().strip("\"'`.!").strip()
    if cleaned in labels:
        return cleaned
    lowered = {label.lower(): label for label in labels}
    if cleaned.lower() in lowered:
        return lowered[cleaned.lower()]
    raise InvalidOutput(f"label {text.strip()[:80]!r} is not one of {labels}")


# ---------------------------------------------------------------- no retrieval


def _refuse_retrieval(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class: its stub hides the __init__


# Every validator gets this registry: a `$ref` outside the schema fails instead of being fetched.
_LOCAL_ONLY = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


# ---------------------------------------------------------------- bounded validation


class _Overtime(Exception):
    pass


_deadline: ContextVar[float] = ContextVar("validation_deadline", default=math.inf)


def _search(pattern: str, text: str) -> bool:
    """re.search with the validation deadline as its timeout (the regex engine can be interrupted)."""
    remaining = _deadline.get() - time.monotonic()
    if remaining <= 0:
        raise _Overtime
    try:
        return regex.search(pattern, text, timeout=None if remaining == math.inf else remaining) is not None
    except TimeoutError:
        raise _Overtime from None


def _pattern(validator, patrn, instance, schema):
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)))})")


def _within_deadline(keyword):
    def check(validator, value, instance, schema):
        if time.monotonic() > _deadline.get():
            raise _Overtime
        return keyword(validator, value, instance, schema)

    return check


_BoundedValidator = validators.extend(
    Draft202012Validator,
    {
        name: _within_deadline(keyword)
        for name, keyword in {
            **Draft202012Validator.VALIDATORS,
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        }.items()
    },
)


@lru_cache(maxsize=256)
def _validator(schema_json: bytes):
    """One compiled validator per distinct schema: a job's extract lines usually share one."""
    return _BoundedValidator(orjson.loads(schema_json), registry=_LOCAL_ONLY)


def _parse_json(text: str, schema: dict, timeout_s: float) -> Any:
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidOutput(f"output is not valid JSON: {e.msg} at char {e.pos}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer over Python's 4300-digit limit
        raise InvalidOutput(f"output is not valid JSON: {e}") from None
    if deeper_than(value, MAX_OUTPUT_DEPTH):
        raise InvalidOutput(f"output JSON is nested more than {MAX_OUTPUT_DEPTH} levels deep")
    token = _deadline.set(time.monotonic() + timeout_s)
    try:
        errors = sorted(
            _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).iter_errors(value), key=lambda e: list(e.path)
        )
    except _Overtime:
        raise InvalidOutput(
            f"checking the output against the schema took over {timeout_s:g}s "
            "(schema_validation_timeout_s); simplify the schema's patterns"
        ) from None
    except RecursionError:
        raise InvalidOutput("the schema and output recurse too deeply to validate") from None
    except Unresolvable as e:  # ingest refuses these; a task stored before may have one
        raise InvalidOutput(f"the schema has a $ref that does not resolve inside it: {e}") from None
    finally:
        _deadline.reset(token)
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise InvalidOutput(f"JSON does not match the schema at {where}: {first.message}")
    return value


def validate_output(task: TaskLine, text: str, *, timeout_s: float = DEFAULT_VALIDATION_TIMEOUT_S) -> Any:
    if not text or not text.strip():
        raise InvalidOutput("empty completion (for reasoning models: max_completion_tokens too small?)")
    if task.task == "classify":
        return _match_label(text, task.labels or [])
    if task.task == "extract":
        return _parse_json(text, task.json_schema or {}, timeout_s)
    return text.strip()


def deeper_than(obj: Any, limit: int) -> bool:
    """Whether parsed JSON nests more than `limit` levels (iterative: the value may be deeper than Python's
    recursion limit). Also ingest's check of whole lines."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if type(value) is dict else value
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return False


# ---------------------------------------------------------------- checks at ingest

# Keywords whose subschemas apply to the same value as their parent: a cycle through only these (and $ref)
# never reaches the end of the value, so the validator recurses until Python stops it.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
_REF_KEYWORDS = ("$ref", "$dynamicRef")


def schema_problem(schema: dict, *, max_bytes: int, max_depth: int) -> str | None:
    """Why an extract schema cannot be used (without the "line N: " prefix), or None. Checked at ingest."""
    encoded = orjson.dumps(schema)  # unsorted: the verdict cache is hit by lines that repeat the spec's schema
    if len(encoded) > max_bytes:
        return (
            f"'schema' is {len(encoded):,} bytes of JSON, over the limit of {max_bytes:,} "
            "(max_schema_bytes); simplify it or raise max_schema_bytes"
        )
    return _schema_verdict(encoded, max_depth)


@lru_cache(maxsize=256)
def _schema_verdict(encoded: bytes, max_depth: int) -> str | None:
    schema = orjson.loads(encoded)
    if deeper_than(schema, max_depth):
        return (
            f"'schema' is nested more than {max_depth} levels deep (max_schema_depth); "
            "flatten it with $defs or raise max_schema_depth"
        )
    try:
        return _reference_problem(schema)
    except RecursionError:
        return "'schema' is nested too deeply to analyse"


def _reference_problem(schema: dict) -> str | None:
    """Every $ref resolves inside the schema, no in-place $ref cycle, every pattern compiles."""
    root = DRAFT202012.create_resource(schema)
    pending: list[tuple[Any, Any]] = [(schema, _LOCAL_ONLY.resolver_with_root(root))]
    # id(subschema) -> (subschemas applied to the same value, the $ref that leads to each or None)
    in_place: dict[int, list[tuple[int, str | None]]] = {}
    keep_alive = []  # ids stay unique only while their objects live
    uses_unevaluated = uses_pattern_properties = False
    while pending:
        contents, resolver = pending.pop()
        if not isinstance(contents, dict) or id(contents) in in_place:
            continue
        keep_alive.append(contents)
        try:
            resource = Resource.from_contents(contents, default_specification=DRAFT202012)
        except Exception as e:  # noqa: BLE001 - an unknown $schema dialect, say
            return f"'schema' cannot be analysed: {e}"
        resolver = resolver.in_subresource(resource)
        edges: list[tuple[int, str | None]] = []
        in_place[id(contents)] = edges
        for keyword in _REF_KEYWORDS:
            ref = contents.get(keyword)
            if ref is None:
                continue
            if not isinstance(ref, str):
                return f"'schema': {keyword} must be a string, got {_short(ref)}"
            try:
                resolved = resolver.lookup(ref)
            except Unresolvable:
                return (
                    f"'schema': {keyword} {_short(ref)} does not resolve inside the schema "
                    "(references to files, URLs or other documents are refused; use #/$defs/...)"
                )
            except Exception as e:  # noqa: BLE001 - referencing raises assorted errors for malformed refs
                return f"'schema': {keyword} {_short(ref)} cannot be resolved: {e}"
            target = resolved.contents
            if isinstance(target, dict):
                edges.append((id(target), f"{keyword} {_short(ref)}"))
                pending.append((target, resolved.resolver))
            elif not isinstance(target, bool):
                return f"'schema': {keyword} {_short(ref)} points to a value that is not a schema"
        for keyword in _IN_PLACE_ONE:
            if isinstance(contents.get(keyword), dict):
                edges.append((id(contents[keyword]), None))
        for keyword in _IN_PLACE_MANY:
            if isinstance(contents.get(keyword), list):
                edges.extend((id(s), None) for s in contents[keyword] if isinstance(s, dict))
        if isinstance(contents.get("dependentSchemas"), dict):
            edges.extend((id(s), None) for s in contents["dependentSchemas"].values() if isinstance(s, dict))
        problem = _pattern_problem(contents)
        if problem:
            return problem
        uses_unevaluated |= "unevaluatedProperties" in contents
        uses_pattern_properties |= "patternProperties" in contents
        pending.extend((sub.contents, resolver) for sub in resource.subresources())
    if uses_unevaluated and uses_pattern_properties:
        # jsonschema matches patternProperties for unevaluatedProperties with the re module, which no
        # timeout can stop; the two together are refused rather than run unbounded.
        return "'schema' combines unevaluatedProperties with patternProperties, which is not supported"
    cycle = _in_place_cycle(in_place)
    if cycle:
        return (
            f"'schema': {cycle} leads back to itself without descending into the value, "
            "so validation would never finish"
        )
    return None


def _pattern_problem(contents: dict) -> str | None:
    patterns = []
    if isinstance(contents.get("pattern"), str):
        patterns.append(contents["pattern"])
    if isinstance(contents.get("patternProperties"), dict):
        patterns.extend(contents["patternProperties"])
    for p in patterns:
        try:
            regex.compile(p)
        except (regex.error, RecursionError, OverflowError) as e:
            return f"'schema': pattern {_short(p)} is not a valid regular expression: {e}"
    return None


def _in_place_cycle(graph: dict[int, list[tuple[int, str | None]]]) -> str | None:
    """The $ref on a cycle of same-value edges, if there is one (iterative DFS: chains can be long)."""
    state: dict[int, int] = {}  # 1 on the current path, 2 done
    for start in graph:
        if start in state:
            continue
        state[start] = 1
        path: list[tuple[int, str | None]] = [(start, None)]
        stack = [iter(graph[start])]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()[0]] = 2
                stack.pop()
                continue
            node, label = step
            if state.get(node) == 1:
                on_cycle = [lbl for n, lbl in path[[p[0] for p in path].index(node) + 1 :]] + [label]
                return next((lbl for lbl in on_cycle if lbl), "a $ref")
            if node not in state and node in graph:
                state[node] = 1
                path.append((node, label))
                stack.append(iter(graph[node]))
    return None


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
