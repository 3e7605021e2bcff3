"""Throwaway Redis and PostgreSQL servers for the tests and the benchmarks: the one implementation.

    python -m tests.support.services start [redis|postgres]      start (or reuse) and print the URLs
    python -m tests.support.services stop [redis|postgres]
    python -m tests.support.services status [redis|postgres]     exit 0 only if every named service answers
    python -m tests.support.services restart [redis|postgres]
    python -m tests.support.services restart-redis [--kill]      --kill: SIGKILL instead of SHUTDOWN (crash)
    python -m tests.support.services restart-postgres [--immediate]  --immediate: no checkpoint (crash recovery)
    python -m tests.support.services env                         print the URLs without starting anything

(`bash scripts/services.sh ...` runs the same.) Every command is idempotent. stdout carries only KEY=VALUE
lines (the URLs), so `set -a; eval "$(bash scripts/services.sh start)"; set +a` exports them; progress and
errors go to stderr.

Settings (environment):
  LLMBATCH_REDIS_PORT (56379)  Redis on 127.0.0.1; AOF on, maxmemory-policy noeviction; data in .services/redis
  LLMBATCH_PG_PORT    (55432)  PostgreSQL on 127.0.0.1, trust auth, user postgres
  LLMBATCH_PG_DATA    (/tmp/llmbatch-pg-$PORT)  Postgres refuses to run as root, so as root the server runs as
                               the `postgres` user (created if missing) and its data lives outside the repo
                               (which may sit under /root, where that user cannot go). .services/pg links to it.
  LLMBATCH_PG_DB      (llmbatch_test)

Standard library only: `scripts/services.sh` may run it before any virtualenv exists. Why not pytest-redis's
`redis_proc` / pytest-postgresql's `postgresql_proc`: see tests/support/__init__.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
SERVICES_DIR = REPO / ".services"
SERVICES_SH = REPO / "scripts" / "services.sh"

REDIS_ENV = "LLMBATCH_TEST_REDIS_URL"
DATABASE_ENV = "LLMBATCH_TEST_DATABASE_URL"


class ServiceError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"services: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ URLs


def psycopg_dsn(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy) -> `postgresql://...` (libpq)."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name or number (query string kept)."""
    base, _, query = url.partition("?")
    base = base.rstrip("/")
    base = base.rsplit("/", 1)[0] if base.count("/") >= 3 else base
    return f"{base}/{name}" + (f"?{query}" if query else "")


# ------------------------------------------------------------------------------------------ helpers


def alive(pid: int) -> bool:
    """kill -0 also succeeds on a zombie, and daemons reparented to a PID 1 that never reaps stay zombies."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def _tail(path: Path, n: int = 40, since: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """One start/stop at a time: parallel test processes may all try to start the services. Daemons are
    spawned with close_fds, so they never inherit (and hold) the lock."""
    SERVICES_DIR.mkdir(parents=True, exist_ok=True)
    with open(SERVICES_DIR / ".lock", "w") as f:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServiceError(f"timed out waiting for {SERVICES_DIR / '.lock'}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ redis


@dataclass
class Redis:
    """A redis-server on 127.0.0.1:`port`, daemonized (it outlives this process), data in `dir`.
    `durable`: AOF on (the broker's queues must survive a crash); off for the benchmarks' own server."""

    port: int
    dir: Path
    durable: bool = True
    name: str = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str, timeout: float = 5) -> str:
        """One command over RESP; returns the first reply line (`+PONG`, `-LOADING ...`, `*2`, ...)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload.encode())
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            return buf.split(b"\r\n", 1)[0].decode(errors="replace")

    def config_get(self, key: str) -> str:
        payload = f"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(payload)
            buf = b""
            while buf.count(b"\r\n") < 5:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        lines = buf.split(b"\r\n")
        return lines[4].decode() if len(lines) > 4 else "?"

    def up(self) -> bool:
        # Replies LOADING while it replays the AOF: only PONG counts.
        try:
            return self.command("PING", timeout=2) == "+PONG"
        except OSError:
            return False

    def pid(self) -> int | None:
        try:
            pid = int((self.dir / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def start(self) -> bool:
        """Start the server unless one answers; True if this call started it."""
        ensure_redis_installed()
        if self.up():
            if self.durable:
                # A reused server may have been started by hand: make it behave like ours.
                self.command("CONFIG", "SET", "appendonly", "yes")
                self.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
            log(f"{self.name} already running on 127.0.0.1:{self.port} (reused)")
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        logfile = self.dir / "redis.log"
        since = logfile.stat().st_size if logfile.exists() else 0
        # maxmemory 0 = no limit; noeviction still matters for anyone who sets one: the broker's queues must
        # never be evicted silently.
        cmd = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--protected-mode",
            "yes",
            "--daemonize",
            "yes",
            "--dir",
            str(self.dir),
            "--pidfile",
            str(self.dir / "redis.pid"),
            "--logfile",
            str(logfile),
            "--save",
            "",
            "--maxmemory",
            "0",
            "--maxmemory-policy",
            "noeviction",
        ]
        cmd += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.durable else ["--appendonly", "no"]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, timeout=60)
        if p.returncode != 0:
            raise ServiceError(f"redis-server failed to start; see {logfile}")
        if not _wait(self.up, 30):
            log(_tail(logfile, since=since))
            raise ServiceError(f"redis did not answer PING on 127.0.0.1:{self.port} within 30s")
        log(f"{self.name} started on 127.0.0.1:{self.port} (data: {self.dir})")
        return True

    def stop(self, *, kill: bool = False) -> None:
        """SHUTDOWN (the AOF is flushed first), or with `kill` a SIGKILL (a crash)."""
        if kill:
            pid = self.pid()
            if pid is None:
                raise ServiceError(f"no redis.pid for a running server in {self.dir}; cannot SIGKILL it")
            os.kill(pid, 9)
            log(f"{self.name} on 127.0.0.1:{self.port} killed (SIGKILL, pid {pid})")
        elif self.up():
            with contextlib.suppress(OSError):
                self.command("SHUTDOWN")
        else:
            log(f"{self.name} not running on 127.0.0.1:{self.port}")
            return
        if not _wait(lambda: not self.up() and self.pid() is None, 10):
            raise ServiceError(f"redis on 127.0.0.1:{self.port} did not stop within 10s")
        if not kill:
            log(f"{self.name} on 127.0.0.1:{self.port} stopped")

    def status(self) -> bool:
        if self.up():
            log(
                f"{self.name}: up on 127.0.0.1:{self.port} (appendonly={self.config_get('appendonly')}, "
                f"maxmemory-policy={self.config_get('maxmemory-policy')})"
            )
            return True
        log(f"{self.name}: down (127.0.0.1:{self.port})")
        return False


