"""The admin functions cross over: what one side changes, the other reads and finishes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.db import quote_ident

from .support import (
    GraphileWorker,
    count_recorded,
    create_record_table,
    from_js,
    iso,
    now_ms,
    op,
    python_recorder,
    recorded,
    wait_until,
)

pytestmark = pytest.mark.interop


async def job_row(conn: asyncpg.Connection, schema: str, job_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"select j.*, q.locked_by as queue_locked_by from {quote_ident(schema)}._private_jobs j "
        f"left join {quote_ident(schema)}._private_job_queues q on q.id = j.job_queue_id "
        "where j.id = $1",
        job_id,
    )


async def test_python_reschedules_then_node_completes_and_fails(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    when = now_ms() + timedelta(hours=2)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        done = await utils.add_job("t", {"n": "done"})
        failed = await utils.add_job("t", {"n": "failed"}, queue_name="q")
        untouched = await utils.add_job("t", {"n": "untouched"})
        rescheduled = await utils.reschedule_jobs(
            [done.id, failed.id], run_at=when, priority=4, attempts=3, max_attempts=9
        )
    assert sorted(j.id for j in rescheduled) == [done.id, failed.id]

    completed, permafailed = await gw.admin(
        schema,
        [
            op("completeJobs", [str(done.id)]),
            op("permanentlyFailJobs", [str(failed.id)], "given up from Node"),
        ],
    )
    # Node read back what Python's reschedule wrote.
    [c] = completed
    assert (c["id"], c["priority"], c["attempts"], c["max_attempts"]) == (str(done.id), 4, 3, 9)
    assert from_js(c["run_at"]) == when
    [p] = permafailed
    assert (p["id"], p["attempts"], p["max_attempts"]) == (str(failed.id), 9, 9)
    assert p["last_error"] == "given up from Node"

    assert await job_row(conn, schema, done.id) is None
    row = await job_row(conn, schema, failed.id)
    assert row is not None
    assert (row["attempts"], row["max_attempts"], row["last_error"], row["priority"]) == (
        9,
        9,
        "given up from Node",
        4,
    )
    assert row["run_at"] == when and row["is_available"] is False
    other = await job_row(conn, schema, untouched.id)
    assert other is not None and (other["attempts"], other["priority"]) == (0, 0)


async def test_node_reschedules_then_python_completes_and_fails(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    when = now_ms() + timedelta(hours=2)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        done = await utils.add_job("t", {"n": "done"}, queue_name="q")
        failed = await utils.add_job("t", {"n": "failed"})
        [rescheduled] = await gw.admin(
            schema,
            [
                op(
                    "rescheduleJobs",
                    [str(done.id), str(failed.id)],
                    {"runAt": iso(when), "priority": 4, "attempts": 2, "maxAttempts": 9},
                ),
            ],
        )
        assert sorted(int(j["id"]) for j in rescheduled) == [done.id, failed.id]
        assert all(
            (j["priority"], j["attempts"], j["max_attempts"]) == (4, 2, 9) for j in rescheduled
        )

        # Python reads back what Node's reschedule wrote.
        [c] = await utils.complete_jobs([done.id])
        assert (c.id, c.priority, c.attempts, c.max_attempts, c.run_at, c.queue_name) == (
            done.id,
            4,
            2,
            9,
            when,
            "q",
        )
        [p] = await utils.permanently_fail_jobs([failed.id], "given up from Python")
        assert (p.id, p.attempts, p.max_attempts, p.last_error) == (
            failed.id,
            9,
            9,
            "given up from Python",
        )
    assert await job_row(conn, schema, done.id) is None
    row = await job_row(conn, schema, failed.id)
    assert row is not None and row["attempts"] == row["max_attempts"] == 9
    assert row["run_at"] == when and row["last_error"] == "given up from Python"


async def test_python_force_unlocks_a_dead_node_pool(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """A Node pool dies (SIGKILL) inside a job: its pool id is in ``locked_by``; the
    admin functions leave the locked job alone; kongtask's ``force_unlock_workers``
    frees job and queue, and a kongtask pool then runs the job (second attempt)."""
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        job = await utils.add_job("block", {"n": 1}, queue_name="qb")
        node = await gw.start_pool(schema, tasks=(), block_tasks=("block",))

        async def started() -> bool:
            return await count_recorded(conn, schema) == 1

        await wait_until(started, "the Node pool to start the blocking job", watch=[node])
        row = await job_row(conn, schema, job.id)
        assert row is not None
        assert row["locked_by"] == row["queue_locked_by"] == node.pool_id
        assert await utils.complete_jobs([job.id]) == []
        assert await utils.permanently_fail_jobs([job.id]) == []
        assert await utils.reschedule_jobs([job.id], priority=1) == []

        await node.kill()
        row = await job_row(conn, schema, job.id)
        assert row is not None and row["locked_by"] == node.pool_id, "a dead pool keeps its locks"
        await utils.force_unlock_workers([node.pool_id])
        row = await job_row(conn, schema, job.id)
        assert row is not None
        assert (row["locked_by"], row["locked_at"], row["queue_locked_by"]) == (None, None, None)
        assert row["attempts"] == 1

        async def ran_again() -> bool:
            return await count_recorded(conn, schema) == 2

        runner = await kongtask.run(
            database_url, {"block": python_recorder(schema)}, schema=schema, poll_interval=0.2
        )
        try:
            await wait_until(ran_again, "kongtask to run the unlocked job")
        finally:
            await runner.stop()
    runs = [(r["runner"], r["attempts"], r["worker_id"]) for r in await recorded(conn, schema)]
    assert runs == [("node", 1, node.pool_id), ("kongtask", 2, runner.worker_id)]
    assert await job_row(conn, schema, job.id) is None


async def test_node_force_unlocks_a_stuck_kongtask_worker(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """The reverse: a kongtask worker hangs in a job; Node's ``forceUnlockWorkers`` with
    the id from ``locked_by`` frees job and queue, and a Node pool then runs it.

    The hung kongtask pool is told (by a forbidden-flags callable) not to fetch the
    job again once unlocked, so that only the Node pool can take it.
    """
    release = asyncio.Event()
    hold_off: list[str] = []
    record = python_recorder(schema)

    async def hang(payload: Any, helpers: kongtask.Helpers) -> None:
        await record(payload, helpers)
        hold_off.append("stuck")
        await release.wait()

    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        job = await utils.add_job("block", {"n": 1}, queue_name="qb", flags=["stuck"])
        runner = await kongtask.run(
            database_url,
            {"block": hang},
            schema=schema,
            poll_interval=0.2,
            forbidden_flags=lambda: hold_off,
        )
        try:

            async def started() -> bool:
                return await count_recorded(conn, schema) == 1

            await wait_until(started, "kongtask to start the hanging job")
            row = await job_row(conn, schema, job.id)
            assert row is not None
            assert row["locked_by"] == row["queue_locked_by"] == runner.worker_id
            none_done = await gw.admin(
                schema,
                [
                    op("completeJobs", [str(job.id)]),
                    op("forceUnlockWorkers", [runner.worker_id]),
                ],
            )
            assert none_done == [[], None], "Node's completeJobs must skip the locked job"
            row = await job_row(conn, schema, job.id)
            assert row is not None
            assert (row["locked_by"], row["locked_at"], row["queue_locked_by"]) == (
                None,
                None,
                None,
            )

            node = await gw.start_pool(schema, tasks=("block",))

            async def ran_again() -> bool:
                return await count_recorded(conn, schema) == 2

            await wait_until(ran_again, "the Node pool to run the unlocked job", watch=[node])
            await node.stop()
        finally:
            release.set()
            await runner.stop()
    runs = [(r["runner"], r["attempts"], r["worker_id"]) for r in await recorded(conn, schema)]
    assert runs == [("kongtask", 1, runner.worker_id), ("node", 2, node.pool_id)]
    # The stuck worker finishing late must not resurrect or fail anything.
    assert await job_row(conn, schema, job.id) is None
