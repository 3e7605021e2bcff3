"""Reading job spec files (`--spec JOB.yaml`) and schema files (`--schema FILE.json`) within fixed bounds.

A spec can come from someone else (a shared repository, a ticket), so reading one must not exhaust memory:
- at most `max_spec_bytes` are ever read (`--spec /dev/zero` reads that much and stops);
- YAML aliases are counted as the copies they become: a "billion laughs" spec composes into a few nodes
  that expand to 10^9, and pydantic and JSON serialisation would then materialise every copy. The node
  graph is measured after composing and before constructing; more than `max_spec_nodes` nodes after alias
  expansion, or an alias that contains itself, refuses the file.
Errors are `InputError`s of one line that name the file, the problem and the setting.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import yaml

from .config import InputLimits
from .errors import InputError

__all__ = ["load_schema_file", "load_spec_file", "read_bounded"]


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The whole file if it has at most `max_bytes` bytes; never reads more than one byte past that."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InputError(f"{os.fspath(path)}: cannot read the {what}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise InputError(
            f"{os.fspath(path)}: the {what} is over the limit of {max_bytes:,} bytes "
            "(max_spec_bytes); shorten it or raise max_spec_bytes"
        )
    return data


def load_spec_file(path: str | os.PathLike, limits: InputLimits) -> dict[str, Any]:
    """The mapping in a YAML job spec (empty for an empty file)."""
    name = os.fspath(path)
    raw = read_bounded(path, limits.max_spec_bytes, "spec file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not valid UTF-8 at byte offset {e.start} (a spec file must be UTF-8)") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_expansion(node, limits.max_spec_nodes, name)
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise InputError(f"{name}: invalid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise InputError(f"{name}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise InputError(f"{name}: a job spec is a mapping of settings (name: ..., task: ...)")
    return data


def load_schema_file(path: str | os.PathLike, limits: InputLimits) -> dict[str, Any]:
    """The JSON Schema object in a `--schema` file."""
    name = os.fspath(path)
    raw = read_bounded(path, limits.max_spec_bytes, "schema file")
    try:
        schema = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{name}: invalid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InputError(f"{name}: a JSON Schema is an object {{...}}")
    return schema


def _check_expansion(root: yaml.Node, max_nodes: int, name: str) -> None:
    """Refuse a node graph whose tree (aliases expanded) has more than max_nodes nodes or a cycle.

    Iterative post-order with one size per distinct node: linear in the composed graph however large the
    expansion is."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in children)
            if total > max_nodes:
                raise InputError(
                    f"{name}: the YAML expands to more than {max_nodes:,} nodes once its aliases "
                    "are resolved (max_spec_nodes); remove the repeated aliases or raise max_spec_nodes"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise InputError(
                f"{name}: a YAML alias contains itself (line {node.start_mark.line + 1}); recursive aliases are refused"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())
