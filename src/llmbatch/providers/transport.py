"""The one shared HTTP client, and the single place a provider call touches the network.

The client uses the aiohttp-backed transport from `httpx_aiohttp`: on this workload (hundreds of small JSON
POSTs in flight) httpx's default transport reached about a fifth of the ideal throughput, aiohttp's about 95%.

`post_json` sends exactly once and turns transport failures into our error tree. It matters whether the
provider may have seen the request: a connect failure cannot have been billed (request_sent=False), while a
timeout or a reset after sending might have been (request_sent=True), so the budget keeps that attempt's
reservation until it is reconciled.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Mapping

import httpx
import orjson

from .. import __version__
from ..errors import FatalError, ProviderTimeout, RetryableError
from .redact import redact, scrub

try:
    import aiohttp

    # httpx_aiohttp maps only some aiohttp errors; the rest (e.g. an unparsable status line) escape raw.
    _RAW_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover
    aiohttp = None  # type: ignore[assignment]
    _RAW_AIOHTTP_ERRORS = ()

# A new TCP+TLS connection that takes longer than this is a network problem, not a slow model.
CONNECT_TIMEOUT_S = 10.0
# aiohttp's own default; long enough to reuse connections between bursts, short enough that providers
# rarely close an idle connection under us (which shows up as a reset on the next request).
KEEPALIVE_EXPIRY_S = 15.0


_DEFAULT_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "user-agent": f"llmbatch/{__version__}",
}


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """Endpoints are few and fixed; parsing one is a visible share of a call's CPU."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _phase_timeouts(timeout: float) -> dict:
    return httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)).as_dict()


def make_http_client(*, max_connections: int = 512, timeout: float = 120.0) -> httpx.AsyncClient:
    """One client for every provider. Falls back to httpx's default transport only if httpx_aiohttp is
    missing. The client binds to the event loop that first uses it; close it with `await client.aclose()`."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    timeouts = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S))
    try:
        from httpx_aiohttp import HttpxAiohttpClient
    except ImportError:  # pragma: no cover - httpx-aiohttp is a declared dependency
        return httpx.AsyncClient(limits=limits, timeout=timeouts)
    # The subclass (rather than AsyncClient(transport=...)) keeps proxy settings from the environment working:
    # httpx ignores HTTP(S)_PROXY whenever an explicit transport is passed.
    return HttpxAiohttpClient(limits=limits, timeout=timeouts)


def _aiohttp_cause(exc: BaseException) -> tuple[str, BaseException] | None:
    """httpx_aiohttp maps every aiohttp.ClientConnectionError, including a server that drops the connection
    after reading the request, to httpx.ConnectTimeout. The original aiohttp error is kept as __cause__;
    it tells a real connect failure ("connect") from a drop after sending ("reset")."""
    if aiohttp is None:  # pragma: no cover
        return None
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            return "connect", cause
        if isinstance(cause, aiohttp.SocketTimeoutError):
            return "timeout", cause
        if isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
            return "reset", cause
        cause = cause.__cause__
    return None


def transport_error(exc: Exception, *, where: str, secrets: tuple[str | None, ...] = ()) -> Exception:
    """Map an httpx exception raised while sending to RetryableError / ProviderTimeout / FatalError."""
    found = _aiohttp_cause(exc)
    phase, origin = found if found else (None, exc)
    # Name the original error: "ServerDisconnectedError" says what happened, the mapped "ConnectTimeout" misleads.
    detail = f"{where}: {type(origin).__name__}: {scrub(str(exc), secrets) or 'no detail'}"
    if phase == "reset":
        return RetryableError(detail, error_class="connection_reset", request_sent=True)
    if phase == "timeout":
        return ProviderTimeout(detail, request_sent=True)
    if phase == "connect" or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return RetryableError(detail, error_class="connect", request_sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout(detail, request_sent=True)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return FatalError(detail + " (check the provider's base_url)", error_class="bad_config", request_sent=False)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.NetworkError)):
        return RetryableError(detail, error_class="connection_reset", request_sent=True)
    return RetryableError(detail, error_class="transport", request_sent=True)


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    *,
    headers: Mapping[str, str],
    timeout: float,
    where: str,
    secrets: tuple[str | None, ...] = (),
) -> httpx.Response:
    """POST `body` once and return the full response (any status). Transport failures raise ProviderError.

    `timeout` bounds the whole call: httpx's timeouts are per phase (a server trickling bytes never trips the
    read timeout), so an overall deadline wraps the send."""
    # The request is built here, not by client.post(): build_request re-parses the URL and merges the
    # client's default headers and cookie jar on every call, ~90 µs of a call's ~330 µs client CPU at
    # hundreds of calls a second. client.send() still routes through the client's transport and proxy
    # mounts. No cookies are sent: an API call has no use for them.
    failure: Exception
    try:
        request = httpx.Request(
            "POST",
            _parsed_url(url),
            content=orjson.dumps(body),
            headers={**_DEFAULT_HEADERS, **headers},
            extensions={"timeout": _phase_timeouts(timeout)},
        )
        async with asyncio.timeout(timeout):
            return await client.send(request)
    except TimeoutError:
        # Raised by asyncio.timeout: the deadline passed somewhere between connect and the last byte.
        failure = ProviderTimeout(
            redact(f"{where}: no complete response within {timeout:g}s", secrets), request_sent=True
        )
    except httpx.HTTPError as exc:
        failure = transport_error(exc, where=where, secrets=secrets)
    except _RAW_AIOHTTP_ERRORS as exc:
        detail = f"{where}: {type(exc).__name__}: {scrub(str(exc), secrets) or 'no detail'}"
        failure = RetryableError(detail, error_class="connection_reset", request_sent=True)
    # Raised outside the except blocks so neither __cause__ nor __context__ holds the original exception:
    # it references the request, whose headers carry the key.
    raise failure
