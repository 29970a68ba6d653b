"""Helpers of the dashboard tests: shaping jobs into each state, reading pages."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from kongtask import WorkerUtils
from kongtask.db import quote_ident

#: Columns a test may set directly on a job row (so the SQL below stays fixed).
_SETTABLE = ("attempts", "max_attempts", "run_at", "locked_at", "locked_by", "last_error")


async def shape_job(conn: asyncpg.Connection, schema: str, job_id: int, **columns: Any) -> None:
    """Put a job into a state by setting its columns; intervals as text (``"-5 min"``)
    for the time columns are taken relative to the database's clock."""
    sets = []
    args: list[Any] = [job_id]
    for name, value in columns.items():
        assert name in _SETTABLE, name
        args.append(value)
        if name in ("run_at", "locked_at") and isinstance(value, str):
            sets.append(f"{name} = now() + ${len(args)}::text::interval")
        else:
            sets.append(f"{name} = ${len(args)}")
    await conn.execute(
        f"update {quote_ident(schema)}._private_jobs set {', '.join(sets)} where id = $1", *args
    )


async def heartbeat(
    conn: asyncpg.Connection, schema: str, worker_id: str, *, silent: str = "0 s"
) -> None:
    """A heartbeat row for ``worker_id`` whose last beat was ``silent`` ago."""
    await conn.execute(
        f"insert into {quote_ident(schema)}._kongtask_workers (worker_id, hostname, pid, "
        "last_seen) values ($1, 'host-a', 4242, now() - $2::text::interval)",
        worker_id,
        silent,
    )


async def job_row(conn: asyncpg.Connection, schema: str, job_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"select * from {quote_ident(schema)}._private_jobs where id = $1", job_id
    )


@dataclass(frozen=True)
class Queue:
    """The test's migrated schema: a client, a raw connection, and shortcuts."""

    utils: WorkerUtils
    conn: asyncpg.Connection
    schema: str

    async def shape(self, job_id: int, **columns: Any) -> None:
        await shape_job(self.conn, self.schema, job_id, **columns)

    async def heartbeat(self, worker_id: str, *, silent: str = "0 s") -> None:
        await heartbeat(self.conn, self.schema, worker_id, silent=silent)

    async def row(self, job_id: int) -> asyncpg.Record | None:
        return await job_row(self.conn, self.schema, job_id)


async def add_counted(conn: asyncpg.Connection, schema: str, specs: list[Any]) -> None:
    """Add jobs on ``conn`` and wait until PostgreSQL's statistics count them.

    A backend reports its row counts some seconds after it goes idle; asking
    it to flush at once makes the row estimate (and the throughput counters)
    the dashboard reads exact for what was added here.
    """
    await WorkerUtils(conn, schema=schema).add_jobs(specs)
    await conn.execute("select pg_stat_force_next_flush()")
    table = f"{quote_ident(schema)}._private_jobs"
    enough = "select pg_stat_get_live_tuples($1::text::regclass) >= $2"
    await until(lambda: conn.fetchval(enough, table, len(specs)), "the statistics to count them")


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


async def until(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 30) -> Any:
    """``check()``'s first truthy result, re-asked every 50 ms for up to ``seconds``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    result = await check()
    while not result:
        if loop.time() > give_up:
            raise AssertionError(f"gave up waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.05)
        result = await check()
    return result


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in this loop; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await until(lambda: _started(server, task), "uvicorn to start", 20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _started(server: Any, task: asyncio.Task[Any]) -> bool:
    if task.done():
        task.result()  # raises what stopped it
    return bool(server.started)
