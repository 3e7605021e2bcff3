"""TaskLine -> ChatRequest: the instructions each task type sends.

The wording is a contract with the simulator, which reads the allowed labels and the word budget back out
of these messages (the marker lines below), so change both together.
"""

from __future__ import annotations

import json
from typing import Any

from .models import DEFAULT_MAX_OUTPUT_TOKENS, ChatRequest, TaskLine

LABELS_MARKER = "Allowed labels:"
SCHEMA_MARKER = "JSON Schema:"
SUMMARY_MARKER = "Summarize the text below"


def max_output_tokens(task: TaskLine) -> int:
    return task.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS[task.task]


def _user_content(task: TaskLine) -> str | list[dict[str, Any]] | None:
    if not task.images:
        return task.input
    parts: list[dict[str, Any]] = [{"type": "text", "text": task.input}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in task.images]
    return parts


def _system_for(task: TaskLine) -> str | None:
    if task.task == "summarize":
        words = max(10, int(max_output_tokens(task) * 0.6))
        return f"{SUMMARY_MARKER} in at most {words} words. Reply with the summary only."
    if task.task == "classify":
        return (
            "Classify the text below. Reply with exactly one label and nothing else.\n"
            f"{LABELS_MARKER} {json.dumps(task.labels, ensure_ascii=False)}"
        )
    if task.task == "extract":
        return (
            "Extract the requested fields from the text below. Reply with one JSON object only, "
            "no prose, valid against this schema.\n"
            f"{SCHEMA_MARKER} {json.dumps(task.json_schema, ensure_ascii=False, sort_keys=True)}"
        )
    return None


def build_request(task: TaskLine) -> ChatRequest:
    messages: list[dict] = []
    system = _system_for(task)
    if system:
        messages.append({"role": "system", "content": system})
    if task.messages:
        messages += [m.model_dump() for m in task.messages]
    if task.input is not None:
        messages.append({"role": "user", "content": _user_content(task)})
    return ChatRequest(
        messages=messages,
        max_output_tokens=max_output_tokens(task),
        temperature=task.temperature if task.temperature is not None else (0.0 if task.task != "chat" else None),
        json_schema=task.json_schema if task.task == "extract" else None,
    )
