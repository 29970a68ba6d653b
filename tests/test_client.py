"""The client: add_job options, job keys, bulk add, admin functions, cleanup, errors."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest

from kongtask import InvalidJobSpec, JobSpec, WorkerUtils, quick_add_job
from kongtask.db import quote_ident


async def _lock(conn: asyncpg.Connection, schema: str, job_id: int, *, age: str = "0") -> None:
    """Mark a job as held by some worker, optionally long ago."""
    await conn.execute(
        f"update {quote_ident(schema)}._private_jobs set locked_by = 'other', "
        "locked_at = now() - $2::text::interval where id = $1",
        job_id,
        age,
    )


async def test_add_job_defaults(utils: WorkerUtils) -> None:
    before = datetime.now(timezone.utc)
    job = await utils.add_job("send_email", {"to": "a@b.c"})
    assert job.task_identifier == "send_email"
    assert job.payload == {"to": "a@b.c"}
    assert job.queue_name is None and job.key is None and job.flags is None
    assert (job.attempts, job.max_attempts, job.priority, job.revision) == (0, 25, 0, 0)
    assert job.run_at >= before - timedelta(seconds=5)


async def test_add_job_every_option(utils: WorkerUtils) -> None:
    run_at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    job = await utils.add_job(
        "t",
        [1, "two", None],
        queue_name="mail",
        run_at=run_at,
        max_attempts=3,
        job_key="k1",
        priority=-5,
        flags=["slow", "eu"],
    )
    assert job.queue_name == "mail"
    assert job.run_at == run_at
    assert (job.max_attempts, job.priority, job.key) == (3, -5, "k1")
    assert sorted(job.flags) == ["eu", "slow"]
    assert job.payload == [1, "two", None]


async def test_naive_run_at_is_utc(utils: WorkerUtils) -> None:
    job = await utils.add_job("t", run_at=datetime(2030, 1, 1, 12, 0))
    assert job.run_at == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


async def test_job_key_replace_updates_pending_job(utils: WorkerUtils) -> None:
    first = await utils.add_job("t", {"v": 1}, job_key="k", run_at=datetime(2030, 1, 1))
    second = await utils.add_job("u", {"v": 2}, job_key="k", queue_name="q", priority=3)
    assert second.id == first.id
    assert second.revision == 1
    assert second.payload == {"v": 2} and second.task_identifier == "u"
    assert second.queue_name == "q" and second.priority == 3
    assert second.run_at < datetime(2030, 1, 1, tzinfo=timezone.utc)


async def test_job_key_preserve_run_at_keeps_schedule(utils: WorkerUtils) -> None:
    when = datetime(2031, 1, 1, tzinfo=timezone.utc)
    first = await utils.add_job("t", {"v": 1}, job_key="k", run_at=when)
    second = await utils.add_job(
        "t", {"v": 2}, job_key="k", job_key_mode="preserve_run_at", run_at=when + timedelta(days=1)
    )
    assert second.id == first.id and second.run_at == when and second.payload == {"v": 2}


async def test_job_key_unsafe_dedupe_keeps_existing(utils: WorkerUtils) -> None:
    first = await utils.add_job("t", {"v": 1}, job_key="k")
    second = await utils.add_job("t", {"v": 2}, job_key="k", job_key_mode="unsafe_dedupe")
    assert second.id == first.id
    assert second.payload == {"v": 1}
    assert second.revision == 1


async def test_job_key_matching_locked_job_creates_new_job(
    utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    first = await utils.add_job("t", {"v": 1}, job_key="k")
    await _lock(conn, schema, first.id)
    second = await utils.add_job("t", {"v": 2}, job_key="k")
    assert second.id != first.id and second.key == "k"
    [old] = await utils.get_jobs([first.id])
    assert old.key is None and old.attempts == old.max_attempts


async def test_array_payloads_merge_on_key_conflict(utils: WorkerUtils) -> None:
    await utils.add_job("batch", [1, 2], job_key="b")
    merged = await utils.add_job("batch", [3], job_key="b")
    assert merged.payload == [1, 2, 3]
    replaced = await utils.add_job("batch", {"x": 1}, job_key="b")
    assert replaced.payload == {"x": 1}


async def test_add_job_notifies_insert(utils: WorkerUtils, conn: asyncpg.Connection) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("jobs:insert", lambda *args: received.put_nowait(args[3]))
    await utils.add_job("t")
    await utils.add_jobs([JobSpec("t"), JobSpec("t"), JobSpec("t")])
    one = orjson.loads(await asyncio.wait_for(received.get(), 5))
    three = orjson.loads(await asyncio.wait_for(received.get(), 5))
    assert one["count"] == 1 and isinstance(one["r"], float)
    assert three["count"] == 3


async def test_add_jobs_bulk_with_options(utils: WorkerUtils) -> None:
    specs = [
        JobSpec(
            "bulk",
            {"i": i},
            queue_name="q" if i % 2 else None,
            priority=i % 3,
            flags=["f"] if i == 0 else None,
        )
        for i in range(1000)
    ]
    jobs = await utils.add_jobs(specs)
    assert len(jobs) == 1000
    by_i = {job.payload["i"]: job for job in jobs}
    assert set(by_i) == set(range(1000))
    assert by_i[1].queue_name == "q" and by_i[2].queue_name is None
    assert by_i[5].priority == 2 and by_i[0].flags == ["f"]


async def test_add_jobs_returns_the_stored_timestamps(utils: WorkerUtils) -> None:
    """created_at/updated_at travel as null when equal to the column before them;
    the returned jobs must still match the rows, for jobs due now, in the future,
    and updated by a job-key replace."""
    later = datetime(2031, 5, 1, tzinfo=timezone.utc)
    await utils.add_jobs([JobSpec("t", {"n": 0}, job_key="k")])
    jobs = await utils.add_jobs(
        [
            JobSpec("t", {"n": 1}),
            JobSpec("t", {"n": 2}, run_at=later),
            JobSpec("t", {"n": 3}, job_key="k", run_at=later),
        ]
    )
    stored = {job.id: job for job in await utils.get_jobs([job.id for job in jobs])}
    assert len(stored) == 3
    for job in jobs:
        row = stored[job.id]
        assert (job.run_at, job.created_at, job.updated_at) == (
            row.run_at,
            row.created_at,
            row.updated_at,
        )
    by_n = {job.payload["n"]: job for job in jobs}
    assert by_n[2].run_at == later != by_n[2].created_at
    assert by_n[3].updated_at > by_n[3].created_at  # the keyed job was replaced


async def test_add_jobs_accepts_dicts_and_preserve_run_at(utils: WorkerUtils) -> None:
    when = datetime(2032, 2, 29, tzinfo=timezone.utc)
    await utils.add_jobs([{"identifier": "d", "job_key": "a", "run_at": when}])
    [job] = await utils.add_jobs(
        [{"identifier": "d", "job_key": "a", "run_at": when + timedelta(days=3), "payload": 7}],
        job_key_preserve_run_at=True,
    )
    assert job.run_at == when and job.payload == 7


async def test_add_jobs_hundred_thousand(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    count = await utils.add_jobs_count([JobSpec("many", {"i": i}) for i in range(100_000)])
    assert count == 100_000
    assert await conn.fetchval(f"select count(*) from {quote_ident(schema)}.jobs") == 100_000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"identifier": ""}, "identifier"),
        ({"identifier": "x" * 129}, "identifier"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"job_key_mode": "sometimes", "job_key": "k"}, "job_key_mode"),
        ({"queue_name": "q" * 129}, "queue_name"),
        ({"job_key": "k" * 513}, "job_key"),
        ({"priority": 40000}, "priority"),
        ({"flags": "notalist"}, "flags"),
        ({"payload_value": {1, 2}}, "payload"),
    ],
)
async def test_bad_arguments_name_the_field(utils: WorkerUtils, kwargs: dict, field: str) -> None:
    args = {"identifier": "t", **kwargs}
    identifier = args.pop("identifier")
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_job(identifier, **args)
    assert info.value.field == field


async def test_bad_spec_in_bulk_names_its_index(utils: WorkerUtils) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_jobs([JobSpec("ok"), JobSpec("bad", max_attempts=0)])
    assert "specs[1]" in info.value.field and "max_attempts" in info.value.field


async def test_admin_functions_skip_fresh_locks_but_not_stale_ones(
    utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    jobs = [await utils.add_job("t", {"n": n}) for n in range(3)]
    fresh, stale, free = jobs
    await _lock(conn, schema, fresh.id)
    await _lock(conn, schema, stale.id, age="5 hours")
    done = await utils.complete_jobs([j.id for j in jobs])
    assert sorted(j.id for j in done) == sorted([stale.id, free.id])
    remaining = await utils.get_jobs([j.id for j in jobs])
    assert [j.id for j in remaining] == [fresh.id]


async def test_permanently_fail_and_reschedule(
    utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    a, b = await utils.add_job("t"), await utils.add_job("t")
    await _lock(conn, schema, b.id)
    [failed] = await utils.permanently_fail_jobs([a.id, b.id], "nope")
    assert failed.id == a.id and failed.last_error == "nope"
    assert failed.attempts == failed.max_attempts
    [default_reason] = await utils.permanently_fail_jobs([a.id])
    assert default_reason.last_error == "Manually marked as failed"
    when = datetime(2033, 3, 3, tzinfo=timezone.utc)
    [moved] = await utils.reschedule_jobs(
        [a.id, b.id], run_at=when, priority=4, attempts=0, max_attempts=9
    )
    assert moved.id == a.id
    assert (moved.run_at, moved.priority, moved.attempts, moved.max_attempts) == (when, 4, 0, 9)


async def test_remove_job_deletes_or_disables(
    utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    free = await utils.add_job("t", job_key="free")
    removed = await utils.remove_job("free")
    assert removed is not None and removed.id == free.id
    assert await utils.get_jobs([free.id]) == []
    busy = await utils.add_job("t", job_key="busy")
    await _lock(conn, schema, busy.id)
    disabled = await utils.remove_job("busy")
    assert disabled is not None and disabled.key is None
    assert disabled.attempts == disabled.max_attempts
    assert await utils.remove_job("absent") is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"run_at": "2033-03-03"}, "run_at"),
        ({"priority": 40000}, "priority"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": "3"}, "attempts"),  # used to escape as a TypeError
        ({"attempts": 1.5}, "attempts"),  # used to reach the database
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
async def test_reschedule_bad_arguments_name_the_field(
    utils: WorkerUtils, kwargs: dict[str, Any], field: str
) -> None:
    job = await utils.add_job("t")
    with pytest.raises(InvalidJobSpec) as info:
        await utils.reschedule_jobs([job.id], **kwargs)
    assert info.value.field == field
    [unchanged] = await utils.get_jobs([job.id])
    assert (unchanged.run_at, unchanged.attempts, unchanged.priority) == (job.run_at, 0, 0)


@pytest.mark.parametrize("key", ["", "k" * 513, "nul\x00", 5])
async def test_remove_job_bad_key_names_the_field(utils: WorkerUtils, key: Any) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        await utils.remove_job(key)
    assert info.value.field == "job_key"


async def test_force_unlock_workers(
    utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    job = await utils.add_job("t", queue_name="q")
    await _lock(conn, schema, job.id)
    await conn.execute(
        f"update {quote_ident(schema)}._private_job_queues "
        "set locked_by = 'other', locked_at = now()"
    )
    await utils.force_unlock_workers(["other"])
    [after] = await utils.get_jobs([job.id])
    assert after.locked_by is None and after.locked_at is None
    assert (
        await conn.fetchval(
            f"select count(*) from {quote_ident(schema)}._private_job_queues "
            "where locked_by is not null"
        )
        == 0
    )


async def test_cleanup_tasks(utils: WorkerUtils, schema: str, conn: asyncpg.Connection) -> None:
    s = quote_ident(schema)
    done = await utils.add_job("gone_task", queue_name="gone_queue")
    await utils.add_job("kept_task", queue_name="kept_queue")
    dead = await utils.add_job("dead_task", max_attempts=1)
    await utils.permanently_fail_jobs([dead.id])
    await utils.complete_jobs([done.id])
    await conn.execute(f"insert into {s}._private_tasks (identifier) values ('keep_me')")
    await utils.cleanup(
        ["DELETE_PERMAFAILED_JOBS", "GC_TASK_IDENTIFIERS", "GC_JOB_QUEUES"],
        task_identifiers_to_keep=["keep_me"],
    )
    assert await utils.get_jobs([dead.id]) == []
    tasks = {r[0] for r in await conn.fetch(f"select identifier from {s}._private_tasks")}
    queues = {r[0] for r in await conn.fetch(f"select queue_name from {s}._private_job_queues")}
    assert tasks == {"kept_task", "keep_me"}
    assert queues == {"kept_queue"}
    with pytest.raises(InvalidJobSpec, match="unknown cleanup task"):
        await utils.cleanup(["VACUUM_EVERYTHING"])  # type: ignore[list-item]


async def test_quick_add_job(database_url: str, utils: WorkerUtils) -> None:
    job = await quick_add_job(database_url, "quick", {"ok": True}, schema=utils.schema, priority=2)
    [stored] = await utils.get_jobs([job.id])
    assert stored.payload == {"ok": True} and stored.priority == 2


async def test_borrowed_pool_is_not_closed(database_url: str, utils: WorkerUtils) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with WorkerUtils(pool, schema=utils.schema) as borrowed:
            await borrowed.add_job("t")
        assert await pool.fetchval("select 1") == 1
    finally:
        await pool.close()
