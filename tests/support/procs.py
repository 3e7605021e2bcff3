"""Processes a test or a benchmark starts: `llmbatch worker`s (`WorkerProcs`), and stopping any child."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Seconds a worker gets to exit after SIGTERM (Celery's warm shutdown) before SIGKILL.
WORKER_STOP_GRACE_S = 5.0


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class WorkerProcs:
    """Real `llmbatch worker` processes; `stop_all()` (or leaving the `with` block) stops every one of them.

    Each worker runs in its own session (process group), so SIGKILL takes its pool children with it, as a
    machine dying would. Output goes to `<tmp_path>/worker-<i>.log` (see `.log(i)`); the workers run in
    `tmp_path` unless `start(cwd=...)` says otherwise. With a pytest `request`, LLMBATCH_BROKER_URL and
    LLMBATCH_DATABASE_URL default to the `redis_url` and `postgres_url` fixtures.
    """

    request: Any
    tmp_path: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    _launch: list[tuple[list[str], dict[str, str], str]] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)
    # Where each worker's latest process began writing in its log (logs are appended to: a restarted worker,
    # or a second set of workers in the same directory, writes after the earlier output).
    _log_starts: dict[int, int] = field(default_factory=dict)

    def command(self, concurrency: int, args: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "llmbatch.cli", "worker"]
        if "--concurrency" not in args and not any(a.startswith("--concurrency=") for a in args):
            cmd += ["--concurrency", str(concurrency)]
        return cmd + list(args)

    def start(
        self,
        n: int = 1,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        concurrency: int = 4,
        argv: list[str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
        ready_timeout: float | None = None,
    ) -> list[subprocess.Popen]:
        """Start `n` workers. `env` is added to this process's environment (or, with `inherit_env=False`, is the
        whole environment). `argv` replaces the whole command (for tests of this class). With `ready_timeout`,
        waits until each new worker printed Celery's " ready."."""
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env or {})
        for key, fixture in (("LLMBATCH_BROKER_URL", "redis_url"), ("LLMBATCH_DATABASE_URL", "postgres_url")):
            if not full_env.get(key) and self.request is not None:
                full_env[key] = self.request.getfixturevalue(fixture)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = list(argv) if argv is not None else self.command(concurrency, list(args or []))
        started = []
        for _ in range(n):
            self._launch.append((cmd, full_env, str(cwd or self.tmp_path)))
            self._logs.append(self.tmp_path / f"worker-{len(self._logs)}.log")
            proc = self._spawn(len(self._launch) - 1)
            self.procs.append(proc)
            started.append(proc)
        if ready_timeout is not None:
            for i in range(len(self.procs) - n, len(self.procs)):
                self.wait_for_log(i, " ready.", ready_timeout)
        return started

    def _spawn(self, i: int) -> subprocess.Popen:
        cmd, env, cwd = self._launch[i]
        with open(self._logs[i], "ab") as out:
            self._log_starts[i] = out.tell()
            return subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, i: int, sig: int = signal.SIGKILL, *, group: bool | None = None) -> None:
        """Send `sig` to worker `i`. SIGKILL goes to its whole process group by default (a crash);
        other signals go to the main process only (SIGTERM = Celery's warm shutdown).

        A SIGKILLed worker is reaped at once, as its parent would on a real machine: left a zombie, its pid
        still answers `kill -0`, and whatever takes back a dead process's work on this host at once (its
        cache claims, its tasks on `resume`) would wait for the claim or lease to expire instead."""
        proc = self.procs[i]
        if group is None:
            group = sig == signal.SIGKILL
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, i: int, grace: float = WORKER_STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL the group. Returns the exit code."""
        proc = self.procs[i]
        if proc.poll() is None:
            self.kill(i, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Pool children outlive a parent that died or ignored SIGTERM; reap the whole group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, i: int, grace: float = WORKER_STOP_GRACE_S) -> subprocess.Popen:
        """Stop worker `i` (gracefully if it is alive) and start it again with the same command."""
        self.stop(i, grace)
        self.procs[i] = self._spawn(i)
        return self.procs[i]

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log(self, i: int) -> str:
        try:
            return self._logs[i].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _latest_output(self, i: int) -> str:
        """What worker `i`'s latest process has written (its log from the byte where that process began)."""
        try:
            with open(self._logs[i], "rb") as f:
                f.seek(self._log_starts.get(i, 0))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 2000) -> dict[str, str]:
        """The last `n` characters of every worker's output, by log file name."""
        return {f.name: f.read_text(errors="replace")[-n:] for f in self._logs if f.exists()}

    def wait_for_log(self, i: int, text: str, timeout: float = 30.0) -> None:
        """Wait until the output of worker `i`'s latest process contains `text` (e.g. Celery's "ready"): an
        earlier process's " ready." in the same log says nothing about this one (it made the benchmarks start
        their clock while the second run's workers were still starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self._latest_output(i):
                return
            if self.procs[i].poll() is not None:
                raise AssertionError(
                    f"worker {i} exited with {self.procs[i].returncode} before printing "
                    f"{text!r}:\n{self.log(i)[-4000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"worker {i} did not print {text!r} within {timeout}s:\n{self.log(i)[-4000:]}")

    def stop_all(self, grace: float = WORKER_STOP_GRACE_S) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(i, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for i in range(len(self.procs)):
            self.stop(i, grace=0)

    def __enter__(self) -> "WorkerProcs":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
