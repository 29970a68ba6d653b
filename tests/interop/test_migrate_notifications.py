"""``worker:migrate`` is shared by every schema of a database: neither side's
migration of a *new* schema may stop the other side's pools on another schema.

kongtask sends nothing on a fresh install. graphile-worker sends its migrations
1-19 (several of them breaking), which stop graphile-worker pools elsewhere in
the database but must not stop kongtask pools: kongtask only stops for a
breaking migration newer than the 19 it understands.
"""

from __future__ import annotations

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils

from ..conftest import drop_schema, new_schema_name
from .support import (
    GraphileWorker,
    count_recorded,
    create_record_table,
    python_recorder,
    wait_until,
)

pytestmark = pytest.mark.interop


async def test_kongtask_install_of_another_schema_leaves_graphile_worker_running(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """Notifications reach the LISTEN connection in commit order, so a job added
    after the other schema's install is seen after any ``worker:migrate`` it sent:
    the Node pool running that job, then exiting 0 (not 57), shows there was none."""
    other = new_schema_name("kt_other")
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        node = await gw.start_pool(schema)
        try:
            async with WorkerUtils(database_url, schema=other) as other_utils:
                assert (await other_utils.migrate()).installed
            await utils.add_job("record", {"after": "install"})

            async def ran() -> bool:
                return await count_recorded(conn, schema) == 1

            await wait_until(
                ran, "the Node pool to run a job added after the install", watch=[node]
            )
            await node.stop()
        finally:
            await drop_schema(database_url, other)


async def test_graphile_worker_install_of_another_schema_leaves_kongtask_running(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    other = new_schema_name("gw_other")
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        runner = await kongtask.run(
            database_url, {"record": python_recorder(schema)}, schema=schema, poll_interval=30
        )
        try:
            await gw.migrate(other)
            await utils.add_job("record", {"after": "install"})

            async def ran() -> bool:
                return await count_recorded(conn, schema) == 1

            await wait_until(ran, "kongtask to run a job added after graphile-worker's install")
        finally:
            await runner.stop()
            await drop_schema(database_url, other)
    assert runner.exit_code == 0
