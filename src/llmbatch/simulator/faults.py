"""Fault injection: when a fault fires, and how each one misbehaves on the wire.

Two kinds of rate (see config.BURST_FAULTS / REQUEST_FAULTS):
- storm429 / burst5xx: the rate is the fraction of wall time spent in a burst. Bursts last
  storm_duration_s / burst_duration_s and the first one starts the moment the fault is configured, so a
  test sees it at once and the schedule is the same on every run.
- hang / reset / malformed / truncated / slow_body: the rate is the probability that one request is hit,
  drawn from the seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from aiohttp import web

from .config import REQUEST_FAULTS

MALFORMED_BODY = b"<html><head><title>502 Bad Gateway</title></head><body>upstream sent garbage</body></html>"


def burst_left(now: float, started: float, rate: float, duration: float) -> float:
    """Seconds left in the current burst, 0.0 when outside one."""
    if rate <= 0 or duration <= 0:
        return 0.0
    if rate >= 1:
        return duration
    period = duration / rate
    phase = (now - started) % period
    return duration - phase if phase < duration else 0.0


def pick_request_fault(rng: random.Random, faults: dict[str, float]) -> str | None:
    for name in REQUEST_FAULTS:
        rate = faults.get(name, 0.0)
        if rate > 0 and rng.random() < rate:
            return name
    return None


def abort_connection(request: web.Request) -> None:
    """Close the TCP connection with an RST (SO_LINGER 0), like a crashed load balancer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class ConnectionDropped(Exception):
    """Raised by a handler after it killed its own connection: there is no response to send."""


async def hang(request: web.Request, max_s: float) -> None:
    """Never answer. The server runs with handler_cancellation, so a client that gives up cancels this;
    a client that waits longer than max_s gets its connection dropped."""
    await asyncio.sleep(max_s)
    abort_connection(request)
    raise ConnectionDropped()


async def send_truncated(
    request: web.Request, body: bytes, headers: dict[str, str], cut_framing: bool
) -> web.StreamResponse:
    """A 200 whose JSON body stops mid-way.

    cut_framing=True: Content-Length promises the full body, then the connection closes early (the client's
    HTTP layer notices). False: the framing is honest about the short body, so only the JSON parser notices.
    """
    half = body[: max(1, len(body) // 2)]
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "application/json"
    resp.content_length = len(body) if cut_framing else len(half)
    await resp.prepare(request)
    await resp.write(half)
    if cut_framing:
        # A clean close (FIN, not RST) after the half body: the client receives the bytes and then EOF
        # before Content-Length is reached, i.e. "incomplete message body" rather than "connection reset".
        await _drain(request)
        if request.transport is not None:
            request.transport.close()
        raise ConnectionDropped()
    await resp.write_eof()
    return resp


async def send_slowly(
    request: web.Request, body: bytes, headers: dict[str, str], duration: float, chunks: int = 10
) -> web.StreamResponse:
    """Headers at once, then the body in `chunks` pieces spread over `duration` seconds."""
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "application/json"
    resp.content_length = len(body)
    await resp.prepare(request)
    step = max(1, -(-len(body) // chunks))
    pause = duration / chunks
    for i in range(0, len(body), step):
        await asyncio.sleep(pause)
        await resp.write(body[i : i + step])
    await resp.write_eof()
    return resp


async def _drain(request: web.Request) -> None:
    transport = request.transport
    for _ in range(50):
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.001)
