"""OpenAI Batch API: upload the JSONL (POST /files, purpose=batch), POST /batches, poll GET /batches/{id},
read output_file_id and error_file_id (GET /files/{id}/content), POST /batches/{id}/cancel.

The batch is tagged with `metadata.llmbatch_tag`; `find` pages through GET /batches (newest first) for it.
An expired or cancelled batch still has an output file with what finished before: those lines are billed.
"""

from __future__ import annotations

import orjson

from ...catalog import ModelInfo
from .base import CANCELLED, ERRORED, EXPIRED, BatchClient, BatchState, LineResult, Limits

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
FIND_PAGES = 5  # GET /batches pages (100 each) searched for a tag: recent batches only


class OpenAIBatches(BatchClient):
    api = "openai"
    limits = Limits(max_requests=50_000, max_bytes=200 * 1024 * 1024)

    def line_size(self, custom_id: str, body: dict) -> int:
        return len(self._line(custom_id, body))

    @staticmethod
    def _line(custom_id: str, body: dict) -> bytes:
        return (
            orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
            + b"\n"
        )

    async def create(self, model: ModelInfo, lines: list[tuple[str, dict]], tag: str) -> str:
        content = b"".join(self._line(cid, body) for cid, body in lines)
        r = await self.send(
            model,
            "POST",
            f"{self.base}/files",
            data={"purpose": "batch"},
            files={"file": (f"{tag}.jsonl", content, "application/jsonl")},
        )
        file_id = orjson.loads(r.content)["id"]
        r = await self.send(
            model,
            "POST",
            f"{self.base}/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"llmbatch_tag": tag},
            },
        )
        return orjson.loads(r.content)["id"]

    async def find(self, tag: str, *, since: float, total: int) -> str | None:
        after = None
        for _ in range(FIND_PAGES):
            params = {"limit": 100, **({"after": after} if after else {})}
            r = await self.send(self.no_model, "GET", f"{self.base}/batches", params=params)
            page = orjson.loads(r.content)
            for b in page.get("data") or []:
                if (b.get("metadata") or {}).get("llmbatch_tag") == tag:
                    return b["id"]
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    async def poll(self, batch_id: str) -> BatchState:
        b = await self._get(batch_id)
        counts = b.get("request_counts") or {}
        return BatchState(
            batch_id,
            b["status"] in ENDED,
            b["status"],
            int(counts.get("total") or 0),
            int(counts.get("completed") or 0) + int(counts.get("failed") or 0),
        )

    async def _get(self, batch_id: str) -> dict:
        r = await self.send(self.no_model, "GET", f"{self.base}/batches/{batch_id}")
        return orjson.loads(r.content)

    async def results(self, model: ModelInfo, batch_id: str) -> list[LineResult]:
        b = await self._get(batch_id)
        out: list[LineResult] = []
        for key in ("output_file_id", "error_file_id"):
            if not b.get(key):
                continue
            r = await self.send(model, "GET", f"{self.base}/files/{b[key]}/content", timeout=600.0)
            for raw in r.content.splitlines():
                if raw.strip():
                    out.append(self._result(model, orjson.loads(raw)))
        return out

    def _result(self, model: ModelInfo, line: dict) -> LineResult:
        cid = str(line.get("custom_id"))
        response, error = line.get("response"), line.get("error")
        if response and response.get("status_code") == 200:
            return self.parse_line(model, cid, response["body"])
        if response:  # a request the API answered with an error (billed only if it returned usage)
            body = response.get("body") or {}
            detail = self.adapter.error_detail(body)
            return LineResult(
                cid,
                ERRORED,
                error=detail.message if detail else str(body)[:300],
                error_class=(detail.code if detail else None) or "batch_line_error",
                http_status=response.get("status_code"),
            )
        code = (error or {}).get("code") or "batch_error"
        kind = EXPIRED if code == "batch_expired" else CANCELLED if code == "batch_cancelled" else ERRORED
        return LineResult(cid, kind, error=(error or {}).get("message"), error_class=code)

    async def cancel(self, batch_id: str) -> None:
        await self.send(self.no_model, "POST", f"{self.base}/batches/{batch_id}/cancel")
