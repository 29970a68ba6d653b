"""A private PgBouncer in transaction pooling, started and stopped by the bench.

Fleets of worker hosts nearly always reach PostgreSQL through PgBouncer, so
the bench measures kongtask through one (``kongtask.benchmark.fleet``, and
``bench/connections.py``). It starts Debian's ``pgbouncer`` binary with a
config of its own in a temp folder (never the system service), in front of
the server the bench uses, and stops it afterwards.

Clients log in without a password (``auth_type = trust`` on 127.0.0.1 only);
PgBouncer logs in to the server with the bench's own credentials, so a
password, when there is one, is written into the temp config (mode 0600,
deleted at the end) and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

#: Where Debian's package puts the binary (``apt-get install pgbouncer``).
DEFAULT_BINARY = "/usr/sbin/pgbouncer"
#: The name clients give as their database: PgBouncer maps it to the real one.
ALIAS = "kongtask_bench"


@dataclass(frozen=True, slots=True)
class Bouncer:
    """A running PgBouncer: the DSN its clients use, and what it pools into."""

    port: int
    pool_size: int
    dsn: str
    pidfile: Path

    def pid(self) -> int | None:
        """PgBouncer's own process (under ``runuser`` when started as root), for its CPU."""
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return DEFAULT_BINARY if os.access(DEFAULT_BINARY, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(dsn: str) -> tuple[str, int, str, str, str | None]:
    """(host, port, database, user, password) of a ``postgresql://`` DSN; host and
    port default to libpq's (a Unix socket path is kept, PgBouncer takes it too)."""
    parts = urlsplit(dsn)
    query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    host = unquote(parts.hostname or query.get("host", "") or "/var/run/postgresql")
    port = parts.port or int(query.get("port", "5432"))
    database = unquote(parts.path.lstrip("/")) or "postgres"
    user = unquote(parts.username or query.get("user", "") or os.environ.get("PGUSER", "postgres"))
    password = parts.password or query.get("password") or os.environ.get("PGPASSWORD")
    return host, port, database, user, unquote(password) if password else None


def _quote(value: str) -> str:
    """A value of PgBouncer's ``[databases]`` connection string (libpq quoting)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.asynccontextmanager
async def pgbouncer(
    server_dsn: str,
    *,
    pool_size: int = 20,
    server_user: str | None = None,
    executable: str | None = None,
) -> AsyncIterator[Bouncer]:
    """A PgBouncer (``pool_mode = transaction``) in front of ``server_dsn``'s database.

    ``server_user`` makes PgBouncer log in as that role instead of the DSN's
    user, so its server connections can be counted apart in
    ``pg_stat_activity``. Raises RuntimeError when pgbouncer is missing or
    does not start.
    """
    program = executable or binary()
    if program is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    host, port, database, user, password = _server(server_dsn)
    target = f"host={_quote(host)} port={port} dbname={_quote(database)}"
    target += f" user={_quote(server_user or user)}"
    if password and server_user is None:
        target += f" password={_quote(password)}"
    workdir = Path(tempfile.mkdtemp(prefix="kongtask-bench-pgbouncer-"))
    listen = free_port()
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.touch(mode=0o600)
    ini.write_text(
        f"""[databases]
{ALIAS} = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_db_connections = {pool_size}
reserve_pool_size = 0
max_client_conn = 2000
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""
    )
    argv = [program, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        argv = ["runuser", "-u", "postgres", "--", *argv]
    dsn = f"postgresql://{user}@127.0.0.1:{listen}/{ALIAS}"
    with (workdir / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err
        )
    try:
        await _wait_accepting(proc, dsn, workdir)
        yield Bouncer(listen, pool_size, dsn, workdir / "pgbouncer.pid")
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((workdir / "pgbouncer.pid").read_text()), signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 30)
        shutil.rmtree(workdir, ignore_errors=True)


async def _wait_accepting(proc: asyncio.subprocess.Process, dsn: str, workdir: Path) -> None:
    """Until PgBouncer serves a query, or RuntimeError with its log when it exited."""
    for _ in range(300):
        if proc.returncode is not None:
            output = "".join(
                path.read_text(errors="replace")
                for path in (workdir / "stderr", workdir / "pgbouncer.log")
                if path.exists()
            )
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {output[-1000:]}")
        try:
            conn = await asyncpg.connect(dsn, statement_cache_size=0)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.1)
            continue
        try:
            await conn.execute("select 1")
        finally:
            await conn.close()
        return
    raise RuntimeError("pgbouncer did not accept connections within 30 s")
