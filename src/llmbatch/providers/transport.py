"""The one shared HTTP client, and the single place a provider call touches the network.

The client uses the aiohttp-backed transport from `httpx_aiohttp`: on this workload (hundreds of small JSON
POSTs in flight) httpx's default transport reached about a fifth of the ideal throughput, aiohttp's about 95%.

`post_json` sends exactly once and turns transport failures into our error tree. On the shared client, for a
URL with no proxy, it sends on a lean HTTP/1.1 client (wire.py) with the transport's connection limit,
keep-alive expiry and SSL context: httpx's own send pipeline (auth, redirects, cookies, hooks, stream
wrappers), unused by an API call, cost more CPU than the call itself, and so did aiohttp's request machinery
(~0.33 ms per call against ~0.10). A transport with options wire.py lacks (a Unix socket, a local address,
socket options) still sends on its aiohttp session (`_send_direct`). It matters whether the
provider may have seen the request: a connect failure cannot have been billed (request_sent=False), while a
timeout or a reset after sending might have been (request_sent=True), so the budget keeps that attempt's
reservation until it is reconciled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Iterator, Mapping, Protocol

import httpx
import orjson
import yarl

from .. import __version__
from ..errors import FatalError, ProviderTimeout, RetryableError
from . import wire
from .redact import redact, scrub

try:
    import aiohttp

    # httpx_aiohttp maps only some aiohttp errors; the rest (e.g. an unparsable status line) escape raw.
    _RAW_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover
    aiohttp = None  # type: ignore[assignment]
    _RAW_AIOHTTP_ERRORS = ()
try:
    from httpx_aiohttp import HttpxAiohttpClient
    from httpx_aiohttp.transport import AiohttpTransport, map_aiohttp_exceptions
except ImportError:  # pragma: no cover - httpx-aiohttp is a declared dependency
    HttpxAiohttpClient = None  # type: ignore[assignment,misc]

# A new TCP+TLS connection that takes longer than this is a network problem, not a slow model.
CONNECT_TIMEOUT_S = 10.0
# aiohttp's own default; long enough to reuse connections between bursts, short enough that providers
# rarely close an idle connection under us (which shows up as a reset on the next request).
KEEPALIVE_EXPIRY_S = 15.0


_http_log = logging.getLogger("httpx")

_DEFAULT_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "user-agent": f"llmbatch/{__version__}",
}
# What aiohttp asks for unless told otherwise; an encoded answer is decoded by httpx (httpx.Response).
_ACCEPT_ENCODING = "gzip, deflate"


class Answer(Protocol):
    """What a provider call's response is read for: an httpx.Response, or on the direct path a _Read."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...


class _Read:
    """A successful answer read in full with no content-encoding, as the adapters read an httpx.Response
    (status_code, content, headers, text) without building one: its stream, decoder and chunker machinery
    cost ~10x what reading it does. The headers read as httpx's (_ResponseHeaders), the text is httpx's."""

    __slots__ = ("status_code", "content", "_raw", "headers")

    def __init__(
        self, status: int, raw_headers: tuple[tuple[bytes, bytes], ...], parsed: Mapping[str, str], content: bytes
    ) -> None:
        self.status_code, self.content, self._raw = status, content, raw_headers
        self.headers = _ResponseHeaders(parsed, raw_headers)

    @property
    def text(self) -> str:
        return httpx.Response(self.status_code, headers=self._raw, content=self.content).text


