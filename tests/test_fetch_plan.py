"""The fetch statements stay index scans of the due range when many jobs wait
in the future: 300,000 future jobs must not turn each fetch into a walk of
all of them (or a sequential scan), which cost 35 ms per fetch before."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

import kongtask
from kongtask import EventEmitter, JobSpec, WorkerUtils
from kongtask.db import quote_ident
from kongtask.queries import Queries

FUTURE_JOBS = 300_000


def _scans_of_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every plan node that reads _private_jobs itself (not the loose priority probes)."""
    found = []
    if plan.get("Relation Name") == "_private_jobs":
        found.append(plan)
    for child in plan.get("Plans", []):
        found.extend(_scans_of_jobs(child))
    return found


def _literal(value: Any) -> str:
    """A test-controlled value as SQL text (EXECUTE takes no bind parameters)."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "array[" + ",".join(_literal(item) for item in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


async def _explain(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], generic: bool) -> Any:
    """EXPLAIN ANALYZE of ``sql``: as a custom plan, or as the generic plan the
    fetch connections force (``plan_cache_mode``), which cannot see the batch size."""
    async with conn.transaction():
        if not generic:
            text = await conn.fetchval("explain (analyze, format json) " + sql, *args)
        else:
            await conn.execute("set local plan_cache_mode = force_generic_plan")
            await conn.execute(f"prepare fetch_plan_test as {sql}")
            try:
                call = ", ".join(_literal(arg) for arg in args)
                text = await conn.fetchval(
                    f"explain (analyze, format json) execute fetch_plan_test({call})"
                )
            finally:
                await conn.execute("deallocate fetch_plan_test")
    [root] = orjson.loads(text)
    return root


def _fetch_args(statement: str, tasks: str, size: int) -> tuple[Any, ...]:
    if statement == "lease_plain":
        return (tasks, size)
    if statement == "claim_plain":
        return (tasks, size, "w")
    return ("w", tasks, size, ["t"])


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("statement", ["lease_plain", "claim_plain", "claim_keyed_or_queued"])
async def test_fetch_reads_only_the_due_range(
    statement: str, generic: bool, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    s = quote_ident(utils.schema)
    task_id = await conn.fetchval(
        f"insert into {s}._private_tasks (identifier) values ('t') returning id"
    )
    queue_id = await conn.fetchval(
        f"insert into {s}._private_job_queues (queue_name) values ('q') returning id"
    )
    # Future jobs of every kind (plain, keyed, queued), then a few due ones.
    await conn.execute(
        f"insert into {s}._private_jobs (task_id, run_at, priority, key, job_queue_id) "
        "select $1, now() + interval '1 day' + g * interval '1 second', g % 3, "
        "case when g % 10 = 0 then 'k' || g end, case when g % 10 = 1 then $2::int end "
        "from generate_series(1, $3::int) as g",
        task_id,
        queue_id,
        FUTURE_JOBS,
    )
    await conn.execute(
        f"insert into {s}._private_jobs (task_id, priority, key, job_queue_id) "
        "select $1, g % 3, case when g % 2 = 0 then 'due' || g end, "
        "case when g = 1 then $2::int end from generate_series(1, 20) as g",
        task_id,
        queue_id,
    )
    await conn.execute(f"analyze {s}._private_jobs")
    sql = getattr(Queries(utils.schema), statement)(with_flags=False)
    root = await _explain(conn, sql, _fetch_args(statement, f"{{{task_id}}}", 500), generic)
    scans = _scans_of_jobs(root["Plan"])
    # An index scan (or a bitmap scan, which the planner may prefer for a
    # small due range) bounded by run_at: the future jobs are never read.
    main = _due_range_scans(root["Plan"])
    assert main, f"no scan of the due range: {[n['Node Type'] for n in scans]}"
    assert all(node["Node Type"] != "Seq Scan" for node in scans)
    # The due range holds 20 jobs; nothing near the 300,000 future ones is read.
    assert all(node.get("Rows Removed by Filter", 0) < 100 for node in scans)
    assert all(node.get("Rows Removed by Index Recheck", 0) < 100 for node in scans)
    assert all(node["Actual Rows"] * node.get("Actual Loops", 1) < 1000 for node in main)


def _due_range_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The scans that read the due range (bounded by run_at), not the priority probes."""
    return [
        node
        for node in _scans_of_jobs(plan)
        if "run_at" in node.get("Index Cond", "") + node.get("Recheck Cond", "")
    ]


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


