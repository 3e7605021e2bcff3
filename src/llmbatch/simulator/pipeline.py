"""The path every provider request takes: auth, model lookup, bursts and faults, rate limit, injected
errors, validation, answer, latency, delivery. Dialects supply the API-specific pieces.

The order mirrors a real provider's edge: identity and routing first, then capacity, then the request.
Keys are read only to check presence; they never reach a log line, a response or the stats.
"""

from __future__ import annotations

import asyncio
import math
import time

import orjson
from aiohttp import web

from . import faults
from .apierror import RATE_LIMIT, ApiError
from .dialects.base import Dialect, Reply
from .latency import answer_latency
from .modelinfo import SimModel
from .ratelimit import RateDecision
from .state import SimState

JSON = "application/json"


class _Exchange:
    """What one request learned on its way through, for the response headers and the stats."""

    __slots__ = ("request_id", "model", "fault", "error", "decision", "status")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.model: SimModel | None = None
        self.fault: str | None = None
        self.error: str | None = None  # why a non-200 answer was given
        self.decision: RateDecision | None = None
        self.status: int | str = "dropped"


async def handle(state: SimState, dialect: Dialect, request: web.Request) -> web.StreamResponse:
    ex = _Exchange(state.new_id())
    stats = state.stats
    stats.in_flight += 1
    try:
        try:
            resp = await _serve(state, dialect, request, ex)
        except ApiError as err:
            resp = _error_response(dialect, err, ex)
        ex.status = resp.status
        return resp
    except faults.ConnectionDropped:
        # The connection is gone; cancelling this handler is the quiet way to tell aiohttp so.
        ex.status = "dropped"
        raise asyncio.CancelledError() from None
    except asyncio.CancelledError:
        ex.status = "client_gone" if ex.fault != "reset" else "dropped"
        raise
    finally:
        stats.in_flight -= 1
        stats.record(
            api=dialect.api, model=ex.model.id if ex.model else None, status=ex.status, fault=ex.fault, error=ex.error
        )


async def _serve(state: SimState, dialect: Dialect, request: web.Request, ex: _Exchange) -> web.StreamResponse:
    if dialect.api_key(request) is None:
        ex.error = "auth"
        raise dialect.missing_key()
    dialect.check_headers(request)
    raw = await request.read()
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise dialect.bad_json() from None
    if not isinstance(payload, dict):
        raise dialect.bad_json()
    name = dialect.model_name(request, payload)
    model = state.registry.find(dialect.api, name) if name else None
    if model is None:
        ex.error = "unknown_model"
        raise dialect.model_not_found(name)
    ex.model = model
    cfg = state.config
    rpm = cfg.override(model.id, "rpm", cfg.rpm)
    limiter_key = f"{dialect.api}:{model.id}"
    now = time.monotonic()

    storm = faults.burst_left(
        now, state.burst_started["storm429"], cfg.faults.get("storm429", 0.0), cfg.storm_duration_s
    )
    if storm:
        ex.fault = "storm429"
        ex.decision = state.limiter.peek(limiter_key, rpm, now)
        raise dialect.rate_limited(model, rpm, storm)
    if faults.burst_left(now, state.burst_started["burst5xx"], cfg.faults.get("burst5xx", 0.0), cfg.burst_duration_s):
        ex.fault = "burst5xx"
        raise dialect.server_error(state.rng)

    fault = faults.pick_request_fault(state.rng, cfg.faults)
    if fault is not None:
        ex.fault = fault
    if fault == "hang":
        await faults.hang(request, cfg.hang_max_s)
    if fault == "reset":
        faults.abort_connection(request)
        raise faults.ConnectionDropped()

    ex.decision = decision = state.limiter.acquire(limiter_key, rpm, now)
    if not decision.allowed:
        ex.error = "rpm"
        raise dialect.rate_limited(model, rpm, decision.reset_s)

    error_rate = cfg.override(model.id, "error_rate", cfg.error_rate)
    if error_rate and state.rng.random() < error_rate:
        ex.error = "injected"
        if state.rng.random() < 0.5:
            raise dialect.rate_limited(model, None, cfg.retry_after_s)
        raise dialect.server_error(state.rng)

    parsed = dialect.parse(payload, model)
    reply: Reply = dialect.respond(parsed, model, state, ex.request_id)
    state.stats.prompt_tokens += reply.prompt_tokens
    state.stats.completion_tokens += reply.completion_tokens
    state.stats.cached_tokens += reply.cached_tokens
    state.stats.cache_write_tokens += reply.cache_write_tokens
    body = orjson.dumps(reply.body)

    latency = answer_latency(cfg, model.id, state.rng)
    if latency > 0:
        await asyncio.sleep(latency)

    headers = _headers(dialect, ex)
    if fault == "malformed":
        return web.Response(body=faults.MALFORMED_BODY, headers=headers, content_type=JSON)
    if fault == "truncated":
        return await faults.send_truncated(request, body, headers, cut_framing=state.rng.random() < 0.5)
    if fault == "slow_body":
        return await faults.send_slowly(request, body, headers, cfg.slow_body_s)
    return web.Response(body=body, headers=headers, content_type=JSON)


def _headers(dialect: Dialect, ex: _Exchange) -> dict[str, str]:
    headers = dialect.base_headers(ex.request_id)
    if ex.decision is not None:
        headers.update(dialect.rate_headers(ex.decision))
    return headers


def _error_response(dialect: Dialect, err: ApiError, ex: _Exchange) -> web.Response:
    if ex.error is None:
        ex.error = ex.fault or ("rate_limit" if err.kind == RATE_LIMIT else f"http_{err.status}")
    headers = _headers(dialect, ex)
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(err.retry_after * 1000)))
        if err.kind == RATE_LIMIT and ex.decision is not None and not ex.decision.allowed:
            headers["x-ratelimit-remaining-requests"] = "0"
    body = orjson.dumps(dialect.error_body(err, ex.request_id))
    return web.Response(status=err.status, body=body, headers=headers, content_type=JSON)
