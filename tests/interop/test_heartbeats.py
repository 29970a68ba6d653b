"""kongtask's heartbeat recovery frees only kongtask pools, never graphile-worker's."""

from __future__ import annotations

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.db import quote_ident

from .support import (
    GraphileWorker,
    count_recorded,
    create_record_table,
    python_recorder,
    wait_until,
)

pytestmark = pytest.mark.interop

DEAD_WORKER = "kongtask-dead"


async def test_dead_worker_recovery_leaves_graphile_worker_locks_alone(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """A Node pool never heartbeats (it does not know the table), so kongtask must
    not take its silence for death. A silent *kongtask* worker holding another
    job proves the sweep really ran: once that job is freed, the same statement
    has looked at the Node pool's job too, and must have left it locked."""
    s = quote_ident(schema)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        node_job = await utils.add_job("block", {"n": "node"}, queue_name="qn")
        node = await gw.start_pool(schema, tasks=(), block_tasks=("block",))

        async def node_started() -> bool:
            return await count_recorded(conn, schema) == 1

        await wait_until(node_started, "the Node pool to start its job", watch=[node])
        dead_job = await utils.add_job("record", {"n": "dead"}, queue_name="qd")
        await conn.execute(
            f"insert into {s}._kongtask_workers (worker_id, last_seen) "
            "values ($1, now() - interval '1 hour')",
            DEAD_WORKER,
        )
        await conn.execute(
            f"with j as (update {s}._private_jobs set locked_by = $2, locked_at = now(), "
            "attempts = 1 where id = $1 returning job_queue_id) "
            f"update {s}._private_job_queues q set locked_by = $2, locked_at = now() "
            "from j where q.id = j.job_queue_id",
            dead_job.id,
            DEAD_WORKER,
        )
        runner = await kongtask.run(
            database_url,
            {"record": python_recorder(schema)},
            schema=schema,
            heartbeat_interval=0.05,
            dead_worker_timeout=0.2,
            poll_interval=0.2,
        )
        try:

            async def dead_job_rerun() -> bool:
                return await count_recorded(conn, schema) == 2

            await wait_until(
                dead_job_rerun, "kongtask to recover the dead worker's job", watch=[node]
            )
            row = await conn.fetchrow(
                f"select j.locked_by, j.last_error, q.locked_by as queue_locked_by "
                f"from {s}._private_jobs j join {s}._private_job_queues q "
                "on q.id = j.job_queue_id where j.id = $1",
                node_job.id,
            )
            assert row is not None
            assert (row["locked_by"], row["queue_locked_by"], row["last_error"]) == (
                node.pool_id,
                node.pool_id,
                None,
            )
            node.assert_alive()
        finally:
            await runner.stop()
            await node.kill()