@pytest.mark.parametrize("statement", ["lease_plain", "claim_plain"])
async def test_resumed_fetch_skips_the_deleted_prefix(
    statement: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """A drain leaves the index entries of every deleted job in front of the due
    ones until a vacuum; a fetch from the top walks them all (a millisecond per
    fetch 100,000 jobs into a drain), a resumed one starts after them."""
    s = quote_ident(utils.schema)
    task_id = await conn.fetchval(
        f"insert into {s}._private_tasks (identifier) values ('t') returning id"
    )
    await conn.execute(
        f"insert into {s}._private_jobs (task_id, run_at) "
        "select $1, now() - interval '1 hour' + g * interval '1 ms' "
        "from generate_series(1, 40000) as g",
        task_id,
    )
    await conn.execute(f"analyze {s}._private_jobs")
    deleted = await conn.fetch(
        f"delete from {s}._private_jobs where id in (select id from {s}._private_jobs "
        "order by run_at, id limit 30000) returning priority, run_at, id"
    )
    last = max(deleted, key=lambda row: (row["priority"], row["run_at"], row["id"]))
    queries = Queries(utils.schema)
    tasks = f"{{{task_id}}}"

    async def explain(sql: str, *args: Any) -> dict[str, Any]:
        async with conn.transaction():
            text = await conn.fetchval("explain (analyze, buffers, format json) " + sql, *args)
            [root] = orjson.loads(text)
            return root["Plan"]

    build = getattr(queries, statement)
    args = _fetch_args(statement, tasks, 100)
    resumed = await explain(build(with_flags=False, resume=True), *args, *last.values())
    full = await explain(build(with_flags=False), *args)
    assert resumed["Actual Rows"] == full["Actual Rows"] == 100
    # The scan of the due range (a claim then writes 100 new row versions,
    # the same either way): locking 100 rows costs about a hundred buffer hits;
    # the full scan adds the index pages of the 30,000 dead entries (here about
    # 8 times more).
    [resumed_scan] = _due_range_scans(resumed)
    [full_scan] = _due_range_scans(full)
    assert _buffers(resumed_scan) < 300, resumed_scan
    assert _buffers(full_scan) > 4 * _buffers(resumed_scan), (
        _buffers(full_scan),
        _buffers(resumed_scan),
    )


@pytest.mark.parametrize("statement", ["lease_plain", "claim_plain"])
async def test_generic_plan_of_a_fetch_stays_an_index_scan_at_a_large_backlog(
    statement: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """The fetch connections force generic plans, which cannot see the batch
    size: PostgreSQL then assumes a tenth of the due rows. Joined back by id,
    a claim of 1,000 out of 1,000,000 due jobs hashed the whole table (370 ms
    a fetch); by address it stays a TID scan."""
    s = quote_ident(utils.schema)
    task_id = await conn.fetchval(
        f"insert into {s}._private_tasks (identifier) values ('t') returning id"
    )
    await conn.execute(
        f"insert into {s}._private_jobs (task_id, run_at) "
        "select $1, now() - interval '1 day' from generate_series(1, 200000)",
        task_id,
    )
    await conn.execute(f"analyze {s}._private_jobs")
    sql = getattr(Queries(utils.schema), statement)(with_flags=False)
    root = await _explain(conn, sql, _fetch_args(statement, f"{{{task_id}}}", 1000), True)
    scans = _scans_of_jobs(root["Plan"])
    assert [node["Node Type"] for node in scans if node["Node Type"] == "Seq Scan"] == []
    assert root["Plan"]["Actual Rows"] == 1000


BURST = 3000


async def _jobs_table_reads(conn: asyncpg.Connection, schema: str) -> tuple[int, int]:
    """(sequential scans, rows they read) of this schema's jobs table, as reported."""
    await conn.execute("select pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "select seq_scan, seq_tup_read from pg_stat_user_tables"
        " where schemaname = $1 and relname = '_private_jobs'",
        schema,
    )
    assert row is not None
    return row["seq_scan"], row["seq_tup_read"]


@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_a_pool_started_on_an_empty_queue_fetches_a_later_burst_by_index(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, mode: str
) -> None:
    """The fetch connections plan each statement once, for the table as it is
    then. A pool that started on an empty queue must still fetch a later burst
    through indexes and row addresses: its plans of the empty table claimed by
    scanning the whole table (a TID scan only wins the estimate on a table with
    rows), every fetch of the burst, 2 s a fetch at 200,000 jobs. Counted from
    PostgreSQL's table statistics, which the pool's backends report as they
    close: the pool may scan the empty table, but not read the burst that way."""
    handled = 0
    burst_done = asyncio.Event()
    fetched_empty = asyncio.Event()

    async def noop(payload: Any, helpers: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == BURST:
            burst_done.set()

    events = EventEmitter()
    events.on("worker:getJob:empty", lambda _payload: fetched_empty.set())
    runner = await kongtask.run(
        database_url,
        {"noop": noop},
        schema=utils.schema,
        concurrency=8,
        events=events,
        lease_time=0.25 if mode == "lease" else 0.0,
    )
    try:
        await asyncio.wait_for(fetched_empty.wait(), 30)  # planned on the empty table
        await utils.add_jobs([JobSpec("noop", {"i": i}) for i in range(BURST)])
        await asyncio.wait_for(burst_done.wait(), 120)
    finally:
        await runner.stop()  # its backends close and report their statistics
    scans, rows_read = await _jobs_table_reads(conn, utils.schema)
    assert rows_read < BURST, f"{scans} sequential scans of the jobs table read {rows_read} rows"
