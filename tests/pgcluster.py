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
        """Start the server; a refusal raises with the server's own log lines."""
        done = self._cmd(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(self.log().splitlines()[-15:])
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr}\n{tail}")

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
        """SIGKILL the postmaster and every backend at once: a server crash.

        Killing the postmaster alone is not enough: a backend busy in a query
        notices its parent's death only at its next wait, and while any backend
        lives the new postmaster refuses the old shared memory ("pre-existing
        shared memory block is still in use"), so ``start`` would fail at random.
        """
        pid = self.pid()
        if pid is None:
            return
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, 9)
        # Gone means reaped, not only dead: pg_ctl and the new postmaster take
        # a zombie's pid for a running server. The reaper is whoever adopted the
        # orphans (PID 1 here, which can take a second or two).
        deadline = time.monotonic() + 30
        for victim in victims:
            while time.monotonic() < deadline and _exists(victim):
                time.sleep(0.02)
        if _exists(pid):
            # Never reaped: clear the lock file as an operator would after a crash.
            with contextlib.suppress(FileNotFoundError):
                (self.data / "postmaster.pid").unlink()

    def log(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _children_of(parent: int) -> list[int]:
    """The live processes whose parent is ``parent`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _exists(pid: int) -> bool:
    """True while ``pid`` is in the process table, a zombie included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def private_cluster(settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    """A started private cluster, destroyed on exit."""
    cluster = Cluster(settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
