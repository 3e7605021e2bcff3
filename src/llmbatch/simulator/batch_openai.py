"""OpenAI Files + Batches, and the flex tier, as the simulator serves them.

POST /v1/files (multipart, purpose=batch) -> File; GET /v1/files/{id}[/content]; POST /v1/batches
{input_file_id, endpoint, completion_window, metadata} -> Batch; GET /v1/batches[/{id}]; POST
/v1/batches/{id}/cancel. Output and error files appear when the batch ends (completed, expired or cancelled):
output lines `{id, custom_id, response: {status_code, request_id, body}, error: null}`, error-file lines with
`response: null, error: {code, message}` (batch_expired, batch_cancelled) or a non-200 response.

Flex: a chat completion with `service_tier: "flex"` is answered 429 `resource_unavailable` (before any work,
so nothing is billed) for `flex_unavailable` of the calls, and otherwise served and labelled "flex".
"""

from __future__ import annotations

import time
from functools import partial

import orjson
from aiohttp import web

from . import batch_core as core
from .dialects.openai import OpenAIDialect
from .pipeline import handle
from .state import SimState

MAX_REQUESTS = 50_000


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _error(
    status: int, message: str, code: str | None = None, param: str | None = None, kind: str = "invalid_request_error"
) -> web.Response:
    return _json({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _authed(request: web.Request) -> bool:
    return OpenAIDialect().api_key(request) is not None


def _no_key() -> web.Response:
    return _error(401, "You didn't provide an API key.", None)


def _file_obj(fid: str, entry) -> dict:
    name, content, created, purpose = entry
    return {
        "id": fid,
        "object": "file",
        "bytes": len(content),
        "created_at": int(created),
        "filename": name,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _add_file(state: SimState, name: str, content: bytes, purpose: str) -> str:
    fid = f"file-{state.new_id()}"
    core.book(state).files[fid] = (name, content, time.time(), purpose)
    return fid


async def upload_file(state: SimState, request: web.Request) -> web.Response:
    if not _authed(request):
        return _no_key()
    post = await request.post()
    purpose = post.get("purpose")
    upload = post.get("file")
    if not isinstance(purpose, str) or not purpose:
        return _error(400, "Missing required parameter: 'purpose'.", "missing_required_parameter", "purpose")
    if not isinstance(upload, web.FileField):
        return _error(400, "Missing required parameter: 'file'.", "missing_required_parameter", "file")
    content = upload.file.read()
    fid = _add_file(state, upload.filename or "upload.jsonl", content, purpose)
    return _json(_file_obj(fid, core.book(state).files[fid]))


def _file(state: SimState, request: web.Request):
    """(file id, entry) named in the path, or the error answer."""
    if not _authed(request):
        return None, _no_key()
    fid = request.match_info["file_id"]
    entry = core.book(state).files.get(fid)
    if entry is None:
        return None, _error(404, f"No such File object: {fid}", None, "id")
    return (fid, entry), None


async def get_file(state: SimState, request: web.Request) -> web.Response:
    found, bad = _file(state, request)
    return bad or _json(_file_obj(*found))


async def file_content(state: SimState, request: web.Request) -> web.Response:
    found, bad = _file(state, request)
    return bad or web.Response(body=found[1][1], content_type="application/octet-stream")


def _parse_input(content: bytes) -> tuple[list, str | None]:
    """The input file's lines, or a reason it is not valid (as the real API reports it, on the batch)."""
    lines, seen, model = [], set(), None
    for n, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            cid, body = line["custom_id"], line["body"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [], f"line {n}: not a valid batch request line"
        if cid in seen:
            return [], f"line {n}: duplicate custom_id {cid!r}"
        seen.add(cid)
        if model is not None and body.get("model") != model:
            return [], f"line {n}: all requests in a batch must use the same model"
        model = body.get("model")
        lines.append((str(cid), body, None))
    if not lines:
        return [], "the input file has no requests"
    if len(lines) > MAX_REQUESTS:
        return [], f"too many requests: {len(lines)} > {MAX_REQUESTS}"
    return lines, None


async def create_batch(state: SimState, request: web.Request) -> web.Response:
    if not _authed(request):
        return _no_key()
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    fid = payload.get("input_file_id")
    if payload.get("endpoint") != "/v1/chat/completions":
        return _error(400, "The simulator serves batches for /v1/chat/completions only.", "invalid_value", "endpoint")
    if payload.get("completion_window") != "24h":
        return _error(400, "completion_window must be '24h'.", "invalid_value", "completion_window")
    entry = core.book(state).files.get(fid)
    if entry is None:
        return _error(404, f"No such File object: {fid}", None, "input_file_id")
    lines, problem = _parse_input(entry[1])
    b = core.new_batch(
        state,
        "openai",
        "batch_",
        lines,
        meta={"metadata": payload.get("metadata"), "input_file_id": fid, "problem": problem},
    )
    if problem:
        b.ended_at = b.created
    return _json(_batch_obj(state, b))


def _outputs(state: SimState, b: core.SimBatch) -> None:
    """Write the output and error files once the batch has ended."""
    if "output_file_id" in b.meta:
        return
    out, err = [], []
    for (cid, _, _), r in zip(b.lines, b.results):
        rid = f"batch_req_{state.new_id()}"
        if r.kind == core.SUCCEEDED:
            out.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": f"req_{state.new_id()}", "body": r.body},
                    "error": None,
                }
            )
        elif r.kind == core.ERRORED:
            e = r.error
            assert e is not None  # an errored line carries its error
            err.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {
                        "status_code": r.status,
                        "request_id": f"req_{state.new_id()}",
                        "body": {
                            "error": {
                                "message": e.message,
                                "type": "invalid_request_error" if r.status < 500 else "server_error",
                                "param": e.param,
                                "code": e.code,
                            }
                        },
                    },
                    "error": None,
                }
            )
        else:
            code = "batch_expired" if r.kind == core.EXPIRED else "batch_cancelled"
            err.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": None,
                    "error": {
                        "code": code,
                        "message": f"This request could not be executed before the batch was "
                        f"{'expired' if r.kind == core.EXPIRED else 'cancelled'}.",
                    },
                }
            )
    dump = lambda rows: b"".join(orjson.dumps(x) + b"\n" for x in rows)  # noqa: E731
    b.meta["output_file_id"] = _add_file(state, f"{b.id}_output.jsonl", dump(out), "batch_output") if out else None
    b.meta["error_file_id"] = _add_file(state, f"{b.id}_error.jsonl", dump(err), "batch_output") if err else None


