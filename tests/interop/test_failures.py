"""A failed job is left in the same state whichever implementation ran it."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.db import quote_ident

from .support import RECORD_TABLE, GraphileWorker, create_record_table, now_ms, python_recorder

pytestmark = pytest.mark.interop


def error_message(last_error: str, runner: str) -> str:
    """The part of ``last_error`` both implementations store.

    graphile-worker stores the error's message only. kongtask stores
    ``Type: message`` on the first line (the type is left out when the message
    already names it), then the last frames of the traceback. So the comparable
    part is kongtask's first line without its ``Type: `` prefix.
    """
    if runner == "node":
        return last_error
    first = last_error.splitlines()[0]
    kind, sep, message = first.partition(": ")
    assert sep and kind.isidentifier(), f"kongtask's first line is not 'Type: message': {first!r}"
    assert len(last_error.splitlines()) > 1, "kongtask adds a traceback after the first line"
    return message


async def run_failing(
    side: str,
    task: str,
    database_url: str,
    schema: str,
    gw: GraphileWorker,
) -> None:
    """Run every due ``task`` job once on ``side``; its handler records, then raises."""
    if side == "node":
        await gw.run_once(schema, tasks=(), fail_tasks=(task,))
        return
    record = python_recorder(schema)

    async def fail(payload: Any, helpers: kongtask.Helpers) -> None:
        await record(payload, helpers)
        raise RuntimeError(payload["error"])

    await kongtask.run_once(database_url, {task: fail}, schema=schema)


async def assert_failed_state(
    conn: asyncpg.Connection, schema: str, job_id: int, attempts: int, runner: str
) -> None:
    """attempts, last_error, payload, unlocked job and queue, and backoff ``exp(attempts)`` s
    after the failure: the failure happened between the recorded start of this
    attempt and now, so ``run_at - exp(attempts)`` must fall in that window."""
    s = quote_ident(schema)
    row = await conn.fetchrow(
        f"""select j.attempts, j.max_attempts, j.last_error, j.locked_by, j.payload::text,
                  q.locked_by as queue_locked_by,
                  j.run_at - exp(least(j.attempts, 10)) * interval '1 second' as failed_at,
                  (select max(started_at) from {s}.{quote_ident(RECORD_TABLE)} r
                   where r.job_id = j.id and r.attempts = $2 and r.runner = $3) as started_at,
                  now() as checked_at
           from {s}._private_jobs j join {s}._private_job_queues q on q.id = j.job_queue_id
           where j.id = $1""",
        job_id,
        attempts,
        runner,
    )
    assert row is not None, f"job {job_id} disappeared"
    assert row["started_at"] is not None, f"{runner} did not run attempt {attempts} of {job_id}"
    assert (row["attempts"], row["max_attempts"]) == (attempts, 5)
    assert (row["locked_by"], row["queue_locked_by"]) == (None, None)
    assert json.loads(row["payload"]) == {"error": f"boom {job_id}"}, "payload kept as it was"
    assert error_message(row["last_error"], runner) == f"boom {job_id}", row["last_error"]
    assert row["started_at"] <= row["failed_at"] <= row["checked_at"], dict(row)


async def test_failure_state_is_the_same_whichever_side_ran_it(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """Job A fails on kongtask, then on graphile-worker; job B the other way round.

    After each attempt: same ``attempts``, the same message in ``last_error``
    (kongtask prefixes ``Type: `` and appends a traceback, graphile-worker stores
    the bare message: see :func:`error_message`), job and named queue unlocked,
    and ``run_at = failure time + exp(attempts)`` seconds on both sides.
    """
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await create_record_table(conn, schema)
        a = await utils.add_job("fail_a", {}, queue_name="qa", max_attempts=5)
        b = await utils.add_job("fail_b", {}, queue_name="qb", max_attempts=5)
        s = quote_ident(schema)
        await conn.execute(
            f"update {s}._private_jobs set payload = json_build_object('error', 'boom ' || id)"
        )

        await run_failing("kongtask", "fail_a", database_url, schema, gw)
        await run_failing("node", "fail_b", database_url, schema, gw)
        await assert_failed_state(conn, schema, a.id, 1, "kongtask")
        await assert_failed_state(conn, schema, b.id, 1, "node")

        await utils.reschedule_jobs([a.id, b.id], run_at=now_ms())
        await run_failing("node", "fail_a", database_url, schema, gw)
        await run_failing("kongtask", "fail_b", database_url, schema, gw)
        await assert_failed_state(conn, schema, a.id, 2, "node")
        await assert_failed_state(conn, schema, b.id, 2, "kongtask")
