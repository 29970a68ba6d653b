"""Leases against a real database: plain jobs stay locked by their fetch transaction.

What must hold: while leased, a job is invisible to every other fetcher yet
unclaimed (nothing written); success deletes it, failure records attempt,
message and backoff; a job still running at the deadline is claimed the
classic way; a crash frees leased jobs at once; keyed and queued jobs are
never leased; and with ``lease_time=0`` everything is claimed at fetch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import JobSpec, WorkerUtils
from kongtask._core import twins
from kongtask.db import quote_ident
from kongtask.leases import LeaseKeeper, decode_timestamps_as_micros

from .conftest import spawn_kongtask
from .test_reliability import SLOW_TASKS
from .test_worker import Recorder, _jobs, _locked_rows


async def _count(conn: asyncpg.Connection, schema: str) -> int:
    return await conn.fetchval(f"select count(*) from {quote_ident(schema)}._private_jobs")


async def _count_is(conn: asyncpg.Connection, schema: str, n: int) -> bool:
    return await _count(conn, schema) == n


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Poll the database until ``check()`` holds (state changes there send no event)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _visible_to_a_skip_locked_fetch(conn: asyncpg.Connection, schema: str) -> list[int]:
    """What graphile-worker's fetch (and any other) could take right now."""
    async with conn.transaction():
        rows = await conn.fetch(
            f"select id from {quote_ident(schema)}._private_jobs "
            "where is_available = true for update skip locked"
        )
    return [row["id"] for row in rows]


class Holding:
    """A task that records each job it starts, then waits until released."""

    def __init__(self) -> None:
        self.started = Recorder()
        self.release = asyncio.Event()

    async def __call__(self, payload: Any, helpers: kongtask.Helpers) -> None:
        self.started.record(helpers.job)
        await self.release.wait()


