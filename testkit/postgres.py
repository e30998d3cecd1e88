"""A private PostgreSQL server for tests and benchmarks: a cluster in a temporary directory.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
unprivileged ``postgres`` user (created by Debian's package) and ``initdb`` and ``postgres``
run under it through ``setpriv`` (which execs, so the server's pid is the one we hold). The
server listens on 127.0.0.1 only, on a free port, with no Unix socket, and trusts local
connections: nothing outside the machine can reach it. It runs in its own process group so
that :meth:`PostgresServer.kill` can take the postmaster and every backend down at once with
SIGKILL, as a power cut would.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from testkit.services import free_port

_USER = "appliance"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: run scripts/install-system-deps.sh")
    return found[-1]


def _as_server_user() -> list[str]:
    """The command prefix that drops root to ``postgres``; nothing when we are not root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


@dataclass
class PostgresServer:
    """One private cluster; :meth:`stop` (or :meth:`kill`) then :meth:`remove` when done."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> PostgresServer:
        """initdb a fresh cluster and start it."""
        root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
        if os.geteuid() == 0:
            server_user = pwd.getpwnam("postgres")
            os.chown(root, server_user.pw_uid, server_user.pw_gid)
        server = cls(root, free_port())
        subprocess.run(
            [*_as_server_user(), _bin("initdb"), "-D", str(server.data_dir), "-U", _USER,
             "--auth=trust", "--encoding=UTF8", "--no-instructions"],
            check=True, capture_output=True,
        )
        server.start()
        return server

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server keeps writing it
        with log:
            self.process = subprocess.Popen(
                [*_as_server_user(), _bin("postgres"), "-D", str(self.data_dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                 "-c", "unix_socket_directories=", "-c", "max_connections=40",
                 "-c", "shared_buffers=32MB"],
                stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (self.root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._wait_backends_gone()

    def stop(self) -> None:
        """A fast shutdown: backends are told to exit, the cluster is left consistent."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._wait_backends_gone()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_backends_gone(self, timeout_s: float = 10.0) -> None:
        """A restart is refused while a backend of the old server still holds shared memory."""
        if self.process is None:
            return
        group = self.process.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def fresh_database(server: PostgresServer) -> Iterator[str]:
    """Create an empty database, yield its DSN, drop it (connections and all) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
