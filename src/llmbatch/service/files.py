"""Files of the service: uploaded batch input files and the output/error files written for finished batches.
The bytes live on disk under `service_files_dir`; the row (service_files) holds the owner and the metadata."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from ..ingest import LineError, parse_lines
from ..models import JobSpec
from ..store.schema import service_files
from .errors import bad_request, not_found

MAX_REQUESTS = 50_000  # OpenAI's limit per batch input file
MAX_BYTES = 200 << 20  # and per file
PURPOSES = ("batch", "batch_output")


def new_id(prefix: str) -> str:
    """Sortable by creation time (list pagination walks ids), unguessable."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(4)}"


def owned(column, owner: str | None):
    """The rows a caller may see: its own, or (no tokens configured) the unowned ones."""
    return column.is_(None) if owner is None else column == owner


def file_object(row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def validate_batch_file(path: str | os.PathLike) -> int:
    """Refuse a batch input file at its first bad line ("line N: why"); returns the number of requests."""
    n = 0
    for line_no, item in parse_lines(path, JobSpec()):
        if isinstance(item, LineError):
            raise bad_request(f"Invalid batch input file: {item.reason}", param="file", code="invalid_file")
        n += 1
        if n > MAX_REQUESTS:
            raise bad_request(
                f"Invalid batch input file: line {line_no}: more than {MAX_REQUESTS:,} requests; split the file",
                param="file",
                code="invalid_file",
            )
    if n == 0:
        raise bad_request("Invalid batch input file: it has no request lines", param="file", code="invalid_file")
    return n


def add_file(
    conn: Connection,
    files_dir: str,
    *,
    owner: str | None,
    filename: str,
    purpose: str,
    src: str | os.PathLike | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """Keep the bytes (moved from `src`, or `data`) and their row; returns the row as a dict."""
    file_id = new_id("file-")
    Path(files_dir).mkdir(parents=True, exist_ok=True)
    path = str(Path(files_dir) / f"{file_id}.jsonl")
    if src is not None:
        shutil.move(str(src), path)
    else:
        Path(path).write_bytes(data or b"")
    row = {
        "id": file_id,
        "owner": owner,
        "filename": filename[:300],
        "purpose": purpose,
        "bytes": os.path.getsize(path),
        "path": path,
        "created_at": time.time(),
    }
    conn.execute(insert(service_files).values(**row))
    return row


def get_file(conn: Connection, file_id: str, owner: str | None) -> dict[str, Any]:
    row = (
        conn.execute(select(service_files).where(service_files.c.id == file_id, owned(service_files.c.owner, owner)))
        .mappings()
        .first()
    )
    if row is None:
        raise not_found("file", file_id)
    return dict(row)


def list_files(
    conn: Connection, owner: str | None, *, after: str | None, limit: int, purpose: str | None = None
) -> list[dict[str, Any]]:
    q = select(service_files).where(owned(service_files.c.owner, owner))
    if purpose:
        q = q.where(service_files.c.purpose == purpose)
    if after:
        q = q.where(service_files.c.id < after)
    return [dict(r) for r in conn.execute(q.order_by(service_files.c.id.desc()).limit(limit)).mappings()]


def delete_file(conn: Connection, file_id: str, owner: str | None) -> None:
    row = get_file(conn, file_id, owner)
    conn.execute(delete(service_files).where(service_files.c.id == file_id))
    Path(row["path"]).unlink(missing_ok=True)
