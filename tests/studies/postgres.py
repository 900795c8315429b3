"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl on a temporary folder and a
free loopback port, run as the `postgres` user when the tests run as root (the server refuses
root), stopped and removed afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "charrnn", "s3cret-pa55-2718"


@dataclass
class Server:
    host: str
    port: int

    def url(self, database: str, password: bool = False) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql+psycopg://{USER}{secret}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=USER, password=PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl (not on PATH on Debian), or None."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def why_not() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if binaries() is None:
        return "PostgreSQL's binaries are not installed (.ci/run installs them: apt-get " \
               "install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: the server refuses to run as root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """Start with `start()`, stop with `stop()` (the folder goes with it)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="charrnn-pg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.server = Server("127.0.0.1", free_port())

    def _run(self, *command: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *command], cwd=self.folder, check=True,
                       capture_output=True, text=True, timeout=120)

    def start(self) -> Server:
        (self.folder / "pw").write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.folder / "pw", "postgres", "postgres")
        bin_dir = binaries()
        self._run(str(bin_dir / "initdb"), "-D", str(self.data), "-A", "scram-sha-256",
                  "-U", USER, f"--pwfile={self.folder / 'pw'}")
        options = (f"-p {self.server.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=100")
        self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "log"), "-w", "start")
        return self.server

    def stop(self) -> None:
        try:
            self._run(str(binaries() / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
