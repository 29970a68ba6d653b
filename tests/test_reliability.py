"""Crash safety: heartbeats, timeouts, hostile input, secrets, database outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import kongtask
from kongtask import InvalidJobSpec, JobSpec, WorkerUtils
from kongtask.db import quote_ident

from . import pgcluster
from .conftest import spawn_kongtask
from .interop.support import in_ci
from .test_worker import Recorder, _jobs, _locked_rows

SLOW_TASKS = """
import asyncio
from kongtask import TaskList

tasks = TaskList()

@tasks.task("slow")
async def slow(payload, helpers):
    print("STARTED", helpers.job.id, flush=True)
    await asyncio.sleep(3600)
"""


async def test_killed_worker_jobs_are_freed_by_heartbeat_within_seconds(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "slow_tasks.py").write_text(SLOW_TASKS)
    job = await utils.add_job("slow", {"n": 1}, queue_name="serial")
    proc = await spawn_kongtask(
        "run",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "--tasks",
        str(tmp_path / "slow_tasks.py"),
        "--heartbeat-interval",
        "0.2",
        "--dead-worker-timeout",
        "1",
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.split() == [b"STARTED", str(job.id).encode()]
    proc.kill()  # SIGKILL: no cleanup at all
    await proc.wait()
    [held] = await _jobs(conn, utils.schema)
    assert held["locked_by"] is not None and held["attempts"] == 1

    rec = Recorder()

    async def slow(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record(helpers.job.attempts)

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    runner = await kongtask.run(
        database_url,
        {"slow": slow},
        schema=utils.schema,
        heartbeat_interval=0.2,
        dead_worker_timeout=1.0,
    )
    try:
        await rec.wait_for(1, timeout=15)
    finally:
        await runner.stop()
    assert loop.time() - killed_at < 10  # seconds, not graphile-worker's 4 hours
    assert rec.calls == [2]  # the interrupted run counted as an attempt
    assert await _locked_rows(conn, utils.schema) == 0
    assert (
        await conn.fetchval(f"select count(*) from {quote_ident(utils.schema)}._kongtask_workers")
        == 0
    )


async def test_live_pools_are_not_declared_dead(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    started = Recorder()
    release = asyncio.Event()

    async def long(payload: Any, helpers: kongtask.Helpers) -> None:
        started.record(1)
        await release.wait()

    await utils.add_job("long")
    opts = {"schema": utils.schema, "heartbeat_interval": 0.2, "dead_worker_timeout": 2.0}
    holder = await kongtask.run(database_url, {"long": long}, **opts)
    sweeper = await kongtask.run(database_url, {"long": long}, **opts)
    try:
        await started.wait_for(1)
        # Several sweeps of the other pool happen here; the holder keeps its job.
        while (
            await conn.fetchval(
                f"select count(*) from {quote_ident(utils.schema)}._kongtask_workers"
            )
            < 2
        ):
            await asyncio.sleep(0.05)  # polling a table: the first beats are in flight
        for _ in range(3):
            before = await conn.fetchval(
                f"select max(last_seen) from {quote_ident(utils.schema)}._kongtask_workers"
            )
            while (
                await conn.fetchval(
                    f"select max(last_seen) from {quote_ident(utils.schema)}._kongtask_workers"
                )
                == before
            ):
                await asyncio.sleep(0.05)
        [row] = await _jobs(conn, utils.schema)
        assert row["locked_by"] == holder.worker_id
        release.set()
    finally:
        await asyncio.gather(holder.stop(), sweeper.stop())
    assert len(started.calls) == 1


async def test_task_timeout_fails_job_retryably(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    tasks = kongtask.TaskList()

    @tasks.task("hangs", timeout=0.2)
    async def hangs(payload: Any, helpers: kongtask.Helpers) -> None:
        await asyncio.Event().wait()

    @tasks.task("default_timeout")
    async def default_timeout(payload: Any, helpers: kongtask.Helpers) -> None:
        await asyncio.Event().wait()

    await utils.add_job("hangs")
    await utils.add_job("default_timeout")
    await kongtask.run_once(database_url, tasks, schema=utils.schema, job_timeout=0.3)
    rows = await _jobs(conn, utils.schema)
    assert [r["attempts"] for r in rows] == [1, 1]
    assert rows[0]["last_error"].startswith("JobTimeout: task 'hangs' exceeded its timeout of 0.2s")
    assert "0.3s" in rows[1]["last_error"]
    assert all(r["attempts"] < r["max_attempts"] and r["locked_by"] is None for r in rows)


async def test_ten_megabyte_payload_round_trips(database_url: str, utils: WorkerUtils) -> None:
    big = {"blob": "é" * 5_000_000, "n": list(range(1000))}
    await utils.add_job("big", big)
    seen: list[Any] = []

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        seen.append(payload)

    await kongtask.run_once(database_url, {"big": handler}, schema=utils.schema)
    assert seen == [big]


async def test_deep_but_decodable_payload_runs(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    job = await utils.add_job("deep")
    await conn.execute(
        f"update {quote_ident(utils.schema)}._private_jobs set payload = $1::json where id = $2",
        "[" * 300 + "]" * 300,
        job.id,
    )
    seen: list[Any] = []

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        depth = 0
        while isinstance(payload, list) and payload:
            payload, depth = payload[0], depth + 1
        seen.append(depth)

    await kongtask.run_once(database_url, {"deep": handler}, schema=utils.schema)
    assert seen == [299]


async def test_unserialisable_payload_is_a_clear_error(utils: WorkerUtils) -> None:
    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_job("t", deep)
    assert info.value.field == "payload"
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_job("t", {"x": object()})
    assert info.value.field == "payload"


HOSTILE = [
    "'; drop table jobs; --",
    'quote"d',
    "back\\slash",
    "semi;colon",
    "ünïcødé ✓ 🚀",
    "$kongtask$ $$",
]


@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_names_round_trip_without_injection(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, text: str
) -> None:
    job = await utils.add_job(text, {"k": text}, queue_name=text, job_key=text, flags=[text])
    assert (job.task_identifier, job.queue_name, job.key, job.flags) == (text, text, text, [text])
    seen: list[Any] = []

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        seen.append((payload["k"], helpers.job.queue_name, helpers.job.key))

    await kongtask.run_once(database_url, {text: handler}, schema=utils.schema)
    assert seen == [(text, text, text)]
    tables = await conn.fetchval(
        "select count(*) from information_schema.tables where table_schema = $1", utils.schema
    )
    assert tables >= 6  # nothing was dropped


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"identifier": "t" * 129}, "identifier"),
        ({"queue_name": "q" * 129}, "queue_name"),
        ({"job_key": "k" * 513}, "job_key"),
        ({"identifier": "nul\x00"}, "identifier"),
        ({"job_key": "nul\x00"}, "job_key"),
    ],
)
async def test_extreme_lengths_and_nul_are_rejected(
    utils: WorkerUtils, kwargs: dict[str, Any], field: str
) -> None:
    identifier = kwargs.pop("identifier", "t")
    with pytest.raises(InvalidJobSpec) as info:
        await utils.add_job(identifier, **kwargs)
    assert info.value.field == field
    ok = await utils.add_job("t" * 128, queue_name="q" * 128, job_key="k" * 512)
    assert len(ok.key) == 512


async def test_password_never_reaches_logs_or_reprs(
    database_url: str, utils: WorkerUtils, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-pa55word"
    dsn = database_url.replace("postgres@", f"postgres:{secret}@")
    assert secret in dsn  # trust auth accepts and ignores the password
    caplog.set_level(logging.DEBUG)

    async def fails(payload: Any, helpers: kongtask.Helpers) -> None:
        raise RuntimeError("boom")

    async with WorkerUtils(dsn, schema=utils.schema) as client:
        assert secret not in repr(client)
        await client.add_job("fails")
    runner = kongtask.Runner(dsn, {"fails": fails}, kongtask.WorkerOptions(schema=utils.schema))
    assert secret not in repr(runner)
    await runner.start()
    await runner.stop()
    # Port 1 answers nothing, whichever port the test server listens on.
    unreachable = urlsplit(dsn)._replace(netloc=f"postgres:{secret}@127.0.0.1:1").geturl()
    with pytest.raises(ConnectionError) as info:
        async with WorkerUtils(unreachable, schema="x") as bad:
            await bad.add_job("t")
    assert secret not in str(info.value) and "***" in str(info.value)
    assert all(secret not in record.getMessage() for record in caplog.records)


@pytest.fixture
def outage_cluster() -> Iterator[pgcluster.Cluster]:
    """A private server this test may stop and start: never the suite's own server."""
    problem = pgcluster.available()
    if problem is not None:
        if in_ci():
            pytest.fail(f"the outage test must run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    with pgcluster.private_cluster() as cluster:
        yield cluster


async def test_pool_survives_database_outage(
    outage_cluster: pgcluster.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    n = 2000
    database_url = outage_cluster.dsn
    schema = "outage"
    async with WorkerUtils(database_url, schema=schema) as utils:
        await utils.migrate()
        await utils.add_jobs_count([JobSpec("o", {"i": i}) for i in range(n)])
    seen: set[int] = set()
    rec = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        if payload["i"] not in seen:
            seen.add(payload["i"])
            rec.record(1)

    caplog.set_level(logging.WARNING, logger="kongtask")
    runner = await kongtask.run(
        database_url,
        {"o": handler},
        schema=schema,
        concurrency=4,
        local_queue_size=8,
        poll_interval=0.5,
    )
    try:
        await rec.wait_for(200, timeout=60)
        await asyncio.to_thread(outage_cluster.stop)
        try:
            await asyncio.sleep(5)  # the outage itself: nothing to await but time
        finally:
            await asyncio.to_thread(outage_cluster.start)
        await rec.wait_for(n, timeout=120)
    finally:
        await runner.stop()
    fetch_failures = [r for r in caplog.records if "fetching jobs failed" in r.getMessage()]
    assert 1 <= len(fetch_failures) <= 3  # one line per state change, not per retry
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f"select count(*) from {quote_ident(schema)}._private_jobs") == 0
    finally:
        await conn.close()
