"""Real servers for the tests: a PostgreSQL cluster and an S3 endpoint (moto), never mocks.

Both are session-scoped fixtures (imported by conftest.py) started once per test process on
loopback ports and stopped when the session ends:

- `postgres_server`: a throw-away cluster made with the machine's own PostgreSQL binaries
  (`initdb`/`pg_ctl`, Debian package `postgresql`). Each test asks it for a fresh database
  with `create_database()`, so tests never see each other's rows.
- `s3_server`: moto's S3 server in a subprocess (its own process and GIL, so it behaves like
  a separate server for the tests' event loop and for worker subprocesses alike). Each test
  asks it for a fresh bucket with `create_bucket()`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

STARTUP_TIMEOUT_S = 30.0
Server = TypeVar("Server", "PostgresServer", "S3Server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (or PAWTRAIT_PG_BIN)."""
    candidates = [os.environ["PAWTRAIT_PG_BIN"]] if os.environ.get("PAWTRAIT_PG_BIN") else []

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.split("/postgresql/")[-1])[:2])

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        folder = Path(candidate)
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file() and (folder / "postgres").is_file():
            return folder
    raise RuntimeError(
        "The PostgreSQL server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin. "
        "Install the Debian package: `apt-get install -y postgresql` (scripts/run-tests does this for you)."
    )


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only.

    When the tests run as root, the server runs as the `postgres` system user (initdb refuses
    root). Connections over TCP use a password (scram-sha-256), like a real deployment; the unix
    socket, inside the temporary folder, trusts local users and serves the admin commands.
    """

    user = "pawtrait"

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or postgres_bin_dir()
        self.password = secrets.token_hex(12)
        self.port = 0
        self._names = itertools.count(1)
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "Tests run as root, and initdb refuses root, but there is no `postgres` system user "
                    "to run PostgreSQL as. Install the Debian package `postgresql` (it creates that user)."
                ) from None
            self._owner = (entry.pw_uid, entry.pw_gid)
            self._run_as = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="pawtrait-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.socket_dir.mkdir()
        self.log.touch()
        if self._owner is not None:
            for path in (self.root, self.socket_dir, self.log):
                os.chown(path, *self._owner)

    # -- running the binaries ------------------------------------------------------------------

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [*self._run_as, str(self.bin_dir / tool), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", TZ="UTC", HOME=str(self.root))
        result = subprocess.run(command, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"`{tool} {' '.join(args)}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"server log:\n{_log_tail(self.log)}"
            )
        return result

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; returns psql's unaligned output."""
        result = self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
            "-U", self.user, "-d", database, "-c", sql,
        )  # fmt: skip
        return result.stdout.strip()

    # -- life cycle --------------------------------------------------------------------------

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._owner is not None:
            os.chown(pwfile, *self._owner)
        try:
            # --no-sync: only initdb's own final flush is skipped (a throw-away cluster); the
            # server itself keeps fsync and synchronous_commit on.
            self._run(
                "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "-E", "UTF8",
                "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_wal_size": "256MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_timezone": "'UTC'",
            "timezone": "'UTC'",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# pawtrait tests\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))

    def start(self) -> None:
        """Start on self.port (choosing a free one the first time) and wait until it accepts connections."""
        for attempt in range(5):
            if not self.port or attempt:
                self.port = free_port()
            result = self._run(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(STARTUP_TIMEOUT_S)),
                "-o", f"-p {self.port}", check=False, timeout=STARTUP_TIMEOUT_S + 10,
            )  # fmt: skip
            if result.returncode == 0:
                return
            if "could not bind" not in _log_tail(self.log) or attempt == 4:
                raise RuntimeError(
                    f"PostgreSQL did not start:\n{result.stdout}{result.stderr}\nserver log:\n{_log_tail(self.log)}"
                )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: 'smart', 'fast' or 'immediate', which is like a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60", check=False, timeout=70)

    def restart(self, mode: str = "fast") -> None:
        """Stop, then start again on the same port and data folder; returns once it accepts connections.

        mode='immediate' stops it like a crash (no shutdown checkpoint; it recovers from WAL).
        """
        self.stop(mode)
        self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- what tests use ----------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` over TCP with the password."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        """The same as a plain libpq/asyncpg DSN (no '+asyncpg')."""
        return self.url(database).replace("postgresql+asyncpg://", "postgresql://", 1)

    def create_database(self) -> str:
        """A fresh, empty, uniquely named database; returns its SQLAlchemy URL."""
        name = f"t{os.getpid()}_{next(self._names)}_{secrets.token_hex(3)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def started(server: Server, *steps: Callable[[], None]) -> Server:
    """`server` after its start-up `steps`; a step that fails closes what the earlier ones started."""
    try:
        for step in steps:
            step()
    except BaseException:
        server.close()
        raise
    return server


def serving(server: Server) -> Iterator[Server]:
    """A session fixture's body: the started server, closed when the session ends."""
    try:
        yield server
    finally:
        server.close()


def start_postgres() -> PostgresServer:
    server = PostgresServer()
    return started(server, server.init, server.start)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session; `create_database()` per test."""
    yield from serving(start_postgres())


# --------------------------------------------------------------------------------------------
# S3 (moto's server)
# --------------------------------------------------------------------------------------------


class S3Server:
    """moto's S3 server as a subprocess on 127.0.0.1 (any access key works; this one is fake)."""

    access_key = "pawtrait-test-access-key"
    secret_key = "pawtrait-test-secret-do-not-print"
    region = "us-east-1"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pawtrait-s3-"))
        self.log = self.root / "moto.log"
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._names = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            # moto answers with the default fake account; no AWS variables are needed to run it.
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                    preexec_fn=_die_with_parent,
                )  # fmt: skip
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answers():
                    return
                time.sleep(0.05)
            self.stop()  # exited early (port taken?) or too slow: try again on another port
        raise RuntimeError(f"moto's S3 server did not start (is `moto[server]` installed?):\n{_log_tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_bucket(self) -> str:
        """A fresh, empty, uniquely named bucket."""
        name = f"pawtrait-test-{os.getpid()}-{next(self._names)}-{secrets.token_hex(3)}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto could not create bucket {name}: HTTP {response.status}")
        return name

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The environment variables a Pawtrait process needs to keep its files in `bucket`."""
        url = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
        return {
            "PAWTRAIT_FILES_URL": url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_s3() -> S3Server:
    server = S3Server()
    return started(server, server.start)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint (moto server) for the whole session; `create_bucket()` per test."""
    yield from serving(start_s3())
