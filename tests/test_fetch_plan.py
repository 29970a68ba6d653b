"""The fetch statements stay index scans of the due range when many jobs wait
in the future: 300,000 future jobs must not turn each fetch into a walk of
all of them (or a sequential scan), which cost 35 ms per fetch before."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from kongtask import WorkerUtils
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


@pytest.mark.parametrize("statement", ["lease_plain", "claim_plain", "claim_keyed_or_queued"])
async def test_fetch_reads_only_the_due_range(
    statement: str, utils: WorkerUtils, conn: asyncpg.Connection
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
    tasks = f"{{{task_id}}}"
    args = (tasks, 500) if statement == "lease_plain" else ("w", tasks, 500, ["t"])
    text = await conn.fetchval("explain (analyze, format json) " + sql, *args)
    [root] = orjson.loads(text)
    scans = _scans_of_jobs(root["Plan"])
    # An index scan (or a bitmap scan, which the planner may prefer for a
    # small due range) bounded by run_at: the future jobs are never read.
    main = [
        node
        for node in scans
        if "run_at" in node.get("Index Cond", "") + node.get("Recheck Cond", "")
    ]
    assert main, f"no scan of the due range: {[n['Node Type'] for n in scans]}"
    assert all(node["Node Type"] != "Seq Scan" for node in scans)
    # The due range holds 20 jobs; nothing near the 300,000 future ones is read.
    assert all(node.get("Rows Removed by Filter", 0) < 100 for node in scans)
    assert all(node.get("Rows Removed by Index Recheck", 0) < 100 for node in scans)
    assert all(node["Actual Rows"] * node.get("Actual Loops", 1) < 1000 for node in main)


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


async def test_resumed_lease_fetch_skips_the_deleted_prefix(
    utils: WorkerUtils, conn: asyncpg.Connection
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

    resumed = await explain(
        queries.lease_plain(with_flags=False, resume=True), tasks, 100, *last.values()
    )
    full = await explain(queries.lease_plain(with_flags=False), tasks, 100)
    assert resumed["Actual Rows"] == full["Actual Rows"] == 100
    # 100 locked rows cost about a hundred buffer hits either way; the full scan
    # adds the index pages of the 30,000 dead entries (here about 8 times more).
    assert _buffers(resumed) < 300, resumed
    assert _buffers(full) > 4 * _buffers(resumed), (_buffers(full), _buffers(resumed))
