"""`results --format openai`: result lines in OpenAI Batch output shape (what the official SDK parses)."""

from __future__ import annotations

from typing import Any

import orjson

from .results import usage_of


# Our finish reasons -> OpenAI's (the export claims OpenAI's shape; ChatCompletion accepts only these).
_OPENAI_FINISH = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "STOP": "stop",
    "length": "length",
    "max_tokens": "length",
    "MAX_TOKENS": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "SAFETY": "content_filter",
    "function_call": "function_call",
}


def _error_code(status: str, skip_reason: str | None, error: str | None) -> str:
    if status == "skipped":
        return f"skipped_{skip_reason or 'unknown'}"
    if status == "cancelled":
        return "cancelled"
    if error and error.startswith("truncated"):
        return "truncated"
    return "task_failed"


def openai_batch_line(r: dict[str, Any], job_id: str, seq: int) -> dict[str, Any]:
    """`results --format openai`: the OpenAI Batch output file shape, so existing tooling keeps working.
    `r` is a result_lines(with_final_attempt=True) dict. A succeeded task's body is a complete chat.completion
    of its FINAL attempt: that attempt's own usage, finish reason, served model and the provider's request id."""
    line_id = f"batch_req_{job_id}_{seq}"
    final = r.get("_final")
    if r["status"] == "succeeded" and final is not None:
        content = r["output"] if isinstance(r["output"], str) else orjson.dumps(r["output"]).decode()
        u = usage_of(final)
        created = int(final["finished_at"] or final["started_at"] or 0)
        body = {
            "id": final["provider_request_id"] or f"chatcmpl-{job_id}-{seq}",
            "object": "chat.completion",
            "created": created,
            "model": final["served_model"] or final["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": _OPENAI_FINISH.get(final["finish_reason"] or "stop", "stop"),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": u["input_tokens"],
                "completion_tokens": u["output_tokens"],
                "total_tokens": u["input_tokens"] + u["output_tokens"],
                "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            },
        }
        return {
            "id": line_id,
            "custom_id": r["id"],
            "response": {"status_code": 200, "request_id": final["provider_request_id"], "body": body},
            "error": None,
        }
    return {
        "id": line_id,
        "custom_id": r["id"],
        "response": None,
        "error": {
            "code": _error_code(r["status"], r.get("_skip_reason"), r["error"]),
            "message": r["error"] or r["status"],
        },
    }


def openai_rejected_line(e: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A rejected input line in the export: an error line with its custom_id (the line number when it had none)."""
    return {
        "id": f"batch_req_{job_id}_line{e['line_no']}",
        "custom_id": e["task_id"] or f"line-{e['line_no']}",
        "response": None,
        "error": {"code": "invalid_input", "message": f"line {e['line_no']}: {e['reason']}"},
    }
