"""create_app(): the aiohttp application with the three provider APIs and the /_sim control endpoints."""

from __future__ import annotations

from functools import partial

import orjson
from aiohttp import web

from . import batch_anthropic, batch_core, batch_gemini, batch_openai
from .config import SimulatorConfig
from .dialects.anthropic import AnthropicDialect
from .dialects.gemini import GeminiDialect
from .dialects.openai import OpenAIDialect
from .pipeline import handle
from .state import SimState

STATE_KEY = web.AppKey("llmbatch_sim_state", SimState)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].stats.snapshot())


async def _get_config(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].config.to_dict())


async def _post_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = orjson.loads(await request.read())
        config = state.update(changes)
    except (orjson.JSONDecodeError, ValueError, TypeError) as e:
        return _json({"error": {"message": str(e)}}, status=400)
    return _json(config.to_dict())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json({"ok": True})


async def _batches(request: web.Request) -> web.Response:
    return _json(batch_core.book(request.app[STATE_KEY]).snapshot())


async def _health(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def _models(request: web.Request) -> web.Response:
    return _json(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": "simulator"}
                for name in request.app[STATE_KEY].registry.names()
            ],
        }
    )


def create_app(config: SimulatorConfig | None = None) -> web.Application:
    state = SimState(config or SimulatorConfig())
    app = web.Application(client_max_size=64 * 1024 * 1024)  # prompts with inline images can be large
    app[STATE_KEY] = state
    openai, anthropic, gemini = OpenAIDialect(), AnthropicDialect(), GeminiDialect()
    app.router.add_post("/v1/chat/completions", partial(batch_openai.chat_with_flex, state, openai))
    app.router.add_post("/v1/messages", partial(handle, state, anthropic))
    app.router.add_post("/v1beta/models/{model}:generateContent", partial(handle, state, gemini))
    app.router.add_post("/v1/models/{model}:generateContent", partial(handle, state, gemini))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_post("/_sim/config", _post_config)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_get("/_sim/health", _health)
    # --- discount-channels: the three batch APIs and their counters ---
    batch_openai.add_routes(app, state, openai)
    batch_anthropic.add_routes(app, state)
    batch_gemini.add_routes(app, state)
    app.router.add_get("/_sim/batches", _batches)
    return app


def app_state(app: web.Application) -> SimState:
    return app[STATE_KEY]
