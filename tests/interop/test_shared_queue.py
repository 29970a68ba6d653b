"""A graphile-worker pool and a kongtask pool draining one queue at the same time."""

from __future__ import annotations

import time
from datetime import timedelta

import asyncpg
import pytest

import kongtask
from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .support import (
    RECORD_TABLE,
    GraphileWorker,
    count_recorded,
    create_record_table,
    jobs_left,
    now_ms,
    python_recorder,
    wait_until,
)

pytestmark = pytest.mark.interop

JOBS = 5_000
QUEUES = ("q0", "q1", "q2")


async def test_node_and_kongtask_pools_share_named_queues(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """Each job runs exactly once, each named queue stays serial and in order across
    the two implementations, and both of them take work.

    Order is (priority, run_at) in graphile-worker and (priority, run_at, id) in
    kongtask, so every job gets its own run_at, increasing with its id: then
    "in order" means the same thing to both sides. The start sequence comes from
    one identity column: a queue's next job can only start after the previous one
    completed, so within a queue the sequence must follow the job ids.
    """
    s = quote_ident(schema)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        node = await gw.start_pool(schema, name="node", concurrency=4, poll_interval_ms=50)
        runner = await kongtask.run(
            database_url,
            {"record": python_recorder(schema)},
            schema=schema,
            concurrency=4,
            poll_interval=0.05,
        )
        try:
            base = now_ms() - timedelta(hours=1)
            started = time.monotonic()
            await utils.add_jobs_count(
                [
                    JobSpec(
                        "record",
                        {"i": i},
                        queue_name=QUEUES[i % len(QUEUES)],
                        run_at=base + timedelta(milliseconds=i),
                    )
                    for i in range(JOBS)
                ]
            )

            async def drained() -> bool:
                return (
                    await count_recorded(conn, schema) >= JOBS
                    and await jobs_left(conn, schema) == 0
                )

            await wait_until(
                drained, f"{JOBS} jobs drained by both pools", timeout=60, watch=[node]
            )
            elapsed = time.monotonic() - started
        finally:
            await runner.stop()
            await node.stop()

    table = f"{s}.{quote_ident(RECORD_TABLE)}"
    per_job = await conn.fetch(
        f"select job_id, count(*) as runs, min((payload->>'i')::int) as i, max(attempts) as att "
        f"from {table} group by job_id"
    )
    assert len(per_job) == JOBS
    assert all(r["runs"] == 1 and r["att"] == 1 for r in per_job), "each job ran exactly once"
    assert sorted(r["i"] for r in per_job) == list(range(JOBS))

    for queue in QUEUES:
        started_ids = [
            r["job_id"]
            for r in await conn.fetch(
                f"select job_id from {table} where queue_name = $1 order by seq", queue
            )
        ]
        assert len(started_ids) == len(range(QUEUES.index(queue), JOBS, len(QUEUES)))
        assert started_ids == sorted(started_ids), f"{queue} ran out of order"

    by_runner = dict(
        await conn.fetch(f"select runner, count(*) from {table} group by runner order by runner")
    )
    assert set(by_runner) == {"kongtask", "node"}, by_runner
    assert by_runner["kongtask"] > 0 and by_runner["node"] > 0
    assert (
        await conn.fetchval(
            f"select count(*) from {s}._private_job_queues where locked_by is not null"
        )
        == 0
    )
    print(f"{JOBS} jobs in {elapsed:.1f}s; runs per side: {by_runner}")