def ensure_redis_installed() -> None:
    if shutil.which("redis-server"):
        return
    if os.geteuid() != 0:
        raise ServiceError(
            "redis-server is not installed; run: sudo apt-get update && sudo apt-get install -y redis-server"
        )
    log("redis-server not found; installing it with apt-get")
    # The package would start a system-wide Redis on 6379; we only want the binary.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        ):
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr).returncode
            if rc != 0:
                raise ServiceError(f"{' '.join(cmd)} failed (exit {rc})")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    if not shutil.which("redis-server"):
        raise ServiceError("redis-server still not on PATH after apt-get install")


# ------------------------------------------------------------------------------------------ postgres


def _pg_bin() -> Path:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and shutil.which("initdb"):
        d = Path(os.path.realpath(pg_ctl)).parent
        if (d / "initdb").exists():
            return d
    # Newest installed major first.
    for d in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    ):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or "
        "/usr/lib/postgresql/*/bin; install them: apt-get install -y postgresql-15"
    )


@dataclass
class Postgres:
    """A PostgreSQL cluster in `base`/data on 127.0.0.1:`port` with the database `db`. As root the server runs
    as the `postgres` system user (PostgreSQL refuses to run as root); pg_ctl starts it detached."""

    port: int
    base: Path
    db: str = "llmbatch_test"
    name: str = "postgres"
    _bin: Path | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.db}"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = _pg_bin()
        return self._bin

    def tool(self, name: str) -> str:
        """Client tools: the server's own bin dir has them; fall back to PATH."""
        p = self.bin / name
        return str(p) if p.exists() else name

    @staticmethod
    def user() -> str:
        if os.geteuid() != 0:
            import pwd

            return pwd.getpwuid(os.geteuid()).pw_name
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            log("creating system user postgres (the server refuses to run as root)")
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        return "postgres"

    def as_pg(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        """Run a server command as the user that owns the data directory."""
        argv = ["runuser", "-u", self.user(), "--", *cmd] if os.geteuid() == 0 else list(cmd)
        return subprocess.run(argv, cwd="/", stdin=subprocess.DEVNULL, **kw)

    def up(self) -> bool:
        try:
            return (
                subprocess.run(
                    [
                        self.tool("pg_isready"),
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-d",
                        "postgres",
                        "-U",
                        "postgres",
                    ],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False

    def psql(self, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                self.tool("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

    def _write_config(self) -> None:
        # Rewritten on every start, so a changed port takes effect; postgresql.conf includes it.
        (self.data / "llmbatch.conf").write_text(f"""\
# Written by tests/support/services.py: a throwaway test server.
# fsync=off only loses data if the OS crashes. synchronous_commit stays on: with it off, a server
# killed mid-job (restart-postgres --immediate) forgets commits it already acknowledged, and the
# reliability tests would see lost results that a real server never loses.
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.data}'
max_connections = 400
fsync = off
full_page_writes = off
logging_collector = off
""")
        with contextlib.suppress(OSError, KeyError):
            shutil.chown(self.data / "llmbatch.conf", self.user())

    def _init(self) -> None:
        user = self.user()
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, user)
        self.base.chmod(0o700)
        if not (self.data / "PG_VERSION").exists() or (self.data / "PG_VERSION").stat().st_size == 0:
            shutil.rmtree(self.data, ignore_errors=True)
            log(f"initdb into {self.data} (as {user})")
            with open(self.base / "initdb.log", "wb") as out:
                rc = self.as_pg(
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ).returncode
            if rc != 0:
                log(_tail(self.base / "initdb.log"))
                raise ServiceError("initdb failed")
            with open(self.data / "postgresql.conf", "a") as f:
                f.write("include_if_exists = 'llmbatch.conf'\n")
        import pwd

        owner = pwd.getpwuid(self.data.stat().st_uid).pw_name
        if owner != user:
            raise ServiceError(f"{self.data} is owned by {owner}, not {user}; remove it or set LLMBATCH_PG_DATA")
        SERVICES_DIR.mkdir(parents=True, exist_ok=True)
        link = SERVICES_DIR / "pg"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.base)

    def _clear_stale_lock(self) -> None:
        """A postmaster killed with SIGKILL leaves postmaster.pid behind. Postgres refuses to start if that pid
        now belongs to some other live process, and orphaned backends may still hold shared memory."""
        pidfile = self.data / "postmaster.pid"
        sockets = [self.data / f".s.PGSQL.{self.port}", self.data / f".s.PGSQL.{self.port}.lock"]
        if not pidfile.exists():
            # A socket lock whose postmaster.pid is gone is stale.
            for s in sockets:
                s.unlink(missing_ok=True)
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and alive(pid) and _comm(pid).startswith(("postgres", "postmaster")) and _cwd(pid) == str(self.data):
            return  # our server is alive (starting, recovering or stopping); pg_ctl will cope
        log(f"removing stale {pidfile} (pid {pid or '?'} is not a live postmaster of this cluster)")
        # Backends chdir into the data directory, so /proc/*/cwd finds only this cluster's orphans.
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and _cwd(int(p.name)) == str(self.data) and _comm(int(p.name)).startswith("postgres"):
                log(f"killing orphaned backend {p.name}")
                with contextlib.suppress(OSError):
                    os.kill(int(p.name), 9)
        for f in [pidfile, *sockets]:
            f.unlink(missing_ok=True)

    def _ensure_db(self) -> None:
        exists = f"SELECT 1 FROM pg_database WHERE datname = '{self.db}'"
        if self.psql(exists).stdout.strip() == "1":
            return
        p = self.psql(f'CREATE DATABASE "{self.db}"')
        if p.returncode != 0 and self.psql(exists).stdout.strip() != "1":  # another process may have won the race
            raise ServiceError(f"could not create database {self.db}: {p.stderr.strip()}")
        log(f"created database {self.db}")

    def start(self) -> bool:
        """Start the server unless one answers; True if this call started it."""
        if self.up():
            log(f"{self.name} already running on 127.0.0.1:{self.port} (reused)")
            self._ensure_db()
            return False
        self._init()
        self._clear_stale_lock()
        self._write_config()
        since = self.logfile.stat().st_size if self.logfile.exists() else 0
        rc = self.as_pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "120",
            "start",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        if rc != 0:
            log(_tail(self.logfile, since=since))
            raise ServiceError(f"postgres failed to start on 127.0.0.1:{self.port} (log: {self.logfile})")
        if not _wait(self.up, 30):
            log(_tail(self.logfile))
            raise ServiceError(f"postgres on 127.0.0.1:{self.port} does not accept connections")
        version = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True, text=True).stdout
        log(
            f"{self.name} {version.split()[2] if len(version.split()) > 2 else '?'} started on 127.0.0.1:{self.port} "
            f"(data: {self.data}, user {self.user()})"
        )
        self._ensure_db()
        return True

    def stop(self, *, mode: str = "fast") -> None:
        """pg_ctl stop -m fast (sessions terminated, checkpoint) or -m immediate (a crash: recovery on start)."""
        pg_ctl = str(self.bin / "pg_ctl")
        if (self.data / "postmaster.pid").exists() and self.as_pg(
            pg_ctl, "-D", str(self.data), "status", capture_output=True
        ).returncode == 0:
            if (
                self.as_pg(
                    pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", capture_output=True
                ).returncode
                != 0
            ):
                raise ServiceError(f"pg_ctl stop -m {mode} failed (log: {self.logfile})")
            log(f"{self.name} on 127.0.0.1:{self.port} stopped ({mode})")
            return
        if self.up():
            raise ServiceError(
                f"a PostgreSQL server answers on 127.0.0.1:{self.port} but its data directory is "
                f"not {self.data}; stop it yourself"
            )
        log(f"{self.name} not running on 127.0.0.1:{self.port}")

    def status(self) -> bool:
        if self.up():
            log(f"{self.name}: up on 127.0.0.1:{self.port} (data: {self.data})")
            return True
        log(f"{self.name}: down (127.0.0.1:{self.port})")
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ the test servers


def redis_server(port: int | None = None) -> Redis:
    return Redis(port=port or int(os.environ.get("LLMBATCH_REDIS_PORT", "56379")), dir=SERVICES_DIR / "redis")


def postgres_server(port: int | None = None) -> Postgres:
    port = port or int(os.environ.get("LLMBATCH_PG_PORT", "55432"))
    return Postgres(
        port=port,
        base=Path(os.environ.get("LLMBATCH_PG_DATA") or f"/tmp/llmbatch-pg-{port}"),
        db=os.environ.get("LLMBATCH_PG_DB", "llmbatch_test"),
    )


def configured_servers() -> dict[str, Redis | Postgres]:
    """The tests' servers, as configured by LLMBATCH_REDIS_PORT / LLMBATCH_PG_PORT / LLMBATCH_PG_DATA / _PG_DB."""
    return {"redis": redis_server(), "postgres": postgres_server()}


def env_lines(servers: dict[str, Redis | Postgres]) -> list[str]:
    return [f"{REDIS_ENV}={servers['redis'].url}", f"{DATABASE_ENV}={servers['postgres'].url}"]


class SessionServices:
    """For a test session without exported URLs: starts the test servers at most once, and stops at the end
    only those it started (never while LLMBATCH_KEEP_SERVICES is set or under pytest-xdist)."""

    def __init__(self) -> None:
        self.attempted = False
        self.error: str | None = None
        self.started: list[Redis | Postgres] = []

    def ensure(self) -> None:
        if self.attempted or (os.environ.get(REDIS_ENV) and os.environ.get(DATABASE_ENV)):
            return
        self.attempted = True
        servers = configured_servers()
        try:
            with lock():
                for s in servers.values():
                    if s.start():
                        self.started.append(s)
        except (ServiceError, OSError, subprocess.SubprocessError) as e:
            self.error = f"starting the test servers: {e}"
            return
        for line in env_lines(servers):
            key, _, value = line.partition("=")
            # A URL given by the caller wins over the default one.
            if not os.environ.get(key):
                os.environ[key] = value

    def stop_started(self) -> None:
        if not self.started or os.environ.get("LLMBATCH_KEEP_SERVICES") or os.environ.get("PYTEST_XDIST_WORKER"):
            return
        with lock():
            for s in self.started:
                with contextlib.suppress(ServiceError, OSError, subprocess.SubprocessError):
                    s.stop()
        self.started = []


# ------------------------------------------------------------------------------------------ command line


USAGE = "\n\n".join(__doc__.split("\n\n")[:3])


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    redis, postgres = redis_server(), postgres_server()
    servers: dict[str, Redis | Postgres] = {"redis": redis, "postgres": postgres}
    urls = "\n".join(env_lines(servers))
    try:
        if (
            cmd in ("start", "stop", "restart", "status")
            and len(args) <= 1
            and (args or ["all"])[0] in ("all", "redis", "postgres")
        ):
            named = list(servers.values()) if (args or ["all"])[0] == "all" else [servers[args[0]]]
            if cmd == "status":
                return 0 if all([s.status() for s in named]) else 1
            with lock():
                for s in named:
                    if cmd != "start":
                        s.stop()
                    if cmd != "stop":
                        s.start()
        elif cmd == "restart-redis" and args in ([], ["--kill"]):
            with lock():
                redis.stop(kill=bool(args))
                redis.start()
        elif cmd == "restart-postgres" and args in ([], ["--immediate"]):
            with lock():
                postgres.stop(mode="immediate" if args else "fast")
                postgres.start()
        elif cmd != "env":
            print(USAGE, file=sys.stderr)
            return 2
    except ServiceError as e:
        print(f"services: error: {e}", file=sys.stderr)
        return 1
    if cmd != "stop":
        print(urls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
