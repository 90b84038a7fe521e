"""A private PostgreSQL server for the shared-store tests: initdb in a temporary
directory, listening on 127.0.0.1 on a free port (and a socket in that directory),
run as an unprivileged user when the tests run as root (PostgreSQL refuses root),
stopped at the end of the session.

Where PostgreSQL or psycopg is missing the tests that need it are skipped, saying
why, except under ``AFS_CI=1``, where a missing server is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

START_SECONDS = 60.0


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the shared-store tests must run."""
    if os.environ.get("AFS_CI") == "1":
        pytest.fail(f"AFS_CI=1 and the PostgreSQL tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_user() -> str | None:
    """Who runs the server: None for this user; as root, ``postgres`` (Debian's) or ``afs-pg``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "afs-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "afs-pg"],
                   check=True, capture_output=True, timeout=30)
    return "afs-pg"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One server; ``url(database)`` to connect; ``stop()``/``start()`` to play an outage."""

    def __init__(self, binaries: Path, user: str | None) -> None:
        self.binaries, self.user = binaries, user
        self.directory = Path(tempfile.mkdtemp(prefix="afs-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        os.chmod(self.directory, 0o755)

    def _run(self, *command: str, timeout: float = START_SECONDS) -> subprocess.CompletedProcess[str]:
        prefix = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        return subprocess.run([*prefix, str(self.binaries / command[0]), *command[1:]], capture_output=True,
                              text=True, timeout=timeout, cwd=self.directory)

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "afs", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"),
                         "-w", "-t", str(int(START_SECONDS)), "start")
        if done.returncode != 0:
            log = (self.directory / "log").read_text(errors="replace")[-800:] if (self.directory / "log").exists() \
                else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-500:]} {log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", timeout=40)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://afs@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"afs_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        # The plain core environment has no [postgres] extra: a skip there is expected;
        # the postgres environment installs it and must never skip in CI.
        if os.environ.get("TOX_ENV_NAME") == "postgres":
            unavailable("psycopg is not installed in the postgres environment")
        pytest.skip("psycopg is not installed (the [postgres] extra: tox run -e postgres)")
    binaries = _binaries()
    if binaries is None:
        unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    assert binaries is not None
    try:
        server = PostgresServer(binaries, _server_user())
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        unavailable(f"no user to run PostgreSQL as: {exc}")
        raise
    try:
        server.init()
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        server.remove()
        unavailable(f"PostgreSQL could not be started: {exc}")
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return postgres_server.create_database()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