def _batch_obj(state: SimState, b: core.SimBatch) -> dict:
    dialect = OpenAIDialect()
    core.advance(state, dialect, b)
    problem = b.meta.get("problem")
    counts = b.counts()
    if problem:
        status = "failed"
    elif not b.ended:
        status = (
            "cancelling"
            if b.cancelled_at is not None
            else ("validating" if not b.results and time.time() - b.created < 0.05 else "in_progress")
        )
    elif b.cancelled_at is not None and counts.get(core.CANCELLED):
        status = "cancelled"
    elif b.expired:
        status = "expired"
    else:
        status = "completed"
    if b.ended and not problem:
        _outputs(state, b)
    ts = lambda t: int(t) if t is not None else None  # noqa: E731
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": {
            "object": "list",
            "data": [{"code": "invalid_request", "message": problem, "param": None, "line": None}],
        }
        if problem
        else None,
        "input_file_id": b.meta.get("input_file_id"),
        "completion_window": "24h",
        "status": status,
        "output_file_id": b.meta.get("output_file_id"),
        "error_file_id": b.meta.get("error_file_id"),
        "created_at": ts(b.created),
        "in_progress_at": ts(b.created) if not problem else None,
        "expires_at": ts(b.created + state.config.batch_expiry_s) if state.config.batch_expiry_s else None,
        "finalizing_at": ts(b.ended_at) if status == "completed" else None,
        "completed_at": ts(b.ended_at) if status == "completed" else None,
        "failed_at": ts(b.ended_at) if problem else None,
        "expired_at": ts(b.ended_at) if status == "expired" else None,
        "cancelling_at": ts(b.cancelled_at),
        "cancelled_at": ts(b.ended_at) if status == "cancelled" else None,
        "request_counts": {
            "total": len(b.lines),
            "completed": counts.get(core.SUCCEEDED, 0),
            "failed": len(b.results) - counts.get(core.SUCCEEDED, 0),
        },
        "metadata": b.meta.get("metadata"),
    }


def _lookup(state: SimState, request: web.Request) -> core.SimBatch | web.Response:
    if not _authed(request):
        return _no_key()
    b = core.find(state, "openai", request.match_info["batch_id"])
    if b is None:
        return _error(404, f"No batch found with id '{request.match_info['batch_id']}'.", None)
    return b


async def get_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    return b if isinstance(b, web.Response) else _json(_batch_obj(state, b))


async def cancel_batch(state: SimState, request: web.Request) -> web.Response:
    b = _lookup(state, request)
    if isinstance(b, web.Response):
        return b
    core.cancel(state, b)
    return _json(_batch_obj(state, b))


async def list_batches(state: SimState, request: web.Request) -> web.Response:
    """Newest first, cursor-paginated with `after` and `limit`, like the real API."""
    if not _authed(request):
        return _no_key()
    limit = max(1, min(100, int(request.query.get("limit", "20"))))
    rest = core.newest_first(state, "openai", request.query.get("after"))
    page = [_batch_obj(state, b) for b in rest[:limit]]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rest) > limit,
        }
    )


async def chat_with_flex(state: SimState, dialect: OpenAIDialect, request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: the ordinary pipeline, plus the flex tier."""
    raw = await request.read()  # aiohttp keeps the body: the pipeline reads it again
    if b'"service_tier"' not in raw:
        return await handle(state, dialect, request)
    try:
        tier = orjson.loads(raw).get("service_tier")
    except (orjson.JSONDecodeError, AttributeError):
        tier = None
    if tier != "flex":
        return await handle(state, dialect, request)
    if (
        dialect.api_key(request) is not None
        and state.config.flex_unavailable
        and state.rng.random() < state.config.flex_unavailable
    ):
        core.book(state).flex_unavailable += 1
        return _error(
            429,
            "Resource unavailable. Please try again later or use the default service tier.",
            "resource_unavailable",
            None,
            "server_error",
        )
    resp = await handle(state, dialect, request)
    if isinstance(resp, web.Response) and resp.status == 200 and isinstance(resp.body, bytes) and resp.body:
        body = orjson.loads(resp.body)
        body["service_tier"] = "flex"
        resp.body = orjson.dumps(body)
        core.book(state).flex_served += 1
    return resp


def add_routes(app: web.Application, state: SimState, dialect: OpenAIDialect) -> None:
    app.router.add_post("/v1/files", partial(upload_file, state))
    app.router.add_get("/v1/files/{file_id}", partial(get_file, state))
    app.router.add_get("/v1/files/{file_id}/content", partial(file_content, state))
    app.router.add_post("/v1/batches", partial(create_batch, state))
    app.router.add_get("/v1/batches", partial(list_batches, state))
    app.router.add_get("/v1/batches/{batch_id}", partial(get_batch, state))
    app.router.add_post("/v1/batches/{batch_id}/cancel", partial(cancel_batch, state))
