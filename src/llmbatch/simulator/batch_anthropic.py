"""Anthropic Message Batches as the simulator serves them.

POST /v1/messages/batches {requests: [{custom_id, params}]} -> MessageBatch; GET /v1/messages/batches[/{id}];
POST /v1/messages/batches/{id}/cancel; GET /v1/messages/batches/{id}/results (JSONL, once ended):
`{custom_id, result: {type: succeeded|errored|canceled|expired, message | error}}`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

import orjson
from aiohttp import web

from . import batch_core as core
from .dialects.anthropic import AnthropicDialect
from .state import SimState

MAX_REQUESTS = 100_000
_KIND = {core.SUCCEEDED: "succeeded", core.ERRORED: "errored", core.CANCELLED: "canceled", core.EXPIRED: "expired"}


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


def _check(request: web.Request) -> web.Response | None:
    if AnthropicDialect().api_key(request) is None:  # x-api-key, or the bearer token newer SDKs send
        return _error(401, "x-api-key header is required", "authentication_error")
    if not request.headers.get("anthropic-version", "").strip():
        return _error(400, "anthropic-version: header is required")
    return None


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _batch_obj(state: SimState, b: core.SimBatch, request: web.Request) -> dict:
    core.advance(state, AnthropicDialect(), b)
    counts = b.counts()
    status = "ended" if b.ended else ("canceling" if b.cancelled_at is not None else "in_progress")
    root = f"{request.scheme}://{request.host}"
    return {
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": len(b.lines) - len(b.results),
            "succeeded": counts.get(core.SUCCEEDED, 0),
            "errored": counts.get(core.ERRORED, 0),
            "canceled": counts.get(core.CANCELLED, 0),
            "expired": counts.get(core.EXPIRED, 0),
        },
        "ended_at": _rfc3339(b.ended_at),
        "created_at": _rfc3339(b.created),
        "expires_at": _rfc3339(b.created + (state.config.batch_expiry_s or 86400)),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(b.cancelled_at),
        "results_url": f"{root}/v1/messages/batches/{b.id}/results" if b.ended else None,
    }


async def create_batch(state: SimState, request: web.Request) -> web.Response:
    bad = _check(request)
    if bad:
        return bad
    try:
        payload = orjson.loads(await request.read())
        reqs = payload["requests"]
        lines = [(str(r["custom_id"]), r["params"], None) for r in reqs]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _error(400, "requests: each request needs custom_id and params")
    if not lines or len(lines) > MAX_REQUESTS:
        return _error(400, f"requests: between 1 and {MAX_REQUESTS} requests")
    if len({c for c, _, _ in lines}) != len(lines):
        return _error(400, "requests: custom_id values must be unique within a batch")
    b = core.new_batch(state, "anthropic", "msgbatch_", lines)
    return _json(_batch_obj(state, b, request))


def _lookup(state: SimState, request: web.Request) -> core.SimBatch | web.Response:
    """The batch named in the path, or the error answer (auth, headers, 404)."""
    bad = _check(request)
    if bad:
        return bad
    b = core.find(state, "anthropic", request.match_info["batch_id"])
    if b is None:
        return _error(404, f"batch {request.match_info['batch_id']} not found", "not_found_error")
    return b


async def get_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    return b if isinstance(b, web.Response) else _json(_batch_obj(state, b, request))


async def cancel_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    if isinstance(b, web.Response):
        return b
    core.cancel(state, b)
    return _json(_batch_obj(state, b, request))


async def list_batches(state: SimState, request: web.Request) -> web.Response:
    bad = _check(request)
    if bad:
        return bad
    limit = max(1, min(1000, int(request.query.get("limit", "20"))))
    rest = core.newest_first(state, "anthropic", request.query.get("after_id"))
    page = [_batch_obj(state, b, request) for b in rest[:limit]]
    return _json(
        {
            "data": page,
            "has_more": len(rest) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
    )


async def results(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    if isinstance(b, web.Response):
        return b
    core.advance(state, AnthropicDialect(), b)
    if not b.ended:
        return _error(400, f"Batch {b.id} is still in progress; results are available once it has ended.")
    out = []
    for (cid, _, _), r in zip(b.lines, b.results):
        result: dict = {"type": _KIND[r.kind]}
        if r.kind == core.SUCCEEDED:
            result["message"] = r.body
        elif r.kind == core.ERRORED:
            assert r.error is not None  # an errored line carries its error
            result["error"] = {
                "type": "error",
                "error": {
                    "type": "invalid_request_error" if r.status < 500 else "api_error",
                    "message": r.error.message,
                },
            }
        out.append(orjson.dumps({"custom_id": cid, "result": result}) + b"\n")
    return web.Response(body=b"".join(out), content_type="application/binary")


def add_routes(app: web.Application, state: SimState) -> None:
    app.router.add_post("/v1/messages/batches", partial(create_batch, state))
    app.router.add_get("/v1/messages/batches", partial(list_batches, state))
    app.router.add_get("/v1/messages/batches/{batch_id}", partial(get_batch, state))
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", partial(cancel_batch, state))
    app.router.add_get("/v1/messages/batches/{batch_id}/results", partial(results, state))
