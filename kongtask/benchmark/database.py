"""The benchmark's own database and schemas, and what the server is configured with.

The bench never writes to the user's database: it connects to the server the
DSN names, creates ``kongtask_bench`` there if needed, and works in fresh
schemas named after the run, dropped at the end. Identifiers are quoted with
:func:`kongtask.db.quote_ident`; every value is a bind parameter.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import asyncpg

from kongtask import WorkerUtils
from kongtask.db import connect, quote_ident
from kongtask.errors import ConfigError

from .common import bulk_insert_sql, payload_insert_sql

DEFAULT_DATABASE = "kongtask_bench"

#: Server settings recorded with every result: the ones that move queue throughput.
SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "work_mem",
    "effective_cache_size",
    "autovacuum",
    "jit",
)


def _require_url(dsn: str) -> None:
    if dsn and not dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError(
            "connection: the bench needs a postgresql:// URL (it derives the DSN of its "
            "own database from it); key=value DSNs are not supported"
        )


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    _require_url(dsn)
    if not dsn:
        # libpq variables describe the server; only the database changes.
        return "postgresql:///" + database
    parts = urlsplit(dsn)
    query = _drop_query_keys(parts.query, ("dbname", "database"))
    return urlunsplit(parts._replace(path="/" + database, query=query))


def _drop_query_keys(query: str, keys: tuple[str, ...]) -> str:
    """``query`` without ``keys``, other pieces kept byte for byte (no re-encoding)."""
    kept = [
        piece for piece in query.split("&") if piece and piece.split("=", 1)[0].lower() not in keys
    ]
    return "&".join(kept)


def split_password(dsn: str) -> tuple[str, str | None]:
    """``(dsn without its password, the password)``.

    Children get the password in ``PGPASSWORD`` (read by asyncpg and by
    node-postgres alike), so it never appears on a command line that other
    users of the machine can read in ``ps``.
    """
    _require_url(dsn)
    if not dsn:
        return dsn, None
    parts = urlsplit(dsn)
    password: str | None = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, secret = userinfo.split(":", 1)
            password = unquote(secret) or None
            netloc = f"{user}@{host}" if user else host
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "password":
            password = password or value or None
    query = _drop_query_keys(parts.query, ("password",))
    return urlunsplit(parts._replace(netloc=netloc, query=query)), password


async def ensure_database(server_dsn: str, database: str) -> None:
    """Create the bench database on the server unless it exists."""
    conn = await connect(server_dsn or None)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", database)
        if not exists:
            try:
                await conn.execute(f"create database {quote_ident(database)}")
            except asyncpg.DuplicateDatabaseError:
                pass  # created meanwhile by another run
            except asyncpg.InsufficientPrivilegeError as exc:
                raise ConfigError(
                    f"database: {database!r} does not exist and this role may not create it "
                    f"({exc}); create it once, or pass --database NAME of one you own"
                ) from None
    finally:
        await conn.close()


async def server_info(dsn: str) -> dict[str, Any]:
    """PostgreSQL version and the settings in :data:`SETTINGS`."""
    conn = await connect(dsn or None)
    try:
        version = await conn.fetchval("select version()")
        rows = await conn.fetch(
            "select name, current_setting(name, true) as value from unnest($1::text[]) as name",
            list(SETTINGS),
        )
        return {
            "version": version,
            "server_version": await conn.fetchval("select current_setting('server_version')"),
            "settings": {row["name"]: row["value"] for row in rows},
        }
    finally:
        await conn.close()


async def round_trips(dsn: str, idle_s: float, samples: int) -> dict[str, float | None]:
    """How fast this server answers, hot and after the machine sat idle.

    On virtual machines an idle vCPU (and disk) can take tens of milliseconds
    to wake; anything measured right after a pause (the first scheduled job,
    the first job after a quiet spell) pays that, whatever the queue does.
    ``txid_current()`` is a write: it also pays the WAL flush of a commit.
    """
    import time

    from .common import median

    conn = await connect(dsn or None)
    try:
        await conn.fetchval("select 1")
        hot = []
        for _ in range(20):
            t = time.perf_counter()
            await conn.fetchval("select 1")
            hot.append((time.perf_counter() - t) * 1000)
        idle_read, idle_write = [], []
        for _ in range(samples):
            await asyncio.sleep(idle_s)
            t = time.perf_counter()
            await conn.fetchval("select 1")
            idle_read.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(idle_s)
            t = time.perf_counter()
            await conn.fetchval("select txid_current()")
            idle_write.append((time.perf_counter() - t) * 1000)
    finally:
        await conn.close()

    def r(values: list[float]) -> float | None:
        m = median(values)
        return None if m is None else round(m, 3)

    return {
        "select_1_ms": r(hot),
        f"select_1_after_{idle_s:g}s_idle_ms": r(idle_read),
        f"commit_after_{idle_s:g}s_idle_ms": r(idle_write),
    }


async def create_schemas(dsn: str, schemas: list[str]) -> None:
    """Migrate each schema with kongtask (the same schema graphile-worker 0.17 makes)."""
    for schema in schemas:
        async with WorkerUtils(dsn, schema=schema, max_pool_size=1) as utils:
            await utils.migrate()


async def drop_schemas(dsn: str, schemas: list[str]) -> None:
    conn = await connect(dsn or None)
    try:
        for schema in schemas:
            await conn.execute(f"drop schema if exists {quote_ident(schema)} cascade")
    finally:
        await conn.close()


#: Errors after which the harness reconnects: the server restarted or dropped us.
_LOST = (
    OSError,
    ConnectionError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)
#: How long the harness waits for a restarting server before giving up.
RECONNECT_S = 60.0


class Admin:
    """The harness's own connection to the bench database: untimed housekeeping.

    On a shared machine the server may restart under a long run; every call
    then reconnects (for up to a minute) instead of losing the whole run.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self.checkpoint_ok: bool | None = None

    async def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RECONNECT_S
            while True:
                try:
                    self._conn = await connect(self.dsn or None)
                    break
                except _LOST:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(1.0)
        return self._conn

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        """``conn.<method>(sql, *args)``, retried once on a fresh connection if it was lost."""
        for attempt in (1, 2):
            conn = await self.conn()
            try:
                return await getattr(conn, method)(sql, *args)
            except _LOST:
                conn.terminate()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def count_jobs(self, schema: str) -> int:
        sql = f"select count(*) from {quote_ident(schema)}._private_jobs"
        return int(await self._call("fetchval", sql))

    async def clear(self, schema: str) -> None:
        """Empty the jobs table, so dead rows of one run do not feed autovacuum in the next."""
        await self._call("execute", f"truncate {quote_ident(schema)}._private_jobs")

    async def checkpoint(self) -> None:
        """Start each run with a fresh WAL budget, so no run pays for the previous
        one's checkpoint. Needs superuser or ``pg_checkpoint``; skipped otherwise."""
        if self.checkpoint_ok is False:
            return
        try:
            await self._call("execute", "checkpoint")
        except asyncpg.InsufficientPrivilegeError:
            self.checkpoint_ok = False
        else:
            self.checkpoint_ok = True

    async def insert_jobs(self, schema: str, task: str, n: int, analyze: bool) -> None:
        """The untimed bulk insert of bench.js (payload ``{"i": 1..n}``), then ANALYZE."""
        s = quote_ident(schema)
        await self._call("fetchval", bulk_insert_sql(s), task, n)
        if analyze:
            await self._call("execute", f"analyze {s}._private_jobs")

    async def fill(self, schema: str, task: str, n: int, payload: str | None = None) -> None:
        """A fresh queue of ``n`` jobs as a deployment would find it after a quiet spell:
        truncated, filled, then ``VACUUM ANALYZE`` (statistics for the planner and a
        visibility map, so no engine meets a half-vacuumed table). ``payload``, a JSON
        object text, is merged into every job's ``{"i": ...}`` (see payload_insert_sql)."""
        await self.clear(schema)
        if payload is None:
            await self.insert_jobs(schema, task, n, analyze=False)
        else:
            s = quote_ident(schema)
            await self._call("fetchval", payload_insert_sql(s), task, n, payload)
        await self._call("execute", f"vacuum analyze {quote_ident(schema)}._private_jobs")

    async def count_locked(self, schema: str) -> int:
        """Jobs and named queues still locked by some worker."""
        s = quote_ident(schema)
        sql = (
            f"select (select count(*) from {s}._private_jobs where locked_at is not null)"
            f" + (select count(*) from {s}._private_job_queues where locked_at is not null)"
        )
        return int(await self._call("fetchval", sql))

    async def backend_pid(self) -> int:
        """The server process serving this connection (its CPU is the harness's own cost)."""
        return int(await self._call("fetchval", "select pg_backend_pid()"))

    async def server_identity(self) -> dict[str, Any]:
        """What tells this server's postmaster apart from any other on the machine."""
        row = await self._call(
            "fetchrow",
            "select current_setting('port')::int as port, pg_backend_pid() as backend_pid,"
            " extract(epoch from pg_postmaster_start_time())::float8 as started",
        )
        try:
            data_directory = await self._call("fetchval", "show data_directory")
        except asyncpg.InsufficientPrivilegeError:
            data_directory = None
        return {**dict(row), "data_directory": data_directory}

    async def wait_for_empty(self, schema: str, deadline: float, poll: float) -> None:
        loop = asyncio.get_running_loop()
        while await self.count_jobs(schema) != 0:
            if loop.time() > deadline:
                raise TimeoutError("jobs table never emptied")
            await asyncio.sleep(poll)


#: Everything a database step of the harness may raise that should fail that
#: step only (the server went away, a statement failed, a wait timed out).
ERRORS: tuple[type[BaseException], ...] = (
    *_LOST,
    asyncpg.PostgresError,
    TimeoutError,
    asyncio.TimeoutError,
)
