"""kongtask works a schema graphile-worker 0.17.3 installed, on jobs Node added."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils
from kongtask.db import quote_ident
from kongtask.migrate import LATEST_MIGRATION

from ..catalog import describe_schema
from .support import (
    KONGTASK_ONLY,
    GraphileWorker,
    count_recorded,
    create_record_table,
    from_js,
    iso,
    ms,
    now_ms,
    op,
    python_recorder,
    recorded,
    split_kongtask_only,
    wait_until,
)
from .test_node_runs_kongtask_jobs import migrations

pytestmark = pytest.mark.interop


def seen_by_handler(
    node_job: dict[str, Any],
    identifier: str,
    payload: Any,
    *,
    queue_name: str | None = None,
    priority: int = 0,
    max_attempts: int = 25,
    key: str | None = None,
    flags: list[str] | None = None,
    run_at: datetime | None = None,
) -> dict[str, Any]:
    """What the kongtask handler should record for a job Node's addJob returned."""
    return {
        "task_identifier": identifier,
        "payload": payload,
        "queue_name": queue_name,
        "priority": priority,
        "run_at": run_at or from_js(node_job["run_at"]),
        "attempts": 1,
        "max_attempts": max_attempts,
        "key": key,
        "flags": sorted(flags) if flags is not None else None,
        "revision": node_job["revision"],
    }


