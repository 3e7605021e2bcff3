"""Gemini batch mode (inline requests): POST /v1beta/models/{model}:batchGenerateContent, poll GET
/v1beta/batches/{id}, read the inlined responses of the ended batch, POST /v1beta/batches/{id}:cancel.
The batch's display name is the runner's tag, which `find` looks for in GET /v1beta/batches."""

from __future__ import annotations

from urllib.parse import quote

import orjson

from ...catalog import ModelInfo
from .base import CANCELLED, ERRORED, EXPIRED, BatchClient, BatchState, LineResult, Limits

ENDED = frozenset(
    {
        "BATCH_STATE_SUCCEEDED",
        "BATCH_STATE_FAILED",
        "BATCH_STATE_CANCELLED",
        "BATCH_STATE_EXPIRED",
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
    }
)
FIND_PAGES = 5


class GeminiBatches(BatchClient):
    api = "gemini"
    limits = Limits(max_requests=50_000, max_bytes=20 * 1024 * 1024)  # the inline-request limit

    def line_size(self, custom_id: str, body: dict) -> int:
        return len(orjson.dumps({"request": body, "metadata": {"key": custom_id}})) + 1

    def _path(self, batch_id: str) -> str:
        return f"{self.base}/v1beta/{batch_id if batch_id.startswith('batches/') else 'batches/' + batch_id}"

    async def create(self, model: ModelInfo, lines: list[tuple[str, dict]], tag: str) -> str:
        url = f"{self.base}/v1beta/models/{quote(model.model, safe='-._~')}:batchGenerateContent"
        r = await self.send(
            model,
            "POST",
            url,
            json={
                "batch": {
                    "display_name": tag,
                    "input_config": {
                        "requests": {"requests": [{"request": body, "metadata": {"key": cid}} for cid, body in lines]}
                    },
                }
            },
        )
        return orjson.loads(r.content)["name"]

    async def find(self, tag: str, *, since: float, total: int) -> str | None:
        token = None
        for _ in range(FIND_PAGES):
            params = {"pageSize": 100, **({"pageToken": token} if token else {})}
            r = await self.send(self.no_model, "GET", f"{self.base}/v1beta/batches", params=params)
            page = orjson.loads(r.content)
            for op in page.get("operations") or []:
                if (op.get("metadata") or {}).get("displayName") == tag:
                    return op["name"]
            token = page.get("nextPageToken")
            if not token:
                return None
        return None

    async def _get(self, batch_id: str) -> dict:
        r = await self.send(self.no_model, "GET", self._path(batch_id))
        return orjson.loads(r.content)

    async def poll(self, batch_id: str) -> BatchState:
        meta = (await self._get(batch_id)).get("metadata") or {}
        stats = meta.get("batchStats") or {}
        total = int(stats.get("requestCount") or 0)
        return BatchState(
            batch_id,
            meta.get("state") in ENDED,
            meta.get("state") or "?",
            total,
            total - int(stats.get("pendingRequestCount") or 0),
        )

    async def results(self, model: ModelInfo, batch_id: str) -> list[LineResult]:
        op = await self._get(batch_id)
        meta = op.get("metadata") or {}
        output = meta.get("output") or (op.get("response") or {})
        items = ((output.get("inlinedResponses") or {}).get("inlinedResponses")) or []
        state = meta.get("state", "")
        out = []
        for item in items:
            cid = str((item.get("metadata") or {}).get("key"))
            if item.get("response") is not None:
                out.append(self.parse_line(model, cid, item["response"]))
                continue
            err = item.get("error") or {}
            kind = (
                ERRORED
                if err.get("status") not in ("CANCELLED", None)
                else (EXPIRED if state.endswith("EXPIRED") else CANCELLED)
            )
            out.append(
                LineResult(
                    cid,
                    kind,
                    error=err.get("message"),
                    error_class=err.get("status") or "error",
                    http_status=err.get("code"),
                )
            )
        return out

    async def cancel(self, batch_id: str) -> None:
        await self.send(self.no_model, "POST", self._path(batch_id) + ":cancel")
