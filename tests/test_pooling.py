"""Prepared statements and a transaction-pooling proxy (``kongtask.pooling``), on a direct
connection: the probe must not cry wolf, and a real "prepared statement ... does not
exist" met mid-run stops the pool with exit code 2 and one line. Through a real
PgBouncer: tests/faults/test_pgbouncer.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils, pooling


async def _missing_statement_error(conn: asyncpg.Connection) -> asyncpg.PostgresError:
    """What PostgreSQL itself raises for a prepared statement its session lacks."""
    with pytest.raises(asyncpg.InvalidSQLStatementNameError) as caught:
        await conn.execute("execute kongtask_no_such_statement")
    return caught.value


async def test_direct_connections_share_no_session(database_url: str) -> None:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database_url)

    assert await pooling.shares_sessions(connect) is False
    conn = await connect()
    try:
        assert await pooling.behind_proxy(conn) is False
        # One connection does see its own statement: the probe can say yes.
        assert await pooling._looks(conn, lambda: asyncio.sleep(0, conn)) is True
    finally:
        await conn.close()


async def test_mid_run_message_is_one_line_naming_the_option(conn: asyncpg.Connection) -> None:
    error = await _missing_statement_error(conn)
    assert pooling.is_pooler_error(error)
    message = pooling.mid_run_message(error)
    assert "\n" not in message
    assert "kongtask_no_such_statement" in message and "--no-prepared-statements" in message
    assert not pooling.is_pooler_error(asyncpg.UniqueViolationError("x"))


async def test_a_lost_prepared_statement_stops_the_pool_with_exit_code_2(
    database_url: str,
    utils: WorkerUtils,
    conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fetcher reports its first failure as ``worker:getJob:error``; one of a
    prepared statement lost to another session cannot heal by retrying."""
    caplog.set_level(logging.ERROR, logger="kongtask")

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        return None

    runner = await kongtask.run(database_url, {"t": handler}, schema=utils.schema)
    runner.events.emit("worker:getJob:error", {"error": await _missing_statement_error(conn)})
    assert await asyncio.wait_for(runner.wait(), 30) == pooling.EXIT_CODE
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "--no-prepared-statements" in lines[0], lines


async def test_other_fetch_errors_leave_the_pool_running(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    ran = asyncio.get_running_loop().create_future()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        if not ran.done():
            ran.set_result(payload)

    runner = await kongtask.run(database_url, {"t": handler}, schema=utils.schema)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError) as caught:
            await conn.execute("select 1 / 0")
        runner.events.emit("worker:getJob:error", {"error": caught.value})
        await utils.add_job("t", {"n": 1})
        assert await asyncio.wait_for(ran, 30) == {"n": 1}
    finally:
        await runner.stop()
    assert runner.exit_code == 0
