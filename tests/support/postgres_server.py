"""A real PostgreSQL server for tests: `postgres_server` (one per session) and `database_url` (a fresh
database per test, dropped after it).

The server is Debian's binaries (initdb, pg_ctl: on PATH, e.g. /usr/local/bin, or /usr/lib/postgresql/*/bin;
.ci/run installs the `postgresql` package where absent), run from a private temporary directory: its own
cluster (`initdb -A trust -U postgres`), listening on 127.0.0.1 at a free port and on a Unix socket in that
directory, fsync off (`-F`, a test cluster is disposable), stopped with `pg_ctl stop -m immediate` at the
end. No other PostgreSQL on the machine is touched.

Root: initdb and postgres refuse to run as root, and tests run as root here and in CI. Then the binaries
run as the unprivileged `nobody` user through `runuser -u nobody --` (util-linux, on every Debian), and
the temporary directory is made in /tmp (which every user can traverse) and chowned to nobody. The tests
themselves connect over TCP as the `postgres` database user with trust authentication, so which Unix user
runs the server does not matter to them.

Import the fixtures into a test module: `from postgres_server import database_url, postgres_server`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from support.browser import missing_tool
from support.live_server import free_port

UNPRIVILEGED = "nobody"


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres."""
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found = shutil.which("initdb") or max(versions, key=lambda path: float(path.split("/")[4]), default=None)
    return Path(os.path.realpath(found)).parent if found else None


class PostgresServer:
    def __init__(self, binaries: Path, settings: dict[str, str] | None = None):
        self.binaries = binaries
        self.settings = settings or {}  # extra server settings, e.g. shared_preload_libraries
        self.as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="kleinserve-pg-", dir="/tmp" if self.as_root else None))
        self.data = self.directory / "data"
        self.port = free_port()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", UNPRIVILEGED, "--"] if self.as_root else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}\n{self.log()}")

    def start(self) -> PostgresServer:
        if self.as_root:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server (again, after `pause`) on the same port and data."""
        options = f"-k {self.directory} -h 127.0.0.1 -p {self.port} -F -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.directory / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        return self

    def pause(self) -> None:
        """Stop the server as an operator would (`pg_ctl stop -m fast`: every connection is dropped); the
        data stays for `resume`."""
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is dropped, the server is back at once. (restart takes
        no -l: the new server writes to pg_ctl's output, so that goes to the log, not to a pipe.)"""
        prefix = ["runuser", "-u", UNPRIVILEGED, "--"] if self.as_root else []
        command = [str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "restart"]
        with (self.directory / "server.log").open("a") as log:
            done = subprocess.run([*prefix, *command], stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{self.log()}")

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        try:
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="session")
def postgres_server():
    binaries = find_binaries()
    if binaries is None:
        missing_tool("PostgreSQL's server binaries (initdb, pg_ctl) are missing: apt-get install postgresql")
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server):
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
