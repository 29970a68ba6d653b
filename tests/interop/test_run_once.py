"""``run --once`` / ``run_once()`` on jobs Node added: everything runnable runs,
serial queues included (the next job of a queue becomes runnable only when the
run itself unlocks the queue), as graphile-worker's ``runOnce`` does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.db import quote_ident

from ..conftest import spawn_kongtask
from .support import GraphileWorker, jobs_left, op

pytestmark = pytest.mark.interop

ONCE_TASKS = """
import os
from kongtask import TaskList

tasks = TaskList()
TABLE = os.environ["ONCE_TABLE"]

@tasks.task("record")
async def record(payload, helpers):
    job = helpers.job
    await helpers.with_pg_client(lambda conn: conn.execute(
        f"insert into {TABLE} (job_id, queue_name) values ($1, $2)", job.id, job.queue_name))
"""


async def _runs_table(conn: asyncpg.Connection, schema: str) -> str:
    table = f"{quote_ident(schema)}.once_runs"
    await conn.execute(
        f"create table {table} (seq bigserial primary key, job_id bigint, queue_name text)"
    )
    return table


async def _check_runs(conn: asyncpg.Connection, table: str, jobs: list[dict[str, Any]]) -> None:
    """Each job ran exactly once; each queue in (priority, run_at, id) order, the
    order in which a queue's jobs become its next job."""
    order = {int(j["id"]): (j["priority"], j["run_at"], int(j["id"])) for j in jobs}
    runs = await conn.fetch(f"select job_id, queue_name from {table} order by seq")
    assert sorted(r["job_id"] for r in runs) == sorted(order)
    for queue in {r["queue_name"] for r in runs if r["queue_name"] is not None}:
        in_queue = [r["job_id"] for r in runs if r["queue_name"] == queue]
        assert in_queue == sorted(in_queue, key=order.__getitem__), f"{queue} ran out of order"


async def test_cli_once_runs_all_of_nodes_mixture(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker, tmp_path: Path
) -> None:
    """The case from the issue: 100 addJob (odd ones in queue nq, priorities 0-2,
    the first 10 with job keys) and 200 addJobs; ``kongtask run --once`` runs all 300."""
    await gw.migrate(schema)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
    table = await _runs_table(conn, schema)
    ops: list[dict[str, Any]] = []
    for i in range(100):
        options: dict[str, Any] = {"priority": i % 3}
        if i % 2:
            options["queueName"] = "nq"
        if i < 10:
            options["jobKey"] = f"key-{i}"
        ops.append(op("addJob", "record", {"i": i}, options))
    ops.append(
        op("addJobs", [{"identifier": "record", "payload": {"i": 100 + i}} for i in range(200)])
    )
    results = await gw.add(schema, ops)
    jobs = [*results[:100], *results[100]]
    (tmp_path / "once_tasks.py").write_text(ONCE_TASKS)
    proc = await spawn_kongtask(
        "run",
        "-c",
        database_url,
        "-s",
        schema,
        "--tasks",
        str(tmp_path / "once_tasks.py"),
        "--once",
        env={"ONCE_TABLE": table},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert await jobs_left(conn, schema) == 0
    await _check_runs(conn, table, jobs)


async def test_run_once_runs_a_whole_named_queue_node_added(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    await gw.migrate(schema)
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
    table = await _runs_table(conn, schema)
    results = await gw.add(
        schema,
        [
            op(
                "addJobs",
                [
                    {"identifier": "record", "payload": {"i": i}, "queueName": "serial"}
                    for i in range(50)
                ],
            ),
            op("addJobs", [{"identifier": "record", "payload": {"i": i}} for i in range(50)]),
        ],
    )
    jobs = [job for batch in results for job in batch]

    async def record(payload: Any, helpers: kongtask.Helpers) -> None:
        job = helpers.job
        await helpers.with_pg_client(
            lambda c: c.execute(
                f"insert into {table} (job_id, queue_name) values ($1, $2)", job.id, job.queue_name
            )
        )

    assert await kongtask.run_once(database_url, {"record": record}, schema=schema) == 0
    assert await jobs_left(conn, schema) == 0
    await _check_runs(conn, table, jobs)
