"""The shared client over real sockets: it must be the aiohttp transport, and failures seen through that
transport (whose exception mapping differs from httpx's own) must classify the same way."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from llmbatch.catalog import builtin_catalog
from llmbatch.errors import ProviderTimeout, RetryableError
from llmbatch.models import ChatRequest
from llmbatch.providers import build_adapters, make_http_client

FIXTURES = Path(__file__).parent / "fixtures" / "provider_responses"
CATALOG = builtin_catalog()
MODEL = CATALOG.get("openai/gpt-4o-mini")
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_output_tokens=8)
KEY = "sk-test-transportKEY123456"


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _raw_server(on_request) -> tuple[asyncio.Server, str]:
    """A TCP server that reads one request head and then misbehaves as told."""

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            await on_request(writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _adapter(client, base_url: str):
    catalog = CATALOG.with_overrides(providers={"openai": {"base_url": f"{base_url}/v1"}})
    return build_adapters(catalog, client, env={"OPENAI_API_KEY": KEY})["openai"]


def _complete_served(handler, *, max_connections: int = 512):
    """One adapter call through the shared client (checked to be the aiohttp transport) to an aiohttp app."""

    async def go():
        runner, url = await _serve(handler)
        client = make_http_client(max_connections=max_connections, timeout=5)
        try:
            assert isinstance(client._transport, AiohttpTransport)
            return await _adapter(client, url).complete(MODEL, REQUEST, timeout=5)
        finally:
            await client.aclose()
            await runner.cleanup()

    return asyncio.run(go())


def _complete_raw(on_request, *, timeout: float = 5):
    """One adapter call through the shared client to a raw TCP server that misbehaves as `on_request` says."""

    async def go():
        server, url = await _raw_server(on_request)
        client = make_http_client(timeout=5)
        try:
            return await _adapter(client, url).complete(MODEL, REQUEST, timeout=timeout)
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(go())


def test_make_http_client_uses_the_aiohttp_transport_and_talks_http():
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"auth": request.headers.get("authorization"), "body": await request.json()})
        body = (FIXTURES / "openai_gpt4o_mini_cached.json").read_bytes()
        return web.Response(body=body, content_type="application/json", headers={"x-request-id": "req_live"})

    done = _complete_served(handler, max_connections=8)
    assert done.text == "positive" and done.provider_request_id == "req_live"
    assert done.usage.cached_tokens == 1920
    assert seen == [
        {
            "auth": f"Bearer {KEY}",
            "body": {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        }
    ]


def test_server_dropping_the_connection_is_a_reset_after_sending():
    async def drop(writer):
        pass  # _raw_server closes the socket without answering

    with pytest.raises(RetryableError) as info:
        _complete_raw(drop)
    # httpx_aiohttp reports this as ConnectTimeout; the adapter must not believe the request was never sent.
    assert info.value.error_class == "connection_reset"
    assert info.value.request_sent is True
    assert KEY not in str(info.value)


def test_truncated_body_is_a_reset():
    async def truncate(writer):
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"id":')
        await writer.drain()

    with pytest.raises(RetryableError) as info:
        _complete_raw(truncate)
    assert info.value.error_class == "connection_reset" and info.value.request_sent is True


def test_closed_port_is_a_connect_error_that_never_reached_the_provider():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there

    async def go():
        client = make_http_client(timeout=5)
        try:
            await _adapter(client, f"http://127.0.0.1:{port}").complete(MODEL, REQUEST, timeout=5)
        finally:
            await client.aclose()

    with pytest.raises(RetryableError) as info:
        asyncio.run(go())
    assert info.value.error_class == "connect" and info.value.request_sent is False


def test_silent_server_times_out_within_the_deadline():
    async def stall(writer):
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        _complete_raw(stall, timeout=0.3)
    assert time.monotonic() - started < 3
    assert info.value.request_sent is True and info.value.error_class == "timeout"


def test_error_status_over_the_real_transport_keeps_retry_after():
    async def handler(request: web.Request) -> web.Response:
        body = (FIXTURES / "openai_error_rate_limit.json").read_bytes()
        return web.Response(status=429, body=body, content_type="application/json", headers={"retry-after-ms": "250"})

    with pytest.raises(RetryableError) as info:
        _complete_served(handler)
    assert info.value.error_class == "rate_limited" and info.value.retry_after == pytest.approx(0.25)
    assert json.loads((FIXTURES / "openai_error_rate_limit.json").read_text())["error"]["message"][:20] in str(
        info.value
    )


def test_gzip_answer_is_decoded_on_the_direct_path():
    import gzip

    async def handler(request: web.Request) -> web.Response:
        body = gzip.compress((FIXTURES / "openai_gpt4o_mini_cached.json").read_bytes())
        return web.Response(body=body, content_type="application/json", headers={"content-encoding": "gzip"})

    done = _complete_served(handler)
    assert done.text == "positive" and done.usage.cached_tokens == 1920


def test_calls_through_a_proxy_from_the_environment_go_through_httpx(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def go():
        client = make_http_client(timeout=5)
        try:
            proxied = client.direct_transport("https://api.example.com/v1/chat/completions")
            plain = client.direct_transport("http://127.0.0.1:1/v1/chat/completions")
            return proxied, plain
        finally:
            await client.aclose()

    proxied, plain = asyncio.run(go())
    assert proxied is None  # httpx's send path, which honours the proxy
    assert isinstance(plain, AiohttpTransport)


def test_a_direct_answer_reads_as_the_httpx_response_of_the_same_bytes():
    """post_json's direct path returns a light answer for a 2xx without content-encoding (transport._Read):
    its status, bytes, headers (case-insensitive, repeated ones joined) and text are httpx's."""
    import httpx

    from llmbatch.providers.transport import _Read, post_json

    body = '{"answer": "d\u00e9j\u00e0 vu"}'.encode("latin-1")

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=body, headers={"content-type": "application/json; charset=latin-1"})
        resp.headers.add("X-Request-Id", "req_1")
        resp.headers.add("x-request-id", "req_2")
        return resp

    async def go():
        runner, url = await _serve(handler)
        client = make_http_client(timeout=5)
        try:
            return await post_json(client, f"{url}/v1/chat/completions", {"a": 1}, headers={}, timeout=5, where="test")
        finally:
            await client.aclose()
            await runner.cleanup()

    got = asyncio.run(go())
    assert isinstance(got, _Read)
    want = httpx.Response(got.status_code, headers=got._raw, content=body)
    assert got.status_code == want.status_code == 200
    assert got.content == want.content == body
    assert got.text == want.text == '{"answer": "d\u00e9j\u00e0 vu"}'
    assert got.headers["X-REQUEST-ID"] == want.headers["x-request-id"] == "req_1, req_2"
    assert dict(got.headers.items()) == dict(want.headers.items())


