"""Ways to run the simulator: blocking (CLI), in a background thread (--simulate, tests), or as a
subprocess (benchmarks and tests that want it on another core)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import Any

from aiohttp import web

from .app import app_state, create_app
from .config import SimulatorConfig

# Waiting handlers (latency, hang, slow_body) are cancelled this quickly on shutdown.
SHUTDOWN_TIMEOUT_S = 0.5


def _runner(config: SimulatorConfig) -> web.AppRunner:
    # access_log=None: the access log would print Gemini's ?key= query string.
    # handler_cancellation: a client that gives up cancels its handler (hung requests do not pile up).
    return web.AppRunner(
        create_app(config), access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            return sock.getsockname()[1]
    raise RuntimeError("simulator site has no listening socket")


async def _serve_forever(host: str, port: int, config: SimulatorConfig) -> None:
    runner = _runner(config)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    print(f"llmbatch simulator listening on http://{host}:{_bound_port(runner)}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_server(host: str = "127.0.0.1", port: int = 8765, config: SimulatorConfig | None = None) -> None:
    """Serve until interrupted. Prints one line with the URL once listening."""
    try:
        asyncio.run(_serve_forever(host, port, config or SimulatorConfig()))
    except KeyboardInterrupt:
        pass


class SimulatorThread:
    """The simulator on 127.0.0.1 in a daemon thread with its own event loop.

    with SimulatorThread(SimulatorConfig(latency_s=0.01)) as sim:
        client = OpenAI(base_url=f"{sim.url}/v1", api_key="sk-sim")
    """

    def __init__(self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "SimulatorThread":
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="llmbatch-simulator", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout=30)  # re-raises a bind error from the thread
        self.url = f"http://{self.host}:{self.port}"
        return self

    def _run(self, ready: Future) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = _runner(self.config)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
            loop.run_until_complete(site.start())
            ready.set_result(_bound_port(self._runner))
        except BaseException as e:  # noqa: BLE001 - handed to the starting thread
            ready.set_exception(e)
            loop.close()
            return
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, fn) -> Any:
        """Run fn() on the simulator's loop (its state is not thread-safe) and return the result."""
        if self._loop is None or self._runner is None:
            raise RuntimeError("simulator not started")

        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    @property
    def state(self):
        """The live SimState (read-only use from other threads; change settings with configure())."""
        if self._runner is None:
            raise RuntimeError("simulator not started")
        return app_state(self._runner.app)

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Partial update of the settings, like POST /_sim/config."""
        self.config = self._call(lambda: self.state.update(changes))
        return self.config

    def stats(self) -> dict[str, Any]:
        return self._call(lambda: self.state.stats.snapshot())

    def reset(self) -> None:
        self._call(lambda: self.state.reset())

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> "SimulatorThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def config_args(config: SimulatorConfig) -> list[str]:
    """Command-line flags for `python -m llmbatch.simulator` that reproduce `config`."""
    args = [
        "--latency",
        str(config.latency_s),
        "--latency-jitter",
        str(config.latency_jitter_s),
        "--error-rate",
        str(config.error_rate),
        "--seed",
        str(config.seed),
        "--mini-error-rate",
        str(config.mini_error_rate),
    ]
    if config.rpm is not None:
        args += ["--rpm", str(config.rpm)]
    if config.latency_p50_s is not None:
        args += ["--latency-p50", str(config.latency_p50_s)]
    if config.latency_p99_s is not None:
        args += ["--latency-p99", str(config.latency_p99_s)]
    for name, rate in config.faults.items():
        args += ["--fault", f"{name}={rate}"]
    defaults = SimulatorConfig()
    rest = {
        k: v
        for k, v in config.to_dict().items()
        if k
        not in (
            "latency_s",
            "latency_jitter_s",
            "error_rate",
            "seed",
            "mini_error_rate",
            "rpm",
            "faults",
            "latency_p50_s",
            "latency_p99_s",
        )
        and v != getattr(defaults, k)
    }
    if rest:
        args += ["--config-json", json.dumps(rest)]
    return args


def start_subprocess(
    config: SimulatorConfig | None = None, port: int = 0, *, host: str = "127.0.0.1", timeout: float = 30.0
) -> tuple[subprocess.Popen, str]:
    """Start `python -m llmbatch.simulator` and wait until it answers. The caller terminates the Popen."""
    import urllib.error
    import urllib.request

    config = config or SimulatorConfig()
    port = port or _free_port(host)
    cmd = [sys.executable, "-m", "llmbatch.simulator", "--host", host, "--port", str(port), *config_args(config)]
    # stderr goes to a file, not a pipe: nobody drains a pipe during a long benchmark, and a full one blocks.
    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog, env=os.environ.copy())
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errlog.seek(0)
            err = errlog.read().decode(errors="replace")
            raise RuntimeError(f"simulator exited with code {proc.returncode}: {err.strip()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_sim/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"simulator did not answer on {url} within {timeout}s")
