"""`llmbatch serve`: the OpenAI Batch API over llmbatch jobs, a spend dashboard and Prometheus metrics.

Needs the `serve` extra (starlette, uvicorn, prometheus_client, python-multipart).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import socket

from ..config import Settings
from ..errors import ConfigError

INSTALL_HINT = "llmbatch serve needs the service extra: pip install 'llmbatch[serve]'"
LOOPBACK = "127.0.0.1"


def check_installed() -> None:
    """One line saying how to install what `serve` needs, instead of an ImportError's traceback."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        raise ConfigError(INSTALL_HINT)  # form uploads (POST /v1/files)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def bind_host(settings: Settings, host: str) -> tuple[str, str | None]:
    """The host to listen on, and a notice when it is not the one asked for: without any API token the
    service is open to whoever reaches it, so it listens on loopback only."""
    from ..store.db import get_engine
    from .tokens import any_active

    with get_engine(settings.database_url).connect() as conn:
        if any_active(conn) or is_loopback(host):
            return host, None
    return LOOPBACK, (
        f"no API token exists, so the service listens on {LOOPBACK} only (asked: {host}); "
        "create one with `llmbatch tokens create NAME` to serve other hosts"
    )


def serve(settings: Settings, *, host: str, port: int, simulate: bool = False) -> None:
    check_installed()
    import uvicorn

    from .app import build_app

    uvicorn.run(build_app(settings, simulate=simulate), host=host, port=port, log_level="info")