def test_a_direct_answer_with_non_ascii_headers_reads_them_as_httpx_decodes_them():
    """aiohttp decodes header bytes as UTF-8, httpx guesses one encoding for them all (latin-1 here): an answer
    whose header value is not ASCII reads it through httpx."""
    import httpx
    from multidict import CIMultiDict, CIMultiDictProxy

    from llmbatch.providers.transport import _Read

    raw = ((b"x-request-id", b"req_\xe9"), (b"Content-Type", b"application/json"))
    aiohttp_view = CIMultiDictProxy(CIMultiDict([(k.decode(), v.decode("utf-8", "surrogateescape")) for k, v in raw]))
    got = _Read(200, raw, aiohttp_view, b"{}")
    want = httpx.Headers(raw)
    assert got.headers["X-Request-Id"] == want["x-request-id"] == "req_\xe9"
    assert dict(got.headers.items()) == dict(want.items())


# ------------------------------------------------------------------ the lean HTTP/1.1 client (providers/wire.py)

_OK_BODY = (FIXTURES / "openai_gpt4o_mini_cached.json").read_bytes()


def _answered_raw(answer: bytes):
    async def on_request(writer):
        writer.write(answer)
        await writer.drain()

    return _complete_raw(on_request)


def test_a_chunked_answer_with_trailers_is_read_whole():
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (_OK_BODY[:7], _OK_BODY[7:300], _OK_BODY[300:]))
    done = _answered_raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\nx-trailer: 1\r\n\r\n"
    )
    assert done.text == "positive" and done.usage.cached_tokens == 1920


def test_an_answer_read_until_the_server_closes_after_an_interim_one():
    done = _answered_raw(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + _OK_BODY
    )
    assert done.text == "positive"


def test_an_unparsable_answer_is_a_reset_after_sending():
    with pytest.raises(RetryableError) as info:
        _answered_raw(b"SPDY/9 200 OK\r\n\r\n{}")
    assert info.value.error_class == "connection_reset" and info.value.request_sent is True
    assert KEY not in str(info.value)


