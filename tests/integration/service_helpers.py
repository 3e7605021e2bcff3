"""A `llmbatch serve --simulate` subprocess on a free loopback port, over its own SQLite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.procs import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    def __init__(self, tmp: Path, *, simulator_url: str | None = None, extra_env: dict[str, str] | None = None):
        self.tmp = tmp
        inherited = {k: v for k, v in os.environ.items() if k != "LLMBATCH_BROKER_URL"}  # embedded unless given
        self.env = {
            **inherited,
            "LLMBATCH_DATABASE_URL": f"sqlite:///{tmp / 'service.db'}",
            "LLMBATCH_SERVICE_FILES_DIR": str(tmp / "files"),
            **(extra_env or {}),
        }
        if simulator_url:
            self.env["LLMBATCH_SIMULATOR_URL"] = simulator_url
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "llmbatch.cli", *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def cli_json(self, *args: str):
        out = self.cli(*args)
        assert out.returncode in (0, 3, 4, 5), out.stderr
        return json.loads(out.stdout)

    def start(self, *args: str) -> "ServiceProcess":
        port = free_port()
        self.log = open(self.tmp / "serve.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmbatch.cli", "serve", "--simulate", "--port", str(port), *args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.read_log()
            try:
                httpx.get(self.url + "/metrics", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the service did not come up: " + self.read_log())

    def read_log(self) -> str:
        return (self.tmp / "serve.log").read_text()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.log.close()


def batch_lines(n: int, *, model: str = "gpt-4o-mini", prefix: str = "r") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "max_tokens": 40,
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Summarize in one line: review {i} says the kettle works but the lid squeaks.",
                        }
                    ],
                },
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )
