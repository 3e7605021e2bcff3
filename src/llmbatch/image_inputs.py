"""Is an image reference in an input line safe to forward? Checked at ingest, before anything is paid for.

An image is a `data:` URL or a remote URL. llmbatch itself never downloads an image: the provider, or a
local model server (vLLM, Ollama) for a custom provider, fetches it. So a line must not be able to point
that fetcher at the operator's network: `file:` URLs, loopback, private, link-local (169.254.169.254, the
cloud metadata service), reserved and multicast addresses, and local-only host names (`localhost`,
`*.internal`, single-label names) are refused, in every notation a URL parser accepts (`2852039166`,
`0xA9.0xFE.0xA9.0xFE`, `[::ffff:169.254.169.254]`). Host names are not resolved here (that would be a
lookup the submitter controls); an operator whose model server can reach internal names must also keep
it from following them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import unquote_to_bytes, urlsplit

from .config import InputLimits

__all__ = ["image_problem"]

# Leading bytes of the formats every vision API accepts; a data URL that names one must carry one.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/jpg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".intranet", ".corp")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def image_problem(url: str, limits: InputLimits) -> str | None:
    """Why this image reference is refused (a phrase to follow "image N "), or None."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.strip().lower()
    if not sep:
        return "is not a URL (expected data:image/...;base64,... or https://...)"
    if scheme == "data":
        return _data_url_problem(rest, limits)
    if scheme == "file":
        return None if limits.allow_local_images else "is a file: URL; local files are never sent (allow_local_images)"
    if scheme == "http" and not limits.allow_http_images:
        return "is an http URL; remote images must be https (allow_http_images)"
    if scheme not in ("https", "http"):
        return f"has the URL scheme {scheme[:20]!r}; use https:// or a data: URL"
    try:
        host = urlsplit(url).hostname
    except ValueError as e:
        return f"is not a valid URL: {e}"
    if not host:
        return "has no host name"
    if limits.allow_local_images:
        return None
    why = _local_host(host)
    return f"points to {why}; only public hosts are allowed (allow_local_images)" if why else None


def _data_url_problem(rest: str, limits: InputLimits) -> str | None:
    header, comma, data = rest.partition(",")
    if not comma:
        return "is a data: URL without a comma before its data"
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0] or "text/plain"
    if not mime.startswith("image/"):
        return f"is a data: URL of type {mime[:40]!r}, not an image type (image/png, image/jpeg, ...)"
    if "base64" in params[1:]:
        payload = "".join(data.split())
        # The decoded size is known from the length alone: refuse before decoding a huge one.
        if len(payload) // 4 * 3 > limits.max_image_bytes + 2:
            return _too_big(len(payload) // 4 * 3, limits)
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return "is a data: URL whose base64 data does not decode"
    else:
        raw = unquote_to_bytes(data)
    if not raw:
        return "is a data: URL with no image data"
    if len(raw) > limits.max_image_bytes:
        return _too_big(len(raw), limits)
    magic = _MAGIC.get(mime)
    if magic and not raw.startswith(magic):
        return f"is declared {mime} but its data is not a {mime.removeprefix('image/').upper()} image"
    if mime == "image/webp" and not (raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"):
        return "is declared image/webp but its data is not a WEBP image"
    return None


def _too_big(size: int, limits: InputLimits) -> str:
    return (
        f"is {size:,} bytes, over the limit of {limits.max_image_bytes:,} bytes (max_image_bytes); "
        "shrink it or raise max_image_bytes"
    )


@lru_cache(maxsize=4096)
def _local_host(host: str) -> str | None:
    """What is local about this host (a phrase), or None for a public one. Cached: a file's images
    usually come from a few hosts."""
    host = host.rstrip(".").lower()
    ip = _ip_literal(host)
    if ip is None:
        if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
            return f"the local-only host name {host!r}"
        if "." not in host:
            return f"the single-label host name {host!r}, which resolves inside the local network"
        return None
    for embedded in _embedded_ipv4(ip):
        if not embedded.is_global or embedded.is_multicast:
            return f"the non-public address {host} ({_kind(embedded)})"
    if not ip.is_global or ip.is_multicast:
        return f"the non-public address {host} ({_kind(ip)})"
    return None


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Legacy IPv4 spellings URL parsers still accept: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
    if host and all(c in "0123456789abcdefx." for c in host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(ip) -> list[ipaddress.IPv4Address]:
    if ip.version != 6:
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _kind(ip) -> str:
    for attr in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{attr}"):
            return attr.replace("_", "-")
    return "not globally routable"
