"""Anthropic Message Batches: POST /v1/messages/batches {requests: [{custom_id, params}]}, poll GET
/v1/messages/batches/{id} (processing_status in_progress -> canceling -> ended), read the JSONL at
results_url, POST .../{id}/cancel.

Message batches carry no metadata, so `find` recognises a batch by its creation time (not before the
runner's recorded intent) and its number of requests; the runner never has two batches of one group open.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from ...catalog import ModelInfo
from .base import CANCELLED, ERRORED, EXPIRED, BatchClient, BatchState, LineResult, Limits

_KIND = {"canceled": CANCELLED, "expired": EXPIRED, "errored": ERRORED}


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AnthropicBatches(BatchClient):
    api = "anthropic"
    limits = Limits(max_requests=100_000, max_bytes=256 * 1024 * 1024)

    def line_size(self, custom_id: str, body: dict) -> int:
        return len(orjson.dumps({"custom_id": custom_id, "params": body})) + 1

    async def create(self, model: ModelInfo, lines: list[tuple[str, dict]], tag: str) -> str:
        r = await self.send(
            model,
            "POST",
            f"{self.base}/v1/messages/batches",
            json={"requests": [{"custom_id": cid, "params": body} for cid, body in lines]},
        )
        return orjson.loads(r.content)["id"]

    async def find(self, tag: str, *, since: float, total: int) -> str | None:
        r = await self.send(self.no_model, "GET", f"{self.base}/v1/messages/batches", params={"limit": 100})
        for b in orjson.loads(r.content).get("data") or []:
            counts = b.get("request_counts") or {}
            if _epoch(b.get("created_at")) >= since - 1 and sum(int(v or 0) for v in counts.values()) == total:
                return b["id"]
        return None

    async def poll(self, batch_id: str) -> BatchState:
        r = await self.send(self.no_model, "GET", f"{self.base}/v1/messages/batches/{batch_id}")
        b = orjson.loads(r.content)
        counts = {k: int(v or 0) for k, v in (b.get("request_counts") or {}).items()}
        total = sum(counts.values())
        return BatchState(
            batch_id,
            b["processing_status"] == "ended",
            b["processing_status"],
            total,
            total - counts.get("processing", 0),
        )

    async def results(self, model: ModelInfo, batch_id: str) -> list[LineResult]:
        r = await self.send(model, "GET", f"{self.base}/v1/messages/batches/{batch_id}/results", timeout=600.0)
        out = []
        for raw in r.content.splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            cid, result = str(line["custom_id"]), line.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded":
                out.append(self.parse_line(model, cid, result["message"]))
                continue
            err = (result.get("error") or {}).get("error") or result.get("error") or {}
            out.append(
                LineResult(
                    cid,
                    _KIND.get(str(kind), ERRORED),
                    error=err.get("message") or kind,
                    error_class=err.get("type") or kind,
                )
            )
        return out

    async def cancel(self, batch_id: str) -> None:
        await self.send(self.no_model, "POST", f"{self.base}/v1/messages/batches/{batch_id}/cancel")
