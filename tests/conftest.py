"""Shared fixtures: a real PostgreSQL, a fresh schema per test, uvloop.

The database is ``TEST_DATABASE_URL``, else the server on 127.0.0.1:5432,
else the embedded one (``pgserver``). Tests run in a database of their own
(``kongtask_test``) so they never touch anything else on the server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import uvloop

from kongtask import WorkerUtils
from kongtask.db import embedded_dsn, quote_ident

TEST_DB = "kongtask_test"


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Every async test runs on uvloop, as production does."""
    return {"uvloop": uvloop.new_event_loop}


def _local_server_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _server_dsn() -> str:
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        return explicit
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
    """DSN of the test database, created once per session."""
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
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"drop schema if exists {quote_ident(schema)} cascade")
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
