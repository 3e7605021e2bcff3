"""A lean HTTP/1.1 client for provider calls: one POST on a kept-alive connection, the answer read in full.

transport.post_json sends here on the shared client's direct path (no proxy, a plain aiohttp transport). At
zero latency aiohttp's request machinery (ClientRequest, ClientResponse, its stream reader, writer and timer
objects, cookie jar) cost ~0.33 ms of CPU per call against ~0.10 ms for what a call needs: write the request
in one buffer, parse the answer's head, read its body by Content-Length or chunks. Connections are pooled
per origin (LIFO, closed after KEEPALIVE_S idle), within the client's connection limit; TLS uses the
transport's SSL context.

What a failure means is kept as aiohttp's mapping had it (transport.py turns these into our errors): a
connection that could not be opened (refused, DNS, TLS, the connect timeout) is a ConnectFailed: the request
was never sent. Anything after the request was written (the server closed the connection, a truncated or
unparsable answer) is a Dropped: it may have been processed.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections import deque
from typing import Any

from multidict import CIMultiDict

MAX_HEAD = 64 * 1024  # an answer's status line and headers, at most
_NO_BODY = (204, 304)


class ConnectFailed(Exception):
    """The connection could not be opened: nothing was sent."""


class Dropped(Exception):
    """The request was (or may have been) sent, and no complete answer came back."""


class Answer:
    """A complete answer: status, headers as sent (name, value) in bytes, the body as received."""

    __slots__ = ("status", "reason", "raw_headers", "content")

    def __init__(self, status: int, reason: str, raw_headers: tuple[tuple[bytes, bytes], ...], content: bytes):
        self.status, self.reason, self.raw_headers, self.content = status, reason, raw_headers, content

    def parsed_headers(self) -> CIMultiDict[str]:
        """The headers as aiohttp parses them (names and values UTF-8, case-insensitive lookups)."""
        return CIMultiDict(
            (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in self.raw_headers
        )


class _Conn(asyncio.Protocol):
    """One connection: at most one request on it at a time; parses the answer as bytes arrive."""

    def __init__(self, limits: "Limits") -> None:
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = bytearray()
        self.closed = False
        self.idle_since = 0.0
        self.keep = False  # the last answer allows reusing the connection
        self._reset_parse()

    def _reset_parse(self) -> None:
        self.head: tuple[int, str, tuple[tuple[bytes, bytes], ...]] | None = None
        self.mode = ""  # "length", "chunked", "close"
        self.left = 0  # length mode: bytes still to come
        self.parts: list[bytes] = []
        self.chunk_left = -1  # chunked mode: bytes of the current chunk still to come (+ its CRLF), -1 = at a size line

    # ------------------------------------------------------------------------------------- protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - best effort, as aiohttp's
                pass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is not in a known state
            self.close()
            return
        self.buf += data
        try:
            done = self._parse()
        except Dropped as e:
            self._fail(e)
            return
        if done is not None:
            w, self.waiter = self.waiter, None
            if not w.done():
                w.set_result(done)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        w = self.waiter
        if w is None or w.done():
            return
        if self.mode == "close" and self.head is not None and exc is None:  # a body read until the server closed
            status, reason, headers = self.head
            self.waiter = None
            w.set_result(Answer(status, reason, headers, bytes(self.buf)))
            return
        self._fail(Dropped(f"server disconnected ({type(exc).__name__}: {exc})" if exc else "server disconnected"))

    # ------------------------------------------------------------------------------------- parsing

    def _parse(self) -> Answer | None:
        while self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise Dropped("answer head too large")
                return None
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            self._read_head(head)
        if self.mode == "length":
            if len(self.buf) < self.left:
                return None
            body = bytes(self.buf[: self.left])
            del self.buf[: self.left]
            return self._answer(body)
        if self.mode == "chunked":
            return self._chunks()
        return None  # "close": the body ends with the connection

    def _read_head(self, head: bytes) -> None:
        line, _, rest = head.partition(b"\r\n")
        version, _, status_reason = line.partition(b" ")
        code, _, reason = status_reason.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise Dropped(f"invalid status line {line[:100]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        conn_tokens = b""
        for h in rest.split(b"\r\n") if rest else ():
            name, colon, value = h.partition(b":")
            if not colon or not name or name != name.strip() or name[:1] in b" \t":
                raise Dropped(f"invalid header line {h[:100]!r}")
            value = value.strip(b" \t")
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise Dropped(f"invalid content-length {value[:40]!r}")
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = value.lower().rstrip().endswith(b"chunked")
            elif lname == b"connection":
                conn_tokens += b"," + value.lower()
        if 100 <= status < 200:  # an interim answer (we never ask for one): the real one follows
            return
        self.head = (status, reason.decode("latin-1"), tuple(headers))
        if version == b"HTTP/1.1":
            self.keep = b"close" not in conn_tokens
        else:
            self.keep = b"keep-alive" in conn_tokens
        if status in _NO_BODY:
            self.mode, self.left = "length", 0
        elif chunked:
            self.mode = "chunked"
        elif length is not None:
            self.mode, self.left = "length", length
        else:
            self.mode, self.keep = "close", False

    def _chunks(self) -> Answer | None:
        buf = self.buf
        while True:
            if self.chunk_left < 0:  # at a chunk's size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise Dropped("chunk size line too long")
                    return None
                size_hex = bytes(buf[:end]).partition(b";")[0].strip()
                try:
                    size = int(size_hex, 16)
                except ValueError:
                    raise Dropped(f"invalid chunk size {size_hex[:40]!r}") from None
                if size == 0:  # the last chunk: trailers (ignored) up to an empty line
                    trailers_end = buf.find(b"\r\n\r\n", end) if buf[end + 2 : end + 4] != b"\r\n" else end
                    if trailers_end < 0:
                        return None
                    del buf[: trailers_end + 4]
                    return self._answer(b"".join(self.parts))
                del buf[: end + 2]
                self.chunk_left = size + 2
            if len(buf) < self.chunk_left:
                return None
            if buf[self.chunk_left - 2 : self.chunk_left] != b"\r\n":
                raise Dropped("chunk not terminated by CRLF")
            self.parts.append(bytes(buf[: self.chunk_left - 2]))
            del buf[: self.chunk_left]
            self.chunk_left = -1

    def _answer(self, body: bytes) -> Answer:
        assert self.head is not None
        status, reason, headers = self.head
        if self.buf:  # bytes past the answer: never reuse this connection
            self.keep = False
        self._reset_parse()
        return Answer(status, reason, headers, body)

    # ------------------------------------------------------------------------------------- lifecycle

    def _fail(self, e: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(e)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._gone()

    def _gone(self) -> None:
        if not self.closed:
            self.closed = True
            self.limits.freed()


class Limits:
    """The client's connection limit, shared by its origins' pools (aiohttp's connector limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0
        self.pools: list[Pool] = []
        self._waiters: deque[asyncio.Future] = deque()

    def full(self) -> bool:
        return self.limit is not None and self.open >= self.limit

    def close_an_idle(self) -> bool:
        """At the limit: close the longest idle connection of any origin (as aiohttp's connector does)."""
        oldest = min((p for p in self.pools if p.idle), key=lambda p: p.idle[0].idle_since, default=None)
        if oldest is None:
            return False
        oldest.idle.pop(0).close()
        return True

    async def wait(self) -> None:
        """Until a connection is freed or returned to its pool."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def freed(self) -> None:
        self.open -= 1
        self.wake()


class Pool:
    """Kept-alive connections to one origin (scheme, host, port)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        limits: Limits,
        keepalive_s: float,
        host_header: str,
    ) -> None:
        self.host, self.port, self.ssl = host, port, ssl_context
        self.limits, self.keepalive_s = limits, keepalive_s
        self.host_line = f"Host: {host_header}\r\n"
        self.idle: list[_Conn] = []  # oldest first
        self.blocks: dict[tuple[tuple[str, str], ...], str] = {}  # see keep_block
        limits.pools.append(self)

    def _reuse(self) -> _Conn | None:
        now = time.monotonic()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connection(self, connect_timeout: float) -> _Conn:
        limits = self.limits
        while True:
            conn = self._reuse()
            if conn is not None:
                return conn
            if not limits.full():
                break
            if not limits.close_an_idle():
                await limits.wait()
        limits.open += 1
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Conn(self.limits),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            self.limits.freed()
            raise ConnectFailed(f"connecting to {self.host}:{self.port} took over {connect_timeout:g}s") from None
        except OSError as e:  # refused, unreachable, DNS (socket.gaierror), TLS (ssl.SSLError)
            self.limits.freed()
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {type(e).__name__}: {e}") from None
        except BaseException:
            self.limits.freed()
            raise
        return conn

    async def post(self, target: str, headers: str, body: bytes, *, connect_timeout: float, timeout: float) -> Answer:
        """POST `body` to `target` (path and query) with `headers` (rendered "Name: value\\r\\n" lines). Raises
        TimeoutError when no complete answer came within `timeout` (waiting for a connection included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._reuse()
        if conn is None:  # a new connection (or a wait for one at the limit), within the call's deadline
            async with asyncio.timeout_at(deadline):
                conn = await self._connection(connect_timeout)
        waiter = conn.waiter = loop.create_future()
        # The answer's deadline is one timer on the waiter: asyncio.timeout's cancel-and-uncancel of the task
        # cost more than the rest of the wait.
        timer = loop.call_at(deadline, _expire, waiter)
        ok = False
        try:
            assert conn.transport is not None
            conn.transport.write(
                b"".join(
                    (
                        f"POST {target} HTTP/1.1\r\n{self.host_line}{headers}Content-Length: {len(body)}\r\n\r\n".encode(),
                        body,
                    )
                )
            )
            answer: Answer = await waiter
            ok = True
            return answer
        finally:
            timer.cancel()
            if ok and conn.keep and not conn.closed:
                conn.idle_since = time.monotonic()
                self.idle.append(conn)
                self.limits.wake()
            else:  # failed, timed out, cancelled or not reusable: the connection goes
                conn.waiter = None
                conn.close()

    def keep_block(self, key: tuple[tuple[str, str], ...], block: str) -> str:
        """Keep a rendered header block (render_headers) for `key`, the headers it was rendered from: a client
        sends the same few sets."""
        if len(self.blocks) >= 64:
            self.blocks.clear()
        self.blocks[key] = block
        return block

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_FORBIDDEN = re.compile(r"[\r\n\0]")


def render_headers(headers: dict[str, str]) -> str:
    """Request headers as lines; a name or value with a line break or NUL (a header injection), or a name with
    a colon, is refused."""
    out = []
    for k, v in headers.items():
        if _FORBIDDEN.search(k) or _FORBIDDEN.search(v) or ":" in k:
            raise ValueError("a request header name or value contains a line break, a NUL or (a name) a colon")
        out.append(f"{k}: {v}\r\n")
    return "".join(out)


def origin(url: Any) -> tuple[str, str, int]:
    """(scheme, host, port) of a yarl URL."""
    return url.scheme, url.raw_host, url.port
