"""Helpers for reading the neutral (OpenAI-shaped) message content that every adapter translates from."""

from __future__ import annotations

import base64
import mimetypes
import re
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)

# When a URL's extension says nothing, JPEG is the most common photo format and every provider accepts it.
DEFAULT_IMAGE_MIME = "image/jpeg"


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message, its text parts joined by newlines; images are dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p.get("type") == "text")


SYSTEM_ROLES = ("system", "developer")


def split_system(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(the text of every system and developer message joined by blank lines, the other messages): the
    shape APIs with a separate system field (Anthropic, Gemini) and the system-merging quirk need."""
    system = "\n\n".join(text_of(m["content"]) for m in messages if m["role"] in SYSTEM_ROLES)
    return system, [m for m in messages if m["role"] not in SYSTEM_ROLES]


def parse_data_uri(url: str) -> tuple[str, str] | None:
    """`data:image/png;base64,AAAA` -> ("image/png", "AAAA"); None when `url` is not a data URI.
    A data URI that is not base64 (percent-encoded bytes) is re-encoded, since providers want base64."""
    m = _DATA_URI.match(url)
    if not m:
        return None
    mime = m.group("mime") or "text/plain"
    params = [p.strip().lower() for p in m.group("params").split(";") if p.strip()]
    data = m.group("data")
    if "base64" in params:
        return mime, "".join(data.split())
    return mime, base64.b64encode(unquote_to_bytes(data)).decode("ascii")


def guess_image_mime(url: str) -> str:
    return mimetypes.guess_type(urlparse(url).path)[0] or DEFAULT_IMAGE_MIME


def image_url_of(part: dict[str, Any]) -> str:
    return part["image_url"]["url"]