async def test_kongtask_runs_jobs_from_add_job_add_jobs_and_quick_add_job(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """graphile-worker's migration is complete for kongtask (its migrate installs
    nothing of graphile-worker's and writes no ``migrations`` row), and every option
    of Node's three ways to add a job reaches a kongtask handler intact."""
    await gw.migrate(schema)
    before = await migrations(conn, schema)
    catalog_before = await describe_schema(conn, schema)
    async with WorkerUtils(database_url, schema=schema) as utils:
        result = await utils.migrate()
    assert (result.installed, result.version) == (False, LATEST_MIGRATION)
    assert await migrations(conn, schema) == before
    # kongtask adds its own track (heartbeats); graphile-worker's objects stay as they were.
    shared, added = split_kongtask_only(await describe_schema(conn, schema))
    assert shared == catalog_before
    assert added == KONGTASK_ONLY
    await create_record_table(conn, schema)

    now = now_ms()
    past = now - timedelta(minutes=5)
    later = now + timedelta(hours=1)
    scheduled_at = now + timedelta(seconds=2)
    full_payload = {"k": "full", "n": [1, 2.5, None, True], "s": 'ü ✓ "q"\n', "big": 2**53}
    results = await gw.add(
        schema,
        [
            op("addJob", "record"),
            op(
                "addJob",
                "other",
                full_payload,
                {
                    "queueName": "q-a",
                    "priority": 3,
                    "maxAttempts": 7,
                    "flags": ["f2", "f1"],
                    "runAt": iso(past),
                },
            ),
            op(
                "addJob",
                "record",
                {"k": "replace", "v": 1},
                {"jobKey": "k-replace", "runAt": iso(later), "priority": 9},
            ),
            op(
                "addJob",
                "record",
                {"k": "replace", "v": 2},
                {
                    "jobKey": "k-replace",
                    "jobKeyMode": "replace",
                    "priority": 2,
                    "runAt": iso(past + timedelta(seconds=1)),
                },
            ),
            op(
                "addJob",
                "record",
                {"k": "preserve", "v": 1},
                {"jobKey": "k-preserve", "runAt": iso(past + timedelta(seconds=2))},
            ),
            op(
                "addJob",
                "record",
                {"k": "preserve", "v": 2},
                {
                    "jobKey": "k-preserve",
                    "jobKeyMode": "preserve_run_at",
                    "runAt": iso(later),
                    "queueName": "q-b",
                },
            ),
            op("addJob", "record", {"k": "dedupe", "v": 1}, {"jobKey": "k-dedupe"}),
            op(
                "addJob",
                "record",
                {"k": "dedupe", "v": 2},
                {"jobKey": "k-dedupe", "jobKeyMode": "unsafe_dedupe", "priority": 5},
            ),
            op(
                "addJob",
                "record",
                {"k": "forbidden"},
                {"flags": ["forbidden", "x"], "priority": -10},
            ),
            op("addJob", "record", {"k": "scheduled"}, {"runAt": iso(scheduled_at)}),
            op(
                "addJobs",
                [
                    {
                        "identifier": "record",
                        "payload": {"k": "batch-full"},
                        "queueName": "q-a",
                        "maxAttempts": 3,
                        "jobKey": "k-batch",
                        "priority": 1,
                        "flags": ["b1"],
                        "runAt": iso(past),
                    },
                    {"identifier": "other", "payload": {"k": "batch-plain"}},
                ],
            ),
            op(
                "addJobs",
                [
                    {
                        "identifier": "record",
                        "payload": {"k": "batch-preserve", "v": 1},
                        "jobKey": "k-bp",
                        "runAt": iso(past + timedelta(seconds=3)),
                    }
                ],
            ),
            op(
                "addJobs",
                [
                    {
                        "identifier": "record",
                        "payload": {"k": "batch-preserve", "v": 2},
                        "jobKey": "k-bp",
                        "runAt": iso(later),
                    }
                ],
                True,
            ),
            op(
                "quickAddJob",
                "record",
                {"k": "quick"},
                {
                    "queueName": "q-c",
                    "priority": 4,
                    "maxAttempts": 2,
                    "jobKey": "k-quick",
                    "flags": ["qf"],
                    "runAt": iso(past + timedelta(seconds=4)),
                },
            ),
        ],
    )
    (
        plain,
        full,
        _,
        replaced,
        _,
        preserved,
        _,
        deduped,
        forbidden,
        scheduled,
        (batch_full, batch_plain),
        _,
        (batch_preserved,),
        quick,
    ) = results
    assert replaced["id"] == results[2]["id"] and deduped["id"] == results[6]["id"]
    expected = {
        plain["id"]: seen_by_handler(plain, "record", {}),
        full["id"]: seen_by_handler(
            full,
            "other",
            full_payload,
            queue_name="q-a",
            priority=3,
            max_attempts=7,
            flags=["f1", "f2"],
            run_at=past,
        ),
        replaced["id"]: seen_by_handler(
            replaced,
            "record",
            {"k": "replace", "v": 2},
            priority=2,
            key="k-replace",
            run_at=past + timedelta(seconds=1),
        ),
        preserved["id"]: seen_by_handler(
            preserved,
            "record",
            {"k": "preserve", "v": 2},
            queue_name="q-b",
            key="k-preserve",
            run_at=past + timedelta(seconds=2),
        ),
        deduped["id"]: seen_by_handler(deduped, "record", {"k": "dedupe", "v": 1}, key="k-dedupe"),
        scheduled["id"]: seen_by_handler(
            scheduled, "record", {"k": "scheduled"}, run_at=scheduled_at
        ),
        batch_full["id"]: seen_by_handler(
            batch_full,
            "record",
            {"k": "batch-full"},
            queue_name="q-a",
            max_attempts=3,
            key="k-batch",
            priority=1,
            flags=["b1"],
            run_at=past,
        ),
        batch_plain["id"]: seen_by_handler(batch_plain, "other", {"k": "batch-plain"}),
        batch_preserved["id"]: seen_by_handler(
            batch_preserved,
            "record",
            {"k": "batch-preserve", "v": 2},
            key="k-bp",
            run_at=past + timedelta(seconds=3),
        ),
        quick["id"]: seen_by_handler(
            quick,
            "record",
            {"k": "quick"},
            queue_name="q-c",
            priority=4,
            max_attempts=2,
            key="k-quick",
            flags=["qf"],
            run_at=past + timedelta(seconds=4),
        ),
    }
    assert (replaced["revision"], preserved["revision"], deduped["revision"]) == (1, 1, 1)

    record = python_recorder(schema)
    runner = await kongtask.run(
        database_url,
        {"record": record, "other": record},
        schema=schema,
        concurrency=2,
        poll_interval=0.2,
        forbidden_flags=["forbidden"],
    )
    try:

        async def all_ran() -> bool:
            return await count_recorded(conn, schema) >= len(expected)

        await wait_until(all_ran, f"{len(expected)} Node-added jobs run by kongtask")
    finally:
        await runner.stop()

    rows = await recorded(conn, schema)
    assert sorted(row["job_id"] for row in rows) == sorted(int(i) for i in expected)
    for row in rows:
        assert row["runner"] == "kongtask" and row["worker_id"] == runner.worker_id
        want = expected[str(row["job_id"])]
        seen = {key: row[key] for key in want}
        seen["run_at"] = ms(seen["run_at"])  # Node reported run_at as a JS Date
        if seen["flags"] is not None:
            seen["flags"] = sorted(seen["flags"])
        assert seen == want, row["job_id"]
    scheduled_row = next(r for r in rows if str(r["job_id"]) == scheduled["id"])
    assert scheduled_row["started_at"] >= scheduled_at

    left = await conn.fetch(
        f"select id, attempts, locked_by from {quote_ident(schema)}._private_jobs"
    )
    assert [tuple(r) for r in left] == [(int(forbidden["id"]), 0, None)]
