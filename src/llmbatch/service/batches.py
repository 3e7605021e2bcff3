"""OpenAI-style batches over llmbatch jobs: creation, the object OpenAI's SDK reads, cancel, and the
finalization that writes the output and error files (the `results --format openai` lines).

Status: `validating` (the job is being created from the input file) -> `in_progress` (the job runs) ->
`finalizing` (its files are written) -> `completed`; `failed` when the file cannot become a job;
`cancelling` -> `cancelled` (what finished before the cancel is in the output file, and billed).
A job stopped by its budget or its token's daily cap completes: its skipped lines are in the error file,
and `llmbatch_job_status` says `budget_exhausted`.
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, insert, select, update

from ..money import dumps_json
from ..config import Settings
from ..errors import InputError
from ..jobs import create_job
from ..models import JobSpec
from ..reporting import openai_batch_line, result_lines
from ..store import repo
from ..store.schema import JobStatus, jobs, service_batches, service_files, tasks
from . import files
from .errors import APIError, bad_request, not_found

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
ROUTING_KEY, BUDGET_KEY = "llmbatch_routing", "llmbatch_budget_usd"
ROUTINGS = ("as_written", "cheapest")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at")


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if (
        not isinstance(raw, dict)
        or len(raw) > 16
        or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in raw.items())
    ):
        raise bad_request(
            "metadata must be an object of up to 16 string keys (64 chars) and string values (512 chars)",
            param="metadata",
        )
    if raw.get(ROUTING_KEY, "as_written") not in ROUTINGS:
        raise bad_request(f"metadata.{ROUTING_KEY} must be one of {', '.join(ROUTINGS)}", param="metadata")
    if BUDGET_KEY in raw:
        try:
            if not Decimal(raw[BUDGET_KEY]) >= 0:
                raise InvalidOperation
        except InvalidOperation:
            raise bad_request(
                f'metadata.{BUDGET_KEY} must be a dollar amount >= 0, like "5" or "0.25"', param="metadata"
            ) from None
    return dict(raw)


def create_batch(conn: Connection, owner: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Check the request and store the batch as `validating`; the runner then makes its job."""
    for key in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(key), str):
            raise bad_request(f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    if body["endpoint"] != ENDPOINT:
        raise bad_request(
            f"endpoint {body['endpoint']!r} is not supported; llmbatch runs {ENDPOINT} batches", param="endpoint"
        )
    if body["completion_window"] != COMPLETION_WINDOW:
        raise bad_request(f"completion_window must be {COMPLETION_WINDOW!r}", param="completion_window")
    meta = _metadata(body.get("metadata"))
    f = files.get_file(conn, body["input_file_id"], owner)
    if f["purpose"] != "batch":
        raise bad_request(
            f"file {f['id']} has purpose {f['purpose']!r}; upload the input with purpose 'batch'", param="input_file_id"
        )
    row = {
        "id": files.new_id("batch_"),
        "owner": owner,
        "job_id": None,
        "input_file_id": f["id"],
        "endpoint": ENDPOINT,
        "completion_window": COMPLETION_WINDOW,
        "metadata": orjson.dumps(meta).decode() if body.get("metadata") is not None else None,
        "status": "validating",
        "created_at": time.time(),
    }
    conn.execute(insert(service_batches).values(**row))
    return get_batch(conn, row["id"], owner)


def get_batch(conn: Connection, batch_id: str, owner: str | None) -> dict[str, Any]:
    row = (
        conn.execute(
            select(service_batches).where(service_batches.c.id == batch_id, files.owned(service_batches.c.owner, owner))
        )
        .mappings()
        .first()
    )
    if row is None:
        raise not_found("batch", batch_id)
    return dict(row)


def list_batches(conn: Connection, owner: str | None, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    q = select(service_batches).where(files.owned(service_batches.c.owner, owner))
    if after:
        q = q.where(service_batches.c.id < after)
    return [dict(r) for r in conn.execute(q.order_by(service_batches.c.id.desc()).limit(limit)).mappings()]


def batch_object(conn: Connection, b: dict[str, Any]) -> dict[str, Any]:
    """The object of openai.types.Batch, plus `llmbatch_job_id` / `llmbatch_job_status`."""
    counts = {"total": 0, "completed": 0, "failed": 0}
    job = repo.get_job(conn, b["job_id"]) if b["job_id"] else None
    usage = None
    if job is not None:
        c = repo.task_counts(conn, job["id"])
        counts = {
            "total": c["total"],
            "completed": c["succeeded"],
            "failed": c["failed"] + c["skipped"] + c["cancelled"],
        }
        usage = _usage(conn, job["id"])
    out = {
        "id": b["id"],
        "object": "batch",
        "endpoint": b["endpoint"],
        "errors": None,
        "input_file_id": b["input_file_id"],
        "completion_window": b["completion_window"],
        "status": b["status"],
        "output_file_id": b["output_file_id"],
        "error_file_id": b["error_file_id"],
        "created_at": int(b["created_at"]),
        "expires_at": int(b["created_at"]) + 24 * 3600,
        "expired_at": None,
        "request_counts": counts,
        "metadata": orjson.loads(b["metadata"]) if b["metadata"] else None,
        "usage": usage,
        "model": None,
        "llmbatch_job_id": b["job_id"],
        "llmbatch_job_status": job["status"] if job else None,
    }
    for key in _TIMES:
        out[key] = int(b[key]) if b[key] is not None else None
    if b["errors"]:
        out["errors"] = {"object": "list", "data": orjson.loads(b["errors"])}
    return out


def _usage(conn: Connection, job_id: str) -> dict[str, Any]:
    """openai.types.BatchUsage: the tokens of every billed attempt of the job."""
    row = conn.execute(
        select(
            *(
                func.coalesce(func.sum(getattr(tasks.c, k)), 0)
                for k in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
            )
        ).where(tasks.c.job_id == job_id)
    ).one()
    inp, cached, out, reasoning = (int(v) for v in row)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def _set(conn: Connection, batch_id: str, *, when: tuple[str, ...] = (), **values) -> int:
    q = update(service_batches).where(service_batches.c.id == batch_id)
    if when:
        q = q.where(service_batches.c.status.in_(when))
    return conn.execute(q.values(**values)).rowcount


def cancel_batch(conn: Connection, batch_id: str, owner: str | None) -> dict[str, Any]:
    b = get_batch(conn, batch_id, owner)
    if b["status"] in TERMINAL or b["status"] == "finalizing":
        raise APIError(409, f"Cannot cancel a batch with status '{b['status']}'.", code="invalid_state")
    if b["status"] != "cancelling":
        _set(conn, batch_id, status="cancelling", cancelling_at=time.time())
        if b["job_id"]:
            repo.request_cancel(conn, b["job_id"])
            repo.finish_job_if_done(conn, b["job_id"])
    return get_batch(conn, batch_id, owner)


# ------------------------------------------------------------------------------------ the runner's side


def _job_input(src: str, dest: Path, cheapest: bool) -> None:
    """The input as the job reads it: `"model": "auto"` lines (every line, with cheapest routing) lose their
    pinned model so routing picks the cheapest eligible one. One line out per line in: line numbers hold."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        for raw in fin:
            if raw.strip() and (cheapest or b'"auto"' in raw):
                obj = orjson.loads(raw)
                body = obj.get("body") if isinstance(obj, dict) else None
                target = body if isinstance(body, dict) else obj
                if isinstance(target, dict) and (cheapest or target.get("model") == "auto"):
                    target.pop("model", None)
                raw = orjson.dumps(obj) + b"\n"
            fout.write(raw)


def make_job(engine: Engine, settings: Settings, batch_id: str, *, simulate: bool) -> str | None:
    """`validating` -> the job, owned by the batch's token, and `in_progress`; `failed` if the file cannot
    become one. Returns the job id, or None."""
    with engine.begin() as conn:
        b = conn.execute(select(service_batches).where(service_batches.c.id == batch_id)).mappings().first()
        if b is not None and b["status"] == "cancelling" and b["job_id"] is None:  # cancelled before it started
            _set(conn, batch_id, status="cancelled", cancelled_at=time.time())
        if b is None or b["status"] != "validating":
            return None
        f = conn.execute(select(service_files.c.path).where(service_files.c.id == b["input_file_id"])).scalar()
    meta = orjson.loads(b["metadata"]) if b["metadata"] else {}
    path = Path(settings.service_files_dir) / f"{batch_id}.input.jsonl"
    try:
        if f is None:
            raise InputError(f"the input file {b['input_file_id']} was deleted before the batch started")
        _job_input(f, path, meta.get(ROUTING_KEY) == "cheapest")
        spec = JobSpec(name=f"batch {batch_id}", simulate=simulate, budget_usd=meta.get(BUDGET_KEY))
        job_id, _ = create_job(
            settings, path, spec, executor="celery" if settings.broker_url else "local", owner=b["owner"]
        )
    except InputError as e:
        with engine.begin() as conn:
            _set(
                conn,
                batch_id,
                when=("validating",),
                status="failed",
                failed_at=time.time(),
                errors=orjson.dumps(
                    [{"code": "invalid_file", "message": str(e), "param": None, "line": None}]
                ).decode(),
            )
        return None
    finally:
        path.unlink(missing_ok=True)
    with engine.begin() as conn:
        # input_path: the uploaded file (the rewritten copy the job was read from is gone)
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(input_path=f))
        if not _set(
            conn, batch_id, when=("validating",), job_id=job_id, status="in_progress", in_progress_at=time.time()
        ):  # cancelled while validating: the job ends at once
            _set(conn, batch_id, job_id=job_id)
            repo.request_cancel(conn, job_id)
            repo.finish_job_if_done(conn, job_id)
    return job_id


def finalize(engine: Engine, settings: Settings, batch_id: str) -> bool:
    """Once the batch's job is terminal: write its output and error files and end the batch. Exactly once
    (the finalizing claim is a conditional UPDATE). Returns True if this call finalized it."""
    with engine.begin() as conn:
        b = conn.execute(select(service_batches).where(service_batches.c.id == batch_id)).mappings().first()
        if b is None or b["job_id"] is None or b["status"] not in ("in_progress", "cancelling"):
            return False
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == b["job_id"])).scalar()
        if status not in JobStatus.terminal:
            return False
        ending = "cancelled" if b["status"] == "cancelling" or status == JobStatus.cancelled else "completed"
        if not _set(conn, batch_id, when=(b["status"],), status="finalizing", finalizing_at=time.time()):
            return False
    out, err, created = bytearray(), bytearray(), time.time()
    with engine.connect() as conn:
        for seq, r in enumerate(result_lines(conn, b["job_id"], with_final_attempt=True), 1):
            line = _sdk_complete(openai_batch_line(r, b["job_id"], seq), created)
            (out if line["error"] is None else err).extend(dumps_json(line) + b"\n")
    with engine.begin() as conn:
        ids: dict[str, Any] = {}
        for key, data in (("output_file_id", out), ("error_file_id", err)):
            if data:
                ids[key] = files.add_file(
                    conn,
                    settings.service_files_dir,
                    owner=b["owner"],
                    filename=f"{batch_id}_{key.split('_')[0]}.jsonl",
                    purpose="batch_output",
                    data=bytes(data),
                )["id"]
        ids[f"{ending}_at"] = time.time()
        _set(conn, batch_id, status=ending, **ids)
    return True


def _sdk_complete(line: dict[str, Any], created: float) -> dict[str, Any]:
    """Fill what openai.types.chat.ChatCompletion requires and the export may lack (its id, created)."""
    body = (line.get("response") or {}).get("body")
    if isinstance(body, dict):
        body.setdefault("id", f"chatcmpl-{line['id']}")
        body.setdefault("created", int(created))
    return line


def unfinished(engine: Engine) -> list[dict[str, Any]]:
    """Batches a (re)started server must carry on with: validating ones, and running ones."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(service_batches.c.id, service_batches.c.job_id, service_batches.c.status)
                .where(service_batches.c.status.in_(("validating", "in_progress", "cancelling", "finalizing")))
                .order_by(service_batches.c.id)
            ).mappings()
        ]
