"""Recovery of dead pools' jobs, and the fence of a pool cut off from its database.

docs/guarantees.md, claim mode: a dead pool's jobs are freed with an attempt
counted and a backoff, at once when a pool starts on the same host, and a live
pool that cannot reach the database stops its jobs before anyone may free them.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import WorkerUtils, liveness
from kongtask.db import quote_ident
from kongtask.outcomes import FENCE_MESSAGE

from . import pgcluster
from .conftest import spawn_kongtask
from .test_reliability import SLOW_TASKS
from .test_worker import Recorder


async def _job_row(conn: asyncpg.Connection, schema: str, job_id: int) -> Any:
    return await conn.fetchrow(
        f"select locked_by, attempts, last_error, run_at from {quote_ident(schema)}._private_jobs "
        "where id = $1",
        job_id,
    )


async def _held_by(conn: asyncpg.Connection, schema: str, holders: dict[int, str]) -> None:
    """Lock each job as a pool would have claimed it: by that worker id, attempt counted."""
    for job_id, worker_id in holders.items():
        await conn.execute(
            f"update {quote_ident(schema)}._private_jobs set locked_by = $2, locked_at = now(), "
            "attempts = 1 where id = $1",
            job_id,
            worker_id,
        )


async def test_a_pool_starting_on_the_same_host_frees_a_dead_pools_jobs_at_once(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A worker killed with SIGKILL, then a pool started with the default
    heartbeat settings (dead after 30 s): the job is free when the new pool is
    ready, its attempt counted and a backoff applied, as after any failure."""
    (tmp_path / "slow_tasks.py").write_text(SLOW_TASKS)
    job = await utils.add_job("slow", {"n": 1})
    proc = await spawn_kongtask(
        "run",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "--tasks",
        str(tmp_path / "slow_tasks.py"),
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.split() == [b"STARTED", str(job.id).encode()]
    proc.kill()
    await proc.wait()
    held = await _job_row(conn, utils.schema, job.id)
    assert held["locked_by"] is not None and held["attempts"] == 1

    async def slow(payload: Any, helpers: kongtask.Helpers) -> None:
        raise AssertionError("backing off: must not run yet")

    before = datetime.now(timezone.utc)
    runner = await kongtask.run(database_url, {"slow": slow}, schema=utils.schema)
    try:
        freed = await _job_row(conn, utils.schema, job.id)
    finally:
        await runner.stop()
    assert freed["locked_by"] is None and freed["attempts"] == 1
    assert "died while holding this job (its process is gone)" in freed["last_error"]
    assert freed["run_at"] > before  # e**1 seconds of backoff, as for a failure


async def test_pools_elsewhere_are_left_to_their_heartbeats(
    utils: WorkerUtils, conn: asyncpg.Connection, database_url: str
) -> None:
    """A row from another host (or another pid namespace) whose pid happens to be
    free here must not be judged by this host's /proc; a row from this host
    whose pid now runs a different process is dead."""
    s = quote_ident(utils.schema)
    elsewhere = await utils.add_job("t", {"n": 1})
    reused = await utils.add_job("t", {"n": 2})
    own_host, own_pid, own_start = liveness.own_identity()
    assert own_host is not None and own_start is not None
    await conn.execute(
        f"insert into {s}._kongtask_workers (worker_id, hostname, pid, host_key, process_start) "
        "values ('elsewhere', 'h', 999999, 'another-boot/1', 1), "
        "('reused', 'h', $1, $2, $3)",
        own_pid,
        own_host,
        own_start - 1,  # our pid, but a process that started earlier: not us
    )
    await _held_by(conn, utils.schema, {elsewhere.id: "elsewhere", reused.id: "reused"})

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        return None

    runner = await kongtask.run(database_url, {"t": handler}, schema=utils.schema)
    try:
        assert (await _job_row(conn, utils.schema, elsewhere.id))["locked_by"] == "elsewhere"
        assert (await _job_row(conn, utils.schema, reused.id))["locked_by"] is None
    finally:
        await runner.stop()


async def test_a_starting_pool_frees_the_jobs_of_a_pool_silent_too_long(
    utils: WorkerUtils, conn: asyncpg.Connection, database_url: str
) -> None:
    """A pool on another host whose heartbeat stopped longer than
    ``dead_worker_timeout`` ago: its job is free when the next pool is ready
    (the start-up statement sees the silence; the recovery runs before ready),
    while a pool that beat just now keeps its job."""
    s = quote_ident(utils.schema)
    silent = await utils.add_job("t", {"n": 1}, run_at=datetime(2000, 1, 1, tzinfo=timezone.utc))
    alive = await utils.add_job("t", {"n": 2}, run_at=datetime(2000, 1, 1, tzinfo=timezone.utc))
    await conn.execute(
        f"insert into {s}._kongtask_workers (worker_id, hostname, pid, host_key, process_start, "
        "last_seen) values ('silent', 'h', 1, 'another-boot/1', 1, now() - interval '1 hour'), "
        "('alive', 'h', 2, 'another-boot/1', 1, now())"
    )
    await _held_by(conn, utils.schema, {silent.id: "silent", alive.id: "alive"})

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        raise AssertionError("backing off: must not run yet")

    runner = await kongtask.run(
        database_url, {"t": handler}, schema=utils.schema, dead_worker_timeout=60.0
    )
    try:
        freed = await _job_row(conn, utils.schema, silent.id)
        kept = await _job_row(conn, utils.schema, alive.id)
    finally:
        await runner.stop()
    assert freed["locked_by"] is None and freed["attempts"] == 1
    assert "stopped heartbeating while holding this job" in freed["last_error"]
    assert kept["locked_by"] == "alive"


def test_liveness_knows_this_process_and_a_gone_one() -> None:
    host, pid, started = liveness.own_identity()
    if host is None:
        pytest.skip("no /proc here: recovery waits for heartbeats")
    assert pid == os.getpid() and started is not None
    assert not liveness.is_gone(pid, started)
    assert liveness.is_gone(pid, started + 1)  # a reused pid
    assert liveness.is_gone(2**22 + 12345, None)  # above any pid_max: no such process


FENCE_SETTINGS = {"heartbeat_interval": 0.5, "dead_worker_timeout": 3.0}


@pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))
async def test_a_pool_cut_off_from_its_database_stops_its_jobs_before_anyone_may_free_them() -> (
    None
):
    """The database goes away while a job runs. Other pools may free the job
    ``dead_worker_timeout`` after the pool's last heartbeat; the pool cancels
    the run before that, waits, and when the database answers again records
    the cancelled run as a failed attempt and carries on with new jobs."""
    with pgcluster.private_cluster() as cluster:
        async with WorkerUtils(cluster.dsn, schema="fence") as utils:
            await utils.migrate()
            await utils.add_job("long")
        started = asyncio.Event()
        cancelled_at: list[float] = []
        later = Recorder()
        loop = asyncio.get_running_loop()

        async def long(payload: Any, helpers: kongtask.Helpers) -> None:
            if helpers.job.attempts > 1:
                later.record((helpers.job.attempts, helpers.job.last_error))
                return
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled_at.append(loop.time())
                raise

        runner = await kongtask.run(cluster.dsn, {"long": long}, schema="fence", **FENCE_SETTINGS)
        try:
            await asyncio.wait_for(started.wait(), 30)
            gone_at = loop.time()
            await asyncio.to_thread(cluster.stop)
            while not cancelled_at:
                assert loop.time() - gone_at < 30, "the running job was never cancelled"
                await asyncio.sleep(0.05)  # the fence is time itself: nothing to await
            # Before the earliest moment another pool could free the job.
            assert cancelled_at[0] - gone_at < FENCE_SETTINGS["dead_worker_timeout"]
            await asyncio.to_thread(cluster.start)
            # The cancelled run is a failed attempt; after its backoff it runs again.
            await later.wait_for(1, timeout=60)
            assert later.calls == [(2, FENCE_MESSAGE)]
        finally:
            await runner.stop()
        conn = await asyncpg.connect(cluster.dsn)
        try:
            assert await conn.fetchval("select count(*) from fence._private_jobs") == 0
        finally:
            await conn.close()


async def test_run_once_keeps_heartbeating_through_a_drain_longer_than_the_dead_timeout(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """A run_once drain that outlasts ``dead_worker_timeout`` keeps its row fresh:
    otherwise its own fence would stop it midway, and other pools would free
    (and run) its jobs while it still runs them."""
    await utils.add_jobs([kongtask.JobSpec("t", {"n": n}) for n in range(8)])
    ran = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        await asyncio.sleep(0.25)
        ran.record(payload["n"])

    code = await asyncio.wait_for(
        kongtask.run_once(
            database_url,
            {"t": handler},
            schema=utils.schema,
            concurrency=1,
            heartbeat_interval=0.2,
            dead_worker_timeout=0.9,
        ),
        60,
    )
    assert code == 0 and sorted(ran.calls) == list(range(8))
    assert (
        await conn.fetchval(f"select count(*) from {quote_ident(utils.schema)}._private_jobs") == 0
    )
