"""Shared fixtures: a real PostgreSQL, a fresh schema per test, uvloop.

The database is the one ``TEST_DATABASE_URL`` names, used as it is. Without it,
the tests make a database of their own (``kongtask_test``) on the server at
127.0.0.1:5432, else on the embedded one (``pgserver``). Each test works in a
schema of its own, dropped afterwards. Nothing here restarts, reconfigures or
fills a server: tests that must do that start a private cluster
(``tests/pgcluster.py``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import uvloop

from kongtask import WorkerUtils
from kongtask.db import quote_ident
from kongtask.embedded import embedded_dsn

TEST_DB = "kongtask_test"


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Every async test runs on uvloop, as production does."""
    return {"uvloop": uvloop.new_event_loop}


#: Seconds an async test may run before it fails. pytest-timeout's signal
#: method never fires under uvloop (the alarm's exception does not reach a
#: loop blocked in libuv), so a hung test would hang the whole suite.
TEST_DEADLINE = float(os.environ.get("KONGTASK_TEST_DEADLINE", "240"))


def _dump_tasks() -> str:
    """Every task's stack on the test's loop: where a hung test was waiting."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=out)
        awaited: Any = task.get_coro()
        while awaited is not None:  # down the chain of awaits, outermost first
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=out)
            else:
                print(f"  {awaited!r}", file=out)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return out.getvalue()


def _with_deadline(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The test, failed with every task's stack once TEST_DEADLINE passes."""

    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        stacks: list[str] = []

        def expire() -> None:
            stacks.append(_dump_tasks())
            current.cancel()

        timer = loop.call_later(TEST_DEADLINE, expire)
        try:
            return await test(*args, **kwargs)
        except asyncio.CancelledError:
            if not stacks:
                raise
            raise TimeoutError(
                f"test did not finish within {TEST_DEADLINE:.0f}s; tasks at that moment:\n"
                + stacks[0]
            ) from None
        finally:
            timer.cancel()

    return guarded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(test):
            item.obj = _with_deadline(test)  # type: ignore[attr-defined]


def _local_server_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _server_dsn() -> str:
    """The server to make ``kongtask_test`` on when no TEST_DATABASE_URL is given."""
    if _local_server_answers():
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    return embedded_dsn()


def _with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """DSN of the test database: TEST_DATABASE_URL's, else ``kongtask_test``, made once."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    server = _server_dsn()

    async def create() -> None:
        conn = await asyncpg.connect(server)
        try:
            exists = await conn.fetchval("select 1 from pg_database where datname = $1", TEST_DB)
            if not exists:
                try:
                    await conn.execute(f"create database {quote_ident(TEST_DB)}")
                except asyncpg.DuplicateDatabaseError:
                    pass
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_database(server, TEST_DB)


def new_schema_name(prefix: str = "kt") -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test's schema; a session still holding its locks is a leak, named loudly.

    Without the lock timeout a connection left idle in a transaction (a lease
    nobody settled) would block the drop, and with it the whole suite, forever.
    """
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": "20s"})
    drop = f"drop schema if exists {quote_ident(schema)} cascade"
    try:
        try:
            await conn.execute(drop)
            return
        except asyncpg.LockNotAvailableError:
            holders = await conn.fetch(
                "select a.pid, a.state, a.application_name, left(a.query, 200) as query"
                " from pg_stat_activity a where a.datname = current_database()"
                " and a.pid <> pg_backend_pid()"
                " and a.pid in (select l.pid from pg_locks l where l.granted)"
            )
            await conn.execute(
                "select pg_terminate_backend(pid) from unnest($1::int[]) as pid",
                [row["pid"] for row in holders],
            )
            await conn.execute(drop)
        raise AssertionError(
            f"schema {schema} was still locked after its test; sessions holding locks: "
            + "; ".join(str(dict(row)) for row in holders)
        )
    finally:
        await conn.close()


async def spawn_kongtask(
    *args: str,
    env: dict[str, str] | None = None,
    stderr: int | None = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """``python -m kongtask ARGS`` as a real subprocess, stdout piped, for CLI tests."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kongtask",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A schema name unique to this test; dropped afterwards."""
    name = new_schema_name()
    yield name
    await drop_schema(database_url, name)


@pytest.fixture
async def utils(database_url: str, schema: str) -> AsyncIterator[WorkerUtils]:
    """WorkerUtils on a freshly migrated schema."""
    async with WorkerUtils(database_url, schema=schema) as u:
        await u.migrate()
        yield u


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection for assertions written in SQL."""
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()
