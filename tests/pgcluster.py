"""A PostgreSQL cluster of the test's own: initdb in a temporary folder, its own port.

Tests that stop, restart, kill or reconfigure PostgreSQL use one of these and
never the server the suite was pointed at (``TEST_DATABASE_URL`` or the
machine's own): nothing a test did not start is ever touched. As root the
server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root);
without ``initdb`` on the machine the tests that need a cluster are skipped.
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
from collections.abc import Iterator, Mapping
from pathlib import Path


def _bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _run_as() -> str | None:
    """The OS user the server must run as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def available() -> str | None:
    """None when a private cluster can be made here, else why not (a skip reason)."""
    if _bin_dir() is None:
        return "no initdb on this machine"
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root without a 'postgres' OS user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One private server. ``start``/``stop``/``restart``/``kill`` act on it alone."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, available()
        self._bin = bin_dir
        self._user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="kongtask-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # a test cluster: durability across OS crashes is not tested
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._cmd(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as out:
            for name, value in self.settings.items():
                out.write(f"{name} = {value}\n")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self._bin / tool), *args]
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        return subprocess.run(argv, check=check, capture_output=True, text=True, cwd=self.root)

    def start(self) -> None:
        self._cmd(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._cmd(
            "pg_ctl",
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "log"),
            "restart",
        )

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, not a shutdown); its backends follow."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    """A started private cluster, destroyed on exit."""
    cluster = Cluster(settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
