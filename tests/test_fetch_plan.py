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