async def test_leased_job_is_locked_but_unclaimed_then_deleted(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    hold = Holding()
    await utils.add_job("hold", {"n": 1})
    runner = await kongtask.run(database_url, {"hold": hold}, schema=utils.schema, lease_time=30)
    try:
        await hold.started.wait_for(1)
        [job] = hold.started.calls
        # The handler sees the job as it will be once claimed ...
        assert (job.attempts, job.locked_by) == (1, runner.worker_id)
        # ... while the row is untouched, and locked against every other fetcher.
        [row] = await _jobs(conn, utils.schema)
        assert (row["attempts"], row["locked_by"]) == (0, None)
        assert await _visible_to_a_skip_locked_fetch(conn, utils.schema) == []
        hold.release.set()
        # The lease settles right after its last job.
        await _until(lambda: _count_is(conn, utils.schema, 0), "the lease to settle")
    finally:
        await runner.stop()
    assert await _locked_rows(conn, utils.schema) == 0


async def test_failure_in_a_lease_counts_the_attempt_and_backs_off(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    rec = Recorder()

    async def boom(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record(helpers.job.attempts)
        raise RuntimeError("nope")

    await utils.add_jobs([JobSpec("boom", {"i": i}) for i in range(3)])
    before = await conn.fetchval("select now()")
    await kongtask.run_once(database_url, {"boom": boom}, schema=utils.schema)
    after = await conn.fetchval("select now()")
    rows = await _jobs(conn, utils.schema)
    assert rec.calls == [1, 1, 1]
    for row in rows:
        assert (row["attempts"], row["locked_by"]) == (1, None)
        assert row["last_error"].startswith("RuntimeError: nope")
        delay = math.exp(1)
        assert before.timestamp() + delay - 1 <= row["run_at"].timestamp()
        assert row["run_at"].timestamp() <= after.timestamp() + delay + 1


async def test_job_running_past_the_deadline_is_claimed(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    hold = Holding()
    await utils.add_jobs([JobSpec("hold", {"i": i}) for i in range(2)])
    runner = await kongtask.run(
        database_url, {"hold": hold}, schema=utils.schema, lease_time=0.05, concurrency=2
    )
    try:
        await hold.started.wait_for(2)

        async def claimed() -> bool:
            rows = await _jobs(conn, utils.schema)
            return all(r["locked_by"] == runner.worker_id for r in rows)

        await _until(claimed, "the deadline (50 ms after the fetch) to claim the jobs")
        rows = await _jobs(conn, utils.schema)
        assert [r["attempts"] for r in rows] == [1, 1]
        hold.release.set()
        await _until(lambda: _count_is(conn, utils.schema, 0), "the jobs to finish")
    finally:
        await runner.stop()
    assert await _locked_rows(conn, utils.schema) == 0


async def test_mixed_lease_deletes_exactly_its_successes(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """Successes are deleted by row address: with failures and running jobs in
    the same lease (the path that maps ids to addresses), and a job this worker
    cannot run beside them, exactly the succeeded rows go."""
    hold = Holding()

    async def mixed(payload: Any, helpers: kongtask.Helpers) -> None:
        if payload["do"] == "fail":
            raise RuntimeError("planned")
        if payload["do"] == "hold":
            await hold(payload, helpers)

    plan = ["ok", "fail", "hold", "ok", "fail", "hold", "ok"]
    added = await utils.add_jobs([JobSpec("mixed", {"do": do}) for do in plan])
    [other] = await utils.add_jobs([JobSpec("not_ours", {})])
    by_id = {job.id: do for job, do in zip(added, plan, strict=True)}
    runner = await kongtask.run(
        database_url, {"mixed": mixed}, schema=utils.schema, lease_time=0.2, concurrency=7
    )
    try:
        await hold.started.wait_for(2)

        async def settled() -> bool:
            rows = await _jobs(conn, utils.schema)
            return len(rows) == 5 and all(
                r["locked_by"] == runner.worker_id for r in rows if by_id.get(r["id"]) == "hold"
            )

        await _until(settled, "the deadline to settle the lease")
        rows = {r["id"]: r for r in await _jobs(conn, utils.schema)}
        kinds = sorted(by_id.get(i, "other") for i in rows)
        assert kinds == ["fail", "fail", "hold", "hold", "other"]
        for job_id, row in rows.items():
            kind = by_id.get(job_id, "other")
            if kind == "fail":
                assert (row["attempts"], row["locked_by"]) == (1, None)
                assert row["last_error"].startswith("RuntimeError: planned")
            elif kind == "hold":
                assert (row["attempts"], row["locked_by"]) == (1, runner.worker_id)
            else:
                assert job_id == other.id
                assert (row["attempts"], row["locked_by"]) == (0, None)
        hold.release.set()
        await _until(lambda: _count_is(conn, utils.schema, 3), "the held jobs to complete")
    finally:
        await runner.stop()
    assert await _locked_rows(conn, utils.schema) == 0


async def test_keyed_and_queued_jobs_are_claimed_at_fetch(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    hold = Holding()
    await utils.add_job("hold", {"kind": "keyed"}, job_key="k")
    await utils.add_job("hold", {"kind": "queued"}, queue_name="q")
    await utils.add_job("hold", {"kind": "plain"})
    runner = await kongtask.run(database_url, {"hold": hold}, schema=utils.schema, lease_time=30)
    try:
        await hold.started.wait_for(3)
        rows = {
            row["kind"]: row
            for row in await conn.fetch(
                f"select payload->>'kind' as kind, locked_by, attempts "
                f"from {quote_ident(utils.schema)}._private_jobs"
            )
        }
        assert (rows["keyed"]["locked_by"], rows["keyed"]["attempts"]) == (runner.worker_id, 1)
        assert (rows["queued"]["locked_by"], rows["queued"]["attempts"]) == (runner.worker_id, 1)
        assert (rows["plain"]["locked_by"], rows["plain"]["attempts"]) == (None, 0)
        hold.release.set()
    finally:
        await runner.stop()
    assert await _count(conn, utils.schema) == 0


async def test_lease_time_zero_claims_everything_at_fetch(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    hold = Holding()
    await utils.add_job("hold", {})
    runner = await kongtask.run(database_url, {"hold": hold}, schema=utils.schema, lease_time=0)
    try:
        await hold.started.wait_for(1)
        [row] = await _jobs(conn, utils.schema)
        assert (row["attempts"], row["locked_by"]) == (1, runner.worker_id)
        hold.release.set()
    finally:
        await runner.stop()
    assert await _count(conn, utils.schema) == 0


async def test_sigkilled_worker_frees_its_leased_jobs_at_once(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "slow_tasks.py").write_text(SLOW_TASKS)
    job = await utils.add_job("slow", {})
    proc = await spawn_kongtask(
        "run",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "--tasks",
        str(tmp_path / "slow_tasks.py"),
        "--lease-time",
        "60000",
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.split() == [b"STARTED", str(job.id).encode()]
    assert await _visible_to_a_skip_locked_fetch(conn, utils.schema) == []
    proc.kill()
    await proc.wait()

    # The server notices the closed connection and rolls the lease back: the job
    # is free for the next fetcher without heartbeats or the 4-hour sweep.
    async def free_again() -> bool:
        return await _visible_to_a_skip_locked_fetch(conn, utils.schema) == [job.id]

    await _until(free_again, "the rolled-back lease to free the job", timeout=10)
    [row] = await _jobs(conn, utils.schema)
    assert (row["attempts"], row["locked_by"], row["last_error"]) == (0, None, None)


async def test_lost_lease_connection_loses_no_job(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """Kill the backends of leases mid-batch: the jobs come back and all run."""
    n = 400
    seen: list[int] = []
    first_batch = asyncio.Event()
    release = asyncio.Event()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        seen.append(payload["i"])
        first_batch.set()
        await release.wait()

    await utils.add_jobs([JobSpec("h", {"i": i}) for i in range(n)])
    runner = await kongtask.run(
        database_url, {"h": handler}, schema=utils.schema, concurrency=20, lease_time=30
    )
    try:
        await asyncio.wait_for(first_batch.wait(), 20)
        killed = await conn.fetchval(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = current_database() and state = 'idle in transaction' "
            "and pid <> pg_backend_pid()) as t"
        )
        assert killed >= 1
        release.set()
        await _until(lambda: _count_is(conn, utils.schema, 0), "every job to run", timeout=60)
    finally:
        await runner.stop()
    assert set(seen) == set(range(n))  # every job ran (some twice: at-least-once)
    assert await _locked_rows(conn, utils.schema) == 0


async def test_lazy_timestamps_equal_asyncpg_datetimes(conn: asyncpg.Connection) -> None:
    """The fetch connections' microseconds become exactly asyncpg's datetimes."""
    query = (
        "select unnest(array['2000-01-01 00:00:00+00', '1999-12-31 23:59:59.999999+00', "
        "'2026-12-03 08:10:33.335123+01', '0001-01-01 00:00:00+00', "
        "'9999-12-31 23:59:59.999999+00', 'infinity', '-infinity']::timestamptz[])"
    )
    expected = [row[0] for row in await conn.fetch(query)]
    await decode_timestamps_as_micros(conn)  # as the fetch connections do
    try:
        micros = [row[0] for row in await conn.fetch(query)]
    finally:
        await conn.reset_type_codec("timestamptz", schema="pg_catalog")
    for modules in twins().values():
        assert [modules["decode"].pg_timestamp(m) for m in micros] == expected


async def test_pools_too_small_for_the_fetch_connections_are_refused(
    database_url: str, utils: WorkerUtils
) -> None:
    async def noop(payload: Any, helpers: kongtask.Helpers) -> None:
        return None

    with pytest.raises(kongtask.ConfigError, match="max_pool_size: must be >= 5"):
        await kongtask.run(database_url, {"t": noop}, schema=utils.schema, max_pool_size=4)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        with pytest.raises(kongtask.ConfigError, match="the given pool's max_size: must be >= 5"):
            await kongtask.run(pool, {"t": noop}, schema=utils.schema)
    finally:
        await pool.close()


async def test_jobs_stepped_over_while_locked_elsewhere_still_run(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """A lease fetch resumes after the last job its pool leased; rows it stepped
    over because another transaction held them must be found again later (by
    the periodic full scan while busy, or the poll once idle: a rollback sends
    no notification)."""
    n = 3000
    await utils.add_jobs([JobSpec("r", {"i": i}) for i in range(n)])
    s = quote_ident(utils.schema)
    seen: set[int] = set()
    all_free_seen = asyncio.Event()
    all_seen = asyncio.Event()

    async def record(payload: Any, helpers: kongtask.Helpers) -> None:
        seen.add(payload["i"])
        if len(seen) == n - 50:
            all_free_seen.set()
        if len(seen) == n:
            all_seen.set()

    blocker = await asyncpg.connect(database_url)
    try:
        # Another client holds the first 50 jobs while the pool drains the rest.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f"select id from {s}._private_jobs order by id limit 50 for update")
        runner = await kongtask.run(
            database_url,
            {"r": record},
            schema=utils.schema,
            concurrency=8,
            local_queue_size=200,
            poll_interval=0.3,
        )
        try:
            await asyncio.wait_for(all_free_seen.wait(), 20)
            assert len(seen) == n - 50  # the held ones were stepped over
            await tx.rollback()
            await asyncio.wait_for(all_seen.wait(), 20)
        finally:
            await runner.stop()
    finally:
        await blocker.close()
    assert await _count(conn, utils.schema) == 0


async def test_leased_job_timestamps_are_the_rows(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """Leased rows send created_at/updated_at only when they differ (a null means
    "as the previous column"); the handler must see the row's own values."""
    s = quote_ident(utils.schema)
    await utils.add_job("t", {"n": "now"})
    await utils.add_job("t", {"n": "past"}, run_at=datetime(2020, 5, 1, tzinfo=timezone.utc))
    await utils.add_job("t", {"n": "touched"})
    await conn.execute(
        f"update {s}._private_jobs set updated_at = updated_at + interval '1 second' "
        "where payload->>'n' = 'touched'"
    )
    expected = {
        row["n"]: (row["run_at"], row["created_at"], row["updated_at"])
        for row in await conn.fetch(
            f"select payload->>'n' as n, run_at, created_at, updated_at from {s}._private_jobs"
        )
    }
    seen: dict[str, tuple[Any, Any, Any]] = {}

    async def record(payload: Any, helpers: kongtask.Helpers) -> None:
        job = helpers.job
        seen[payload["n"]] = (job.run_at, job.created_at, job.updated_at)

    await kongtask.run_once(database_url, {"t": record}, schema=utils.schema)
    assert seen == expected


async def test_settle_all_returns_once_every_settle_has_ended() -> None:
    """A settle that has ended leaves the keeper's set only in a later loop turn,
    and since Python 3.12 gathering finished tasks gives the loop none: waiting
    until the set is empty spun for ever (a hang of ``runner.stop()`` on 3.13)."""
    keeper = LeaseKeeper.__new__(LeaseKeeper)
    keeper.open = set()
    ended = asyncio.get_running_loop().create_future()
    ended.set_result(None)
    keeper._settling = {ended}  # type: ignore[assignment]  # ended, not yet removed
    await asyncio.wait_for(keeper.settle_all(), 5)
