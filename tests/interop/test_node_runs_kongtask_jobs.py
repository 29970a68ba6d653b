"""graphile-worker 0.17.3 works a schema kongtask installed, on jobs kongtask added."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .support import (
    GraphileWorker,
    count_recorded,
    create_record_table,
    ms,
    now_ms,
    recorded,
    wait_until,
)

pytestmark = pytest.mark.interop


async def migrations(conn: asyncpg.Connection, schema: str) -> list[tuple[Any, ...]]:
    """The rows graphile-worker reads (and would add to) when it decides whether to migrate."""
    rows = await conn.fetch(
        f"select id, ts, breaking from {quote_ident(schema)}.migrations order by id"
    )
    return [tuple(row) for row in rows]


def expect(job: Any, **overrides: Any) -> dict[str, Any]:
    """What a handler should be given for ``job``, as recorded (JS keeps milliseconds)."""
    seen = {
        "task_identifier": job.task_identifier,
        "payload": job.payload,
        "queue_name": job.queue_name,
        "priority": job.priority,
        "run_at": ms(job.run_at),
        "attempts": 1,
        "max_attempts": job.max_attempts,
        "key": job.key,
        "flags": sorted(job.flags) if job.flags is not None else None,
        "revision": job.revision,
    }
    seen.update(overrides)
    return seen


async def test_graphile_worker_runs_every_kind_of_kongtask_job(
    database_url: str, schema: str, conn: asyncpg.Connection, gw: GraphileWorker
) -> None:
    """Every add_job/add_jobs option reaches a Node handler as graphile-worker's own
    addJob would have put it, and Node starts on kongtask's schema without migrating."""
    now = now_ms()
    past = now - timedelta(minutes=5)
    later = now + timedelta(hours=1)
    expected: dict[int, dict[str, Any]] = {}
    async with WorkerUtils(database_url, schema=schema) as utils:
        assert (await utils.migrate()).installed
        before = await migrations(conn, schema)
        await create_record_table(conn, schema)

        plain = await utils.add_job("record")
        expected[plain.id] = expect(
            plain, payload={}, queue_name=None, priority=0, max_attempts=25, key=None, flags=None
        )
        full_payload = {"k": "full", "n": [1, 2.5, None, True], "s": 'ü ✓ "q"\n', "big": 2**53}
        full = await utils.add_job(
            "other",
            full_payload,
            queue_name="q-a",
            priority=3,
            max_attempts=7,
            flags=["f2", "f1"],
            run_at=past,
        )
        expected[full.id] = expect(
            full,
            task_identifier="other",
            payload=full_payload,
            queue_name="q-a",
            priority=3,
            max_attempts=7,
            flags=["f1", "f2"],
            run_at=past,
        )

        # job_key_mode="replace": everything, run_at included, comes from the second call.
        first = await utils.add_job(
            "record", {"k": "replace", "v": 1}, job_key="k-replace", run_at=later, priority=9
        )
        replaced = await utils.add_job(
            "record",
            {"k": "replace", "v": 2},
            job_key="k-replace",
            job_key_mode="replace",
            run_at=past + timedelta(seconds=1),
            priority=2,
        )
        assert replaced.id == first.id
        expected[replaced.id] = expect(
            replaced,
            payload={"k": "replace", "v": 2},
            priority=2,
            run_at=past + timedelta(seconds=1),
            key="k-replace",
            revision=1,
        )

        # "preserve_run_at": the new attributes but the old (due) run_at.
        await utils.add_job(
            "record",
            {"k": "preserve", "v": 1},
            job_key="k-preserve",
            run_at=past + timedelta(seconds=2),
        )
        preserved = await utils.add_job(
            "record",
            {"k": "preserve", "v": 2},
            job_key="k-preserve",
            job_key_mode="preserve_run_at",
            run_at=later,
            queue_name="q-b",
        )
        expected[preserved.id] = expect(
            preserved,
            payload={"k": "preserve", "v": 2},
            queue_name="q-b",
            run_at=past + timedelta(seconds=2),
            revision=1,
        )

        # "unsafe_dedupe": the existing job keeps its attributes; only its revision moves
        # (graphile-worker bumps it so that the upsert has a row to return).
        kept = await utils.add_job("record", {"k": "dedupe", "v": 1}, job_key="k-dedupe")
        again = await utils.add_job(
            "record",
            {"k": "dedupe", "v": 2},
            job_key="k-dedupe",
            job_key_mode="unsafe_dedupe",
            priority=5,
        )
        assert again.id == kept.id and again.revision == 1
        expected[kept.id] = expect(kept, payload={"k": "dedupe", "v": 1}, priority=0, revision=1)

        # Forbidden by the Node pool; first in line by priority, so it would have run.
        forbidden = await utils.add_job(
            "record", {"k": "forbidden"}, flags=["forbidden", "x"], priority=-10
        )
        scheduled_at = now + timedelta(seconds=1.5)
        scheduled = await utils.add_job("record", {"k": "scheduled"}, run_at=scheduled_at)
        expected[scheduled.id] = expect(scheduled, payload={"k": "scheduled"}, run_at=scheduled_at)

        batch = await utils.add_jobs(
            [
                JobSpec(
                    "record",
                    {"k": "batch-full"},
                    queue_name="q-a",
                    max_attempts=3,
                    job_key="k-batch",
                    priority=1,
                    flags=["b1"],
                    run_at=past,
                ),
                {"identifier": "other", "payload": {"k": "batch-dict"}},
            ]
        )
        for job in batch:
            expected[job.id] = expect(job)
        by_k = {job.payload["k"]: job for job in batch}
        assert expected[by_k["batch-full"].id]["flags"] == ["b1"]

        await utils.add_jobs(
            [
                JobSpec(
                    "record",
                    {"k": "batch-replace", "v": 1},
                    job_key="k-batch-replace",
                    run_at=later,
                )
            ]
        )
        [batch_replaced] = await utils.add_jobs(
            [
                JobSpec(
                    "record",
                    {"k": "batch-replace", "v": 2},
                    job_key="k-batch-replace",
                    run_at=past + timedelta(seconds=3),
                )
            ]
        )
        expected[batch_replaced.id] = expect(
            batch_replaced, run_at=past + timedelta(seconds=3), revision=1
        )
        await utils.add_jobs(
            [
                JobSpec(
                    "record",
                    {"k": "batch-preserve", "v": 1},
                    job_key="k-batch-preserve",
                    run_at=past + timedelta(seconds=4),
                )
            ]
        )
        [batch_preserved] = await utils.add_jobs(
            [
                JobSpec(
                    "record",
                    {"k": "batch-preserve", "v": 2},
                    job_key="k-batch-preserve",
                    run_at=later,
                )
            ],
            job_key_preserve_run_at=True,
        )
        expected[batch_preserved.id] = expect(
            batch_preserved,
            payload={"k": "batch-preserve", "v": 2},
            run_at=past + timedelta(seconds=4),
            revision=1,
        )

        pool = await gw.start_pool(
            schema, tasks=("record", "other"), concurrency=2, forbidden_flags=("forbidden",)
        )

        async def all_ran() -> bool:
            return await count_recorded(conn, schema) >= len(expected)

        await wait_until(all_ran, f"{len(expected)} jobs run by graphile-worker", watch=[pool])
        await pool.stop()

    rows = await recorded(conn, schema)
    assert sorted(row["job_id"] for row in rows) == sorted(expected), "each job ran once"
    for row in rows:
        assert row["runner"] == "node" and row["worker_id"] == pool.pool_id
        seen = {key: row[key] for key in expected[row["job_id"]]}
        if seen["flags"] is not None:
            seen["flags"] = sorted(seen["flags"])
        assert seen == expected[row["job_id"]], row["job_id"]
    scheduled_row = next(r for r in rows if r["job_id"] == scheduled.id)
    assert scheduled_row["started_at"] >= scheduled_at

    left = await conn.fetch(
        f"select id, attempts, locked_by from {quote_ident(schema)}._private_jobs"
    )
    assert [tuple(r) for r in left] == [(forbidden.id, 0, None)]
    assert await migrations(conn, schema) == before, "graphile-worker must not migrate"