class _ResponseHeaders(Mapping[str, str]):
    """Reads as the answer's httpx.Headers would, without building one for the header or two the adapters read
    (the request id): building it normalized and decoded every header of every answer. A name is looked up in
    the headers aiohttp has already parsed (case-insensitive), its repeated values joined with ", " as httpx
    joins them. aiohttp decodes header bytes as UTF-8, httpx by one guess for all of them; both agree on an
    ASCII value, so only a non-ASCII one (and listing the headers) goes through httpx.Headers."""

    __slots__ = ("_parsed", "_raw", "_httpx")

    def __init__(self, parsed: Mapping[str, str], raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self._parsed, self._raw = parsed, raw
        self._httpx: httpx.Headers | None = None

    def _as_httpx(self) -> httpx.Headers:
        if self._httpx is None:
            self._httpx = httpx.Headers(self._raw)
        return self._httpx

    def __getitem__(self, name: str) -> str:
        values = self._parsed.getall(name)  # type: ignore[attr-defined]  # KeyError when absent, as a Mapping must
        value = values[0] if len(values) == 1 else ", ".join(values)
        return value if value.isascii() else self._as_httpx()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_httpx())

    def __len__(self) -> int:
        return len(self._as_httpx())


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """Endpoints are few and fixed; parsing one is a visible share of a call's CPU."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _phase_timeouts(timeout: float) -> dict:
    return httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)).as_dict()


@functools.lru_cache(maxsize=64)
def _aiohttp_timeout(timeout: float) -> "aiohttp.ClientTimeout":
    """The connect timeout AiohttpTransport derives from httpx's. Its read and pool timeouts (`timeout` each)
    are left out: post_json's overall deadline of `timeout`, started before them, always ends the call first,
    and aiohttp re-armed the read timer on every chunk received."""
    return aiohttp.ClientTimeout(sock_connect=min(timeout, CONNECT_TIMEOUT_S))


if HttpxAiohttpClient is not None:

    class _Client(HttpxAiohttpClient):
        """The shared client: an httpx client (proxies from the environment, `client.get/post` for batch APIs)
        whose calls through `post_json` go straight to the aiohttp session of the transport httpx would
        have picked, when that is a plain AiohttpTransport without a proxy (else through httpx)."""

        _direct: dict[str, AiohttpTransport | None]
        lean: bool = True  # calls on wire.py where it can take them (setting `http_client`)

        def direct_transport(self, url: str) -> AiohttpTransport | None:
            try:
                return self._direct[url]
            except AttributeError:
                self._direct = {}
            except KeyError:
                pass
            transport = self._transport_for_url(_parsed_url(url))
            ok = type(transport) is AiohttpTransport and transport.proxy is None
            self._direct[url] = transport if ok else None  # type: ignore[assignment]
            return self._direct[url]

        _wire: dict[str, tuple[wire.Pool, str] | None]
        _pools: dict[tuple[str, str, int], wire.Pool]
        _limits: wire.Limits

        def wire_pool(self, url: str, transport: AiohttpTransport) -> tuple[wire.Pool, str] | None:
            """(the lean client's pool for the URL's origin, the request target), for a direct transport with no
            option the lean client lacks (a Unix socket, a local address, socket options); else None."""
            if not self.lean:
                return None
            try:
                return self._wire[url]
            except AttributeError:
                self._wire, self._pools = {}, {}
                self._limits = wire.Limits(transport.limits.max_connections)
            except KeyError:
                pass
            found = None
            u = yarl.URL(url)
            plain = not (transport.uds or transport.local_address or transport.socket_options or transport.retries)
            if plain and u.scheme in ("http", "https") and u.raw_host and not u.raw_user and u.port is not None:
                key = (u.scheme, u.raw_host, u.port)
                pool = self._pools.get(key)
                if pool is None:
                    keepalive = transport.limits.keepalive_expiry
                    pool = self._pools[key] = wire.Pool(
                        u.raw_host,
                        u.port,
                        transport.ssl_context if u.scheme == "https" else None,
                        self._limits,
                        KEEPALIVE_EXPIRY_S if keepalive is None else keepalive,
                        u.host_port_subcomponent or u.raw_host,
                    )
                found = (pool, u.raw_path_qs or "/")
            if len(self._wire) < 256:  # endpoints are few; bounded all the same
                self._wire[url] = found
            return found

        async def aclose(self) -> None:
            for pool in getattr(self, "_pools", {}).values():
                pool.close()
            await super().aclose()


def make_http_client(*, max_connections: int = 512, timeout: float = 120.0, lean: bool = True) -> httpx.AsyncClient:
    """One client for every provider. Falls back to httpx's default transport only if httpx_aiohttp is
    missing. The client binds to the event loop that first uses it; close it with `await client.aclose()`.
    `lean=False` keeps provider calls on aiohttp's client rather than wire.py."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    timeouts = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S))
    if HttpxAiohttpClient is None:  # pragma: no cover - httpx-aiohttp is a declared dependency
        return httpx.AsyncClient(limits=limits, timeout=timeouts)
    # The subclass (rather than AsyncClient(transport=...)) keeps proxy settings from the environment working:
    # httpx ignores HTTP(S)_PROXY whenever an explicit transport is passed.
    client = _Client(limits=limits, timeout=timeouts)
    client.lean = lean
    return client


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
) -> Answer:
    """POST `body` once and return the full response (any status). Transport failures raise ProviderError.

    `timeout` bounds the whole call: httpx's timeouts are per phase (a server trickling bytes never trips the
    read timeout), so an overall deadline wraps the send."""
    # The shared client (`_Client`, no proxy for this URL) sends on its aiohttp session directly: httpx's
    # send pipeline cost ~0.8 ms CPU per call on top of aiohttp's ~0.45 ms (measured at zero latency).
    # Any other client (tests' MockTransport, a proxy mount) gets the request built here, not by
    # client.post(), which re-parses the URL and merges default headers and the cookie jar on every call;
    # client.send() still routes through its transport and proxy mounts. No cookies are sent: an API call
    # has no use for them.
    failure: Exception
    direct = client.direct_transport(url) if isinstance(client, _Client) else None
    try:
        if direct is not None:
            lean = client.wire_pool(url, direct)  # type: ignore[attr-defined]  # a _Client
            if lean is not None:  # the deadline is wire.Pool.post's own (it raises TimeoutError too)
                return await _send_wire(lean[0], lean[1], url, body, headers, timeout)
            async with asyncio.timeout(timeout):
                return await _send_direct(direct, url, body, headers, timeout)
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
        # Raised by asyncio.timeout (or wire.Pool.post): the deadline passed somewhere between connect and the
        # last byte.
        failure = ProviderTimeout(
            redact(f"{where}: no complete response within {timeout:g}s", secrets), request_sent=True
        )
    except httpx.HTTPError as exc:
        failure = transport_error(exc, where=where, secrets=secrets)
    except _RAW_AIOHTTP_ERRORS as exc:
        detail = f"{where}: {type(exc).__name__}: {scrub(str(exc), secrets) or 'no detail'}"
        failure = RetryableError(detail, error_class="connection_reset", request_sent=True)
    except wire.ConnectFailed as exc:  # never sent: cannot have been billed
        detail = f"{where}: {type(exc).__name__}: {scrub(str(exc), secrets) or 'no detail'}"
        failure = RetryableError(detail, error_class="connect", request_sent=False)
    except wire.Dropped as exc:  # sent, no complete answer: it may have been processed
        detail = f"{where}: {type(exc).__name__}: {scrub(str(exc), secrets) or 'no detail'}"
        failure = RetryableError(detail, error_class="connection_reset", request_sent=True)
    # Raised outside the except blocks so neither __cause__ nor __context__ holds the original exception:
    # it references the request, whose headers carry the key.
    raise failure


