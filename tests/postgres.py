"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` package, initdb into a temporary folder,
a free port on 127.0.0.1, the socket in the same folder, stopped and removed at the end.

PostgreSQL refuses to run as root (as CI and this project's machines do): then its programs run as the
package's ``postgres`` user, which owns the folder. Without the package the tests that need it skip on a
developer's machine and fail in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def binaries() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``: Debian's newest, else the ``PATH``'s; or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing(what: str, install: str) -> None:
    """Skip on a developer's machine; fail in CI, where the package must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing in CI, where .ci/run and make setup install it")
    pytest.skip(f"{what} is not installed: {install}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A PostgreSQL server in ``folder`` on 127.0.0.1:``port``, its superuser ``postgres`` trusted (no password)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="fmnist-ignite-postgres-"))
        self.data, self.port = self.folder / "data", free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.databases = 0

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin_dir / program), *args],
            cwd=self.folder,  # one the server's user may enter
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")  # its data goes too
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy's URL of ``database`` through psycopg (version 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self.databases += 1
        name = f"test{self.databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)
