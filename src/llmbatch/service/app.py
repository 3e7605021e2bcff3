"""The ASGI app of `llmbatch serve`: OpenAI-compatible Files, Batches and Models, the dashboard, /metrics.

Every /v1 and dashboard request is made by a principal: the API token it carries (`Authorization: Bearer`,
or the dashboard's cookie), or nobody when no token exists (the server then listens on loopback only).
A principal sees only what it created; anyone else's ids answer 404.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..money import dumps_json
from ..catalog import Catalog
from ..catalog.loading import load_catalog
from ..config import Settings
from ..reporting import status_dict
from ..store import repo
from ..store.db import get_engine
from . import batches, files, tokens
from .errors import APIError, bad_request, not_found, unauthorized
from .runner import BatchRunner

TOKEN_COOKIE = "llmbatch_token"
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


@dataclass
class Service:
    settings: Settings
    engine: Engine
    catalog: Catalog
    runner: BatchRunner

    def principal(self, request: Request) -> str | None:
        """The caller's token id (None when the service has no tokens); 401 otherwise."""
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE)
        with self.engine.connect() as conn:
            if not tokens.any_active(conn):
                return None
            if not secret:
                raise unauthorized(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer TOKEN' "
                    "(`llmbatch tokens create NAME` makes one)."
                )
            token = tokens.authenticate(conn, secret)
        if token is None:
            raise unauthorized("Incorrect API key provided. `llmbatch tokens list` shows the active tokens.")
        return token.id

    def job_for(self, conn, job_id: str, owner: str | None) -> dict[str, Any]:
        job = repo.get_job(conn, job_id)
        if job is None or job.get("owner") != owner:
            raise not_found("job", job_id)
        return job


def _json(obj: Any, status: int = 200) -> Response:
    return Response(dumps_json(obj), status_code=status, media_type="application/json")


def _page(rows: list[dict], limit: int, shape) -> dict[str, Any]:
    data = [shape(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise bad_request(f"limit must be an integer from 1 to 100, got {raw!r}", param="limit")
    return int(raw)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request. Send a JSON object.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def build_app(settings: Settings, *, simulate: bool = False, engine: Engine | None = None) -> Starlette:
    """The app over `settings`' store. simulate=True runs every batch against the bundled simulator."""
    from . import dashboard, metrics

    engine = engine or get_engine(settings.database_url)
    svc = Service(settings, engine, load_catalog(settings), BatchRunner(settings, engine, simulate=simulate))

    # ---------------------------------------------------------------------------------------- files
    async def upload_file(request: Request) -> Response:
        owner = await run_in_threadpool(svc.principal, request)
        form = await request.form(max_part_size=files.MAX_BYTES)
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise bad_request(f"purpose must be 'batch', got {purpose!r}", param="purpose")
        if upload is None or isinstance(upload, str):
            raise bad_request(
                "Missing required parameter: 'file' (multipart/form-data).",
                param="file",
                code="missing_required_parameter",
            )
        fd, tmp = tempfile.mkstemp(suffix=".jsonl", dir=_files_dir(settings))
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := await upload.read(1 << 20):
                    out.write(chunk)
                    if out.tell() > files.MAX_BYTES:
                        raise bad_request(
                            "Invalid batch input file: over the 200 MB limit; split the file",
                            param="file",
                            code="invalid_file",
                        )
            await run_in_threadpool(files.validate_batch_file, tmp)

            def keep():
                with engine.begin() as conn:
                    return files.add_file(
                        conn,
                        settings.service_files_dir,
                        owner=owner,
                        filename=upload.filename or "input.jsonl",
                        purpose="batch",
                        src=tmp,
                    )

            return _json(files.file_object(await run_in_threadpool(keep)))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def list_files(request: Request) -> Response:
        owner, limit = svc.principal(request), _limit(request)
        with engine.connect() as conn:
            rows = files.list_files(
                conn,
                owner,
                after=request.query_params.get("after"),
                limit=limit + 1,
                purpose=request.query_params.get("purpose"),
            )
        return _json(_page(rows, limit, files.file_object))

    def get_file(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.connect() as conn:
            return _json(files.file_object(files.get_file(conn, request.path_params["file_id"], owner)))

    def file_content(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.connect() as conn:
            row = files.get_file(conn, request.path_params["file_id"], owner)
        return FileResponse(row["path"], media_type="application/jsonl", filename=row["filename"])

    def delete_file(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.begin() as conn:
            files.delete_file(conn, request.path_params["file_id"], owner)
        return _json({"id": request.path_params["file_id"], "object": "file", "deleted": True})

    # -------------------------------------------------------------------------------------- batches
    async def create_batch(request: Request) -> Response:
        owner = await run_in_threadpool(svc.principal, request)
        body = await _body(request)

        def create():
            with engine.begin() as conn:
                return batches.create_batch(conn, owner, body)

        b = await run_in_threadpool(create)
        svc.runner.submit(b["id"])
        return await run_in_threadpool(_batch_response, b)

    def _batch_response(b: dict) -> Response:
        with engine.connect() as conn:
            return _json(batches.batch_object(conn, b))

    def get_batch(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.connect() as conn:
            return _json(batches.batch_object(conn, batches.get_batch(conn, request.path_params["batch_id"], owner)))

    def list_batches(request: Request) -> Response:
        owner, limit = svc.principal(request), _limit(request)
        with engine.connect() as conn:
            rows = batches.list_batches(conn, owner, after=request.query_params.get("after"), limit=limit + 1)
            return _json(_page(rows, limit, lambda b: batches.batch_object(conn, b)))

    def cancel_batch(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.begin() as conn:
            b = batches.cancel_batch(conn, request.path_params["batch_id"], owner)
        return _batch_response(b)

    # ------------------------------------------------------------------------------- models and jobs
    def list_models(request: Request) -> Response:
        svc.principal(request)
        data = [
            {"id": m.key, "object": "model", "created": 0, "owned_by": m.provider, **m.public_dict()}
            for m in sorted(svc.catalog, key=lambda m: m.key)
        ]
        return _json({"object": "list", "data": data})

    def get_job(request: Request) -> Response:
        """llmbatch's own view of a batch's job (the `status --json` shape)."""
        owner = svc.principal(request)
        with engine.connect() as conn:
            return _json(status_dict(conn, svc.job_for(conn, request.path_params["job_id"], owner)))

    # ------------------------------------------------------------------------------------- handlers
    async def api_error(request: Request, exc: APIError) -> Response:
        if request.url.path.startswith("/dashboard"):  # people, not SDKs: a page
            if exc.status == 401:
                return RedirectResponse("/dashboard/login", status_code=303)
            return dashboard.error_page(exc.status, exc.message)
        return _json(exc.body(), exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _json(
                APIError(404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url").body(), 404
            )
        return _json(APIError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        svc.runner.start()
        try:
            yield
        finally:
            svc.runner.stop()

    routes = [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/metrics", metrics.endpoint(engine, settings.broker_url), methods=["GET"]),
        Route("/", lambda request: RedirectResponse("/dashboard"), methods=["GET"]),
        *dashboard.routes(svc),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        # starlette types each handler as taking any Exception, not the class it is registered for
        exception_handlers={APIError: api_error, HTTPException: http_error},  # type: ignore[dict-item]
    )
    app.state.service = svc
    return app


def _files_dir(settings: Settings) -> str:
    os.makedirs(settings.service_files_dir, exist_ok=True)
    return settings.service_files_dir