def _wire_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers aiohttp sent: ours, the caller's (which win whatever their case), aiohttp's Accept-Encoding."""
    merged = {k.lower(): (k, v) for k, v in _DEFAULT_HEADERS.items()}
    for k, v in headers.items():
        merged[k.lower()] = (k, v)
    merged.setdefault("accept-encoding", ("accept-encoding", _ACCEPT_ENCODING))
    return dict(merged.values())


async def _send_wire(
    pool: wire.Pool, target: str, url: str, body: dict, headers: Mapping[str, str], timeout: float
) -> Answer:
    """The call on the lean HTTP/1.1 client (wire.py): the headers aiohttp sent (ours, the caller's, which win
    whatever their case, and aiohttp's Accept-Encoding), the answer read in full, decoded by httpx when encoded."""
    key = tuple(headers.items())
    block = pool.blocks.get(key) or pool.keep_block(key, wire.render_headers(_wire_headers(headers)))
    answer = await pool.post(
        target, block, orjson.dumps(body), connect_timeout=min(timeout, CONNECT_TIMEOUT_S), timeout=timeout
    )
    if _http_log.isEnabledFor(logging.INFO):  # httpx's line, shown at -vv (cli/main.py)
        _http_log.info('HTTP Request: POST %s "HTTP/1.1 %d %s"', url, answer.status, answer.reason)
    parsed = answer.parsed_headers()
    if 200 <= answer.status < 300 and "content-encoding" not in parsed:  # nothing to decode: read as it is
        return _Read(answer.status, answer.raw_headers, parsed, answer.content)
    return httpx.Response(answer.status, headers=answer.raw_headers, content=answer.content)


async def _send_direct(
    transport: AiohttpTransport, url: str, body: dict, headers: Mapping[str, str], timeout: float
) -> Answer:
    """What `client.send()` does for this request through `transport`, minus the layers an API call does not
    use: the same headers, timeouts and aiohttp options as AiohttpTransport, the same exception mapping, the
    body read in full and decoded by httpx (content-encoding) as before."""
    if not isinstance(transport.client, aiohttp.ClientSession):
        transport.client = transport.get_client()
    try:
        async with transport.client.request(
            "POST",
            url,
            headers={**_DEFAULT_HEADERS, **headers},
            data=orjson.dumps(body),
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
            timeout=_aiohttp_timeout(timeout),
        ) as response:
            content = await response.read()
    except Exception:
        # AiohttpTransport's mapping to httpx's exceptions, entered only on the way out (a context manager
        # around every call cost more than the mapping ever does).
        with map_aiohttp_exceptions():
            raise
    if _http_log.isEnabledFor(logging.INFO):  # httpx's line, shown at -vv (cli/main.py)
        _http_log.info('HTTP Request: POST %s "HTTP/1.1 %d %s"', url, response.status, response.reason or "")
    if 200 <= response.status < 300 and "content-encoding" not in response.headers:
        # nothing to decode: read as it is
        return _Read(response.status, response.raw_headers, response.headers, content)
    return httpx.Response(response.status, headers=response.raw_headers, content=content)
