"""A throwaway PostgreSQL server for the fleet tests: ``initdb`` in a temporary directory, ``postgres``
on a free loopback port, password authentication (scram-sha-256), run as an unprivileged user
(PostgreSQL refuses to run as root: under root the cluster belongs to ``nobody``).

The binaries are Debian's (``/usr/lib/postgresql/<version>/bin``, package ``postgresql``, installed
by .ci/system-deps.sh) or whatever ``initdb`` is on PATH.  Missing: the test skips, or fails
under CI=true.
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
from pathlib import Path

import pytest

from tests.support.fleet_helpers import free_port
from tests.support.tools import IN_CI

__all__ = ["PostgresCluster", "find_postgres", "postgres_server"]

USER, PASSWORD = "bne", "bne-test-" + secrets.token_hex(4)


def find_postgres() -> Path | None:
    """The directory holding initdb and postgres (newest Debian version first), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]),
                   reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    return Path(os.path.realpath(on_path)).parent if on_path else None


class PostgresCluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bne-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._as: dict = {}
        if os.geteuid() == 0:  # postgres will not run as root: hand the cluster to nobody
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        out = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                             cwd=self.root, **self._as)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> PostgresCluster:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        pwfile.unlink()
        log = open(self.log, "wb")
        # fsync off and no full-page writes: a throwaway cluster; the fleet's transactions are the same
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off", "-c", "max_connections=60",
             "-c", "shared_buffers=16MB"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._as)
        log.close()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                self.connect("postgres").close()
                return self
            except Exception:  # noqa: BLE001 - not accepting connections yet
                time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}")

    def url(self, dbname: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5)

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = "fleet_" + secrets.token_hex(4)
        with self.connect() as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, checkpoint
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def _missing(msg: str) -> None:
    if IN_CI:
        pytest.fail(msg + " (CI=true: a missing tool is a failure)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session; tests take a fresh database each (``new_database()``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg 3 not installed; it is in the fleet extra: pip install -e '.[fleet]'")
    bindir = find_postgres()
    if bindir is None:
        _missing("PostgreSQL not found; install it with: apt-get install postgresql")
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()
