"""The batch-channel seam: one provider batch API behind create / find / poll / results / cancel.

A BatchClient wraps the provider's synchronous adapter: request bodies are built by `adapter.build_body` and
result bodies parsed by `adapter.parse_completion`, so a batch line is exactly the call the online channel
would make, and its usage comes back in the one convention. Like adapters, batch clients never retry; the
batch runner decides. Keys stay in headers and never reach an error message (the adapter's redaction).
"""

from __future__ import annotations

import abc
from types import SimpleNamespace
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ...catalog import ModelInfo
from ...errors import ProviderError, RerouteError
from ...models import ChatRequest, Completion, Usage
from ..base import Adapter
from ..transport import transport_error

# What a line ended as.
SUCCEEDED, ERRORED, CANCELLED, EXPIRED = "succeeded", "errored", "cancelled", "expired"


@dataclass(frozen=True)
class BatchState:
    batch_id: str
    ended: bool  # no line will change any more: results can be read
    status: str  # the provider's own word (in_progress, ended, BATCH_STATE_RUNNING, ...)
    total: int = 0
    done: int = 0  # lines finished so far, in any way


@dataclass
class LineResult:
    custom_id: str
    kind: str  # SUCCEEDED | ERRORED | CANCELLED | EXPIRED
    completion: Completion | None = None  # succeeded
    usage: Usage | None = None  # what the line was billed for (succeeded, or a billed failure)
    error: str | None = None
    error_class: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class Limits:
    max_requests: int
    max_bytes: int


class BatchClient(abc.ABC):
    api: str
    limits: Limits

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.client: httpx.AsyncClient = adapter.client
        self.base = adapter.provider.base_url.rstrip("/")
        # Calls that name no model (poll, list, cancel) still need auth headers and a name in error messages.
        self.no_model: ModelInfo = SimpleNamespace(model="batches")  # type: ignore[assignment]

    # --- per API --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create(self, model: ModelInfo, lines: list[tuple[str, dict]], tag: str) -> str:
        """Send the batch (upload + create where the API has two steps); returns the provider batch id.
        `tag` names it (metadata / display name) so `find` can recover it after a crash."""

    @abc.abstractmethod
    async def find(self, tag: str, *, since: float, total: int) -> str | None:
        """The id of a batch created earlier with this tag (at or after `since`, with `total` lines), if the
        provider has one. APIs without metadata (Anthropic) match on creation time and line count."""

    @abc.abstractmethod
    async def poll(self, batch_id: str) -> BatchState: ...

    @abc.abstractmethod
    async def results(self, model: ModelInfo, batch_id: str) -> list[LineResult]:
        """Every line's outcome; only once `poll` said ended."""

    @abc.abstractmethod
    async def cancel(self, batch_id: str) -> None: ...

    # --- shared ---------------------------------------------------------------------------------

    def body(self, model: ModelInfo, request: ChatRequest) -> dict:
        return self.adapter.build_body(model, request)

    def line_size(self, custom_id: str, body: dict) -> int:
        return len(orjson.dumps(body)) + len(custom_id) + 64

    def headers(self, model: ModelInfo) -> dict[str, str]:
        return self.adapter._headers(model)

    async def send(
        self, model: ModelInfo, method: str, url: str, *, timeout: float = 120.0, **kw: Any
    ) -> httpx.Response:
        """One HTTP exchange; a non-2xx answer or a transport failure raises the adapter's ProviderError."""
        where = f"{self.adapter.where(model)} (batch)"
        headers = {**self.headers(model), **kw.pop("headers", {})}
        failure: Exception | None = None
        try:
            response = await self.client.request(method, url, headers=headers, timeout=timeout, **kw)
        except httpx.HTTPError as exc:
            failure = transport_error(exc, where=where, secrets=self.adapter.secrets)
        if failure is not None:
            raise failure
        if not 200 <= response.status_code < 300:
            raise self.adapter._http_error(response, where)
        return response

    def parse_line(self, model: ModelInfo, custom_id: str, body: dict) -> LineResult:
        """A succeeded line's body, parsed by the synchronous adapter (a filtered answer keeps its usage)."""
        try:
            completion = self.adapter.parse_completion(model, body, {})
        except RerouteError as e:
            return LineResult(
                custom_id, ERRORED, usage=e.usage, error=e.message, error_class=e.error_class, http_status=200
            )
        except ProviderError as e:
            return LineResult(custom_id, ERRORED, error=e.message, error_class=e.error_class, http_status=200)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            return LineResult(
                custom_id,
                ERRORED,
                error=f"malformed batch result: {type(e).__name__} {e}",
                error_class="malformed_response",
                http_status=200,
            )
        return LineResult(custom_id, SUCCEEDED, completion=completion, usage=completion.usage)