def test_connections_are_kept_alive_unless_the_server_closes_them_and_stay_within_the_limit():
    """Calls reuse a kept-alive connection; an answer with `Connection: close` is not reused; at most
    max_connections are open at once, the other calls wait for one."""
    peers: list[int] = []
    open_now = [0, 0]  # open, most at once

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(0.05)
        headers = {"connection": "close"} if request.headers.get("x-close") else {}
        return web.Response(body=_OK_BODY, content_type="application/json", headers=headers)

    async def go():
        runner, url = await _serve(handler)
        server = runner.server
        assert server is not None
        made, lost = server.connection_made, server.connection_lost

        def counted_made(*a):
            open_now[0] += 1
            open_now[1] = max(open_now[1], open_now[0])
            return made(*a)

        def counted_lost(*a):
            open_now[0] -= 1
            return lost(*a)

        server.connection_made, server.connection_lost = counted_made, counted_lost  # type: ignore[method-assign]
        client = make_http_client(max_connections=2, timeout=5)
        try:
            adapter = _adapter(client, url)
            await adapter.complete(MODEL, REQUEST, timeout=5)
            await adapter.complete(MODEL, REQUEST, timeout=5)
            assert peers[0] == peers[1]  # the same connection
            adapter.auth_headers = lambda key: {"authorization": f"Bearer {key}", "x-close": "1"}  # type: ignore[method-assign]
            await adapter.complete(MODEL, REQUEST, timeout=5)
            await adapter.complete(MODEL, REQUEST, timeout=5)
            assert peers[3] != peers[2]  # closed after the answer that said so
            del adapter.auth_headers
            done = await asyncio.gather(*(adapter.complete(MODEL, REQUEST, timeout=5) for _ in range(6)))
            assert all(d.text == "positive" for d in done)
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(go())
    assert open_now[1] <= 2


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer sk-x\r\nx-evil: 1"},
        {"authorization": "Bearer sk-x\nx-evil: 1"},
        {"authorization": "Bearer sk-x\0"},
        {"x-evil\r\nhost": "a"},
        {"x-evil: 1\r\nx": "a"},
    ],
)
def test_a_header_with_a_line_break_or_nul_is_never_sent(headers):
    from llmbatch.providers import wire

    with pytest.raises(ValueError) as info:
        wire.render_headers(headers)
    assert "sk-x" not in str(info.value)
    assert wire.render_headers({"authorization": "Bearer sk-x"}) == "authorization: Bearer sk-x\r\n"


async def _serve_tls(cert_for: str, ca) -> tuple[web.AppRunner, str]:
    """The OpenAI answer over HTTPS on 127.0.0.1 with a certificate for `cert_for`, signed by trustme's `ca`."""
    import ssl

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return web.Response(body=_OK_BODY, content_type="application/json", headers={"x-request-id": "req_tls"})

    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_for).configure_cert(server_ssl)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
def test_https_calls_verify_the_certificate_on_either_client(monkeypatch, tmp_path, lean):
    """Over TLS: a certificate from a trusted CA (SSL_CERT_FILE, as a corporate CA would be given) is accepted,
    on the lean client (setting http_client = "lean", the default) and on aiohttp's; a certificate for another
    name or from an unknown CA is refused before anything is sent (a connect failure: never billed)."""
    trustme = pytest.importorskip("trustme")
    trusted, unknown = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    async def call(cert_for: str, ca):
        runner, url = await _serve_tls(cert_for, ca)
        client = make_http_client(timeout=5, lean=lean)
        try:
            done = await _adapter(client, url).complete(MODEL, REQUEST, timeout=5)
            on_wire = bool(getattr(client, "_pools", None))
            return done, on_wire
        finally:
            await client.aclose()
            await runner.cleanup()

    done, on_wire = asyncio.run(call("127.0.0.1", trusted))
    assert done.text == "positive" and done.provider_request_id == "req_tls"
    assert on_wire is lean  # the setting chose the client that made the call
    for cert_for, ca in (("other.example", trusted), ("127.0.0.1", unknown)):
        with pytest.raises(RetryableError) as info:
            asyncio.run(call(cert_for, ca))
        assert info.value.error_class == "connect" and info.value.request_sent is False, (cert_for, info.value)
        assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower()
