"""Gemini batch mode as the simulator serves it (inline requests).

POST /v1beta/models/{model}:batchGenerateContent {batch: {display_name, input_config: {requests: {requests:
[{request, metadata: {key}}]}}}} -> an operation `batches/{id}` whose metadata is the GenerateContentBatch;
GET /v1beta/batches/{id}; GET /v1beta/batches; POST /v1beta/batches/{id}:cancel. States BATCH_STATE_PENDING,
RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED; when ended, `output.inlinedResponses.inlinedResponses` holds
one `{response | error, metadata}` per request, in input order.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

import orjson
from aiohttp import web

from . import batch_core as core
from .dialects.gemini import GeminiDialect
from .state import SimState

_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _error(status: int, message: str, kind: str = "INVALID_ARGUMENT") -> web.Response:
    return _json({"error": {"code": status, "message": message, "status": kind}}, status)


def _get(obj: dict, camel: str, snake: str):
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _operation(state: SimState, b: core.SimBatch) -> dict:
    core.advance(state, GeminiDialect(), b)
    counts = b.counts()
    if not b.ended:
        st = "BATCH_STATE_RUNNING" if b.results or b.cancelled_at is None else "BATCH_STATE_PENDING"
    elif b.cancelled_at is not None and counts.get(core.CANCELLED):
        st = "BATCH_STATE_CANCELLED"
    elif b.expired:
        st = "BATCH_STATE_EXPIRED"
    else:
        st = "BATCH_STATE_SUCCEEDED"
    meta = {
        "@type": _TYPE,
        "model": f"models/{b.model}",
        "displayName": b.meta.get("display_name", ""),
        "name": b.id,
        "state": st,
        "createTime": _time(b.created),
        "updateTime": _time(b.ended_at or b.created),
        "batchStats": {
            "requestCount": str(len(b.lines)),
            "successfulRequestCount": str(counts.get(core.SUCCEEDED, 0)),
            "failedRequestCount": str(len(b.results) - counts.get(core.SUCCEEDED, 0)),
            "pendingRequestCount": str(len(b.lines) - len(b.results)),
        },
    }
    op: dict = {"name": b.id, "metadata": meta, "done": b.ended}
    if b.ended:
        meta["endTime"] = _time(b.ended_at)
        inlined = []
        for (key, _, _), r in zip(b.lines, b.results):
            item: dict = {"metadata": {"key": key}}
            if r.kind == core.SUCCEEDED:
                item["response"] = r.body
            else:
                msg = r.error.message if r.error else f"the request was {r.kind} before it ran"
                item["error"] = {
                    "code": r.status if r.error else 499,
                    "message": msg,
                    "status": "CANCELLED" if r.kind != core.ERRORED else "INTERNAL",
                }
            inlined.append(item)
        output = {"inlinedResponses": {"inlinedResponses": inlined}}
        meta["output"] = output
        op["response"] = {"@type": _TYPE.replace("GenerateContentBatch", "GenerateContentBatchOutput"), **output}
    return op


async def create_batch(state: SimState, request: web.Request) -> web.Response:
    d = GeminiDialect()
    if d.api_key(request) is None:
        return _error(403, "Method doesn't allow unregistered callers. Please use an API key.", "PERMISSION_DENIED")
    model = request.match_info["model"]
    if state.registry.find("gemini", model) is None:
        return _error(404, f"models/{model} is not found for API version v1beta", "NOT_FOUND")
    try:
        payload = orjson.loads(await request.read())
        batch = payload["batch"]
        cfg = _get(batch, "inputConfig", "input_config")
        reqs = cfg["requests"]["requests"]
        lines = []
        for i, r in enumerate(reqs):
            key = (r.get("metadata") or {}).get("key") or str(i)
            lines.append((str(key), r["request"], model))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return _error(400, "batch.input_config.requests.requests: inline requests are required")
    if not lines:
        return _error(400, "batch.input_config.requests.requests: at least one request is required")
    b = core.new_batch(
        state,
        "gemini",
        "batches/",
        lines,
        model=model,
        meta={"display_name": _get(batch, "displayName", "display_name") or ""},
    )
    return _json(_operation(state, b))


def _lookup(state: SimState, request: web.Request) -> core.SimBatch | web.Response:
    if GeminiDialect().api_key(request) is None:
        return _error(403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED")
    b = core.find(state, "gemini", "batches/" + request.match_info["batch_id"])
    if b is None:
        return _error(404, "Requested entity was not found.", "NOT_FOUND")
    return b


async def get_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    return b if isinstance(b, web.Response) else _json(_operation(state, b))


async def cancel_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    if isinstance(b, web.Response):
        return b
    core.cancel(state, b)
    return _json({})


async def list_batches(state: SimState, request: web.Request) -> web.Response:
    if GeminiDialect().api_key(request) is None:
        return _error(403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED")
    size = max(1, min(1000, int(request.query.get("pageSize", "50"))))
    rest = core.newest_first(state, "gemini", request.query.get("pageToken"), inclusive=True)
    out: dict = {"operations": [_operation(state, b) for b in rest[:size]]}
    if len(rest) > size:
        out["nextPageToken"] = rest[size].id
    return _json(out)


def add_routes(app: web.Application, state: SimState) -> None:
    # v1beta only: /v1/batches is OpenAI's on this server.
    app.router.add_post("/v1beta/models/{model}:batchGenerateContent", partial(create_batch, state))
    app.router.add_get("/v1beta/batches", partial(list_batches, state))
    app.router.add_get("/v1beta/batches/{batch_id}", partial(get_batch, state))
    app.router.add_post("/v1beta/batches/{batch_id}:cancel", partial(cancel_batch, state))
