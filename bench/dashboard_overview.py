"""How fast the dashboard answers with a big queue: ``python bench/dashboard_overview.py``.

Fills a fresh schema with ``--jobs`` jobs in a realistic mix of states (20
tasks, 7 named queues; most due, a fifth scheduled, some retrying, failed and
running), ``VACUUM ANALYZE``, then times whole requests to the dashboard
(handler, SQL and template; httpx straight into the ASGI app, no network):
the overview page, its live-refresh fragment, an exact count for
comparison, and the jobs list in its common shapes. Prints a table of
median and p95 milliseconds and the JSON of the run. Needs the ``dashboard``
extra and httpx. The schema is dropped at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import asyncpg
import httpx

from kongtask import WorkerUtils
from kongtask.dashboard import create_app
from kongtask.db import quote_ident


def _fill_sql(s: str) -> str:
    """``$1`` jobs, in the mix the module docstring describes, in one statement."""
    return f"""
insert into {s}._private_jobs
  (job_queue_id, task_id, payload, run_at, attempts, max_attempts, last_error, locked_at,
   locked_by, key)
select
  case when i % 10 = 0 then (select id from {s}._private_job_queues
                             where queue_name = 'queue_' || (1 + i % 7)) end,
  (select id from {s}._private_tasks where identifier = 'task_' || (1 + (i * 7919) % 20)),
  json_build_object('n', i, 'email', 'user' || i || '@example.com'),
  case when i % 100 < 70 then now() - (i % 3600) * interval '1 second'
       when i % 100 < 90 then now() + (1 + i % 86400) * interval '1 second'
       when i % 100 < 96 then now() + (600 + i % 600) * interval '1 second'
       else now() - interval '1 hour' end,
  case when i % 100 between 90 and 95 then 1 + i % 5
       when i % 100 >= 96 then 25
       else 0 end,
  25,
  case when i % 100 >= 90 then 'RuntimeError: upstream answered 503 for job ' || i end,
  case when i % 1000 = 999 then now() - interval '30 seconds' end,
  case when i % 1000 = 999 then 'worker-' || (i % 3) end,
  case when i % 50 = 1 then 'key-' || i end
from generate_series(1, $1::bigint) as i"""


async def fill(dsn: str, schema: str, jobs: int) -> None:
    async with WorkerUtils(dsn, schema=schema) as utils:
        await utils.migrate()
    s = quote_ident(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"insert into {s}._private_tasks (identifier) "
            "select 'task_' || i from generate_series(1, 20) as i"
        )
        await conn.execute(
            f"insert into {s}._private_job_queues (queue_name) "
            "select 'queue_' || i from generate_series(1, 7) as i"
        )
        await conn.execute(_fill_sql(s), jobs, timeout=None)
        await conn.execute(f"vacuum analyze {s}._private_jobs", timeout=None)
    finally:
        await conn.close()


async def _middle_id(dsn: str, schema: str) -> int:
    """An id halfway down the table: where a page deep into the list starts."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(f"select max(id) / 2 from {quote_ident(schema)}._private_jobs")
        )
    finally:
        await conn.close()


async def timed(client: httpx.AsyncClient, path: str, n: int) -> dict[str, Any]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
    times.sort()
    return {
        "path": path,
        "requests": n,
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
    }


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--connection", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the filled schema")
    parser.add_argument("--schema", help="use this already-filled schema instead")
    args = parser.parse_args(argv)
    if not args.connection:
        parser.error("give -c DSN (or DATABASE_URL)")
    schema = args.schema or f"bench_dashboard_{int(time.time())}"
    if not args.schema:
        started = time.perf_counter()
        await fill(args.connection, schema, args.jobs)
        print(f"filled {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
    app = create_app(args.connection, schema=schema)
    results = []
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        ) as client:
            await client.get("/")  # the pool, the schema check, the first plans
            n = args.requests
            middle = await _middle_id(args.connection, schema)
            for path, count in [
                ("/", n),
                ("/?fragment=1", n),
                ("/?exact=1", max(3, n // 10)),
                ("/jobs", n),
                (f"/jobs?after={middle}", n),
                ("/jobs?state=failed", n),
                ("/jobs?task=task_3&state=running", max(3, n // 10)),
                ("/jobs?error=503+for+job+99", n),
                ("/workers", max(3, n // 10)),
            ]:
                results.append(await timed(client, path, count))
    finally:
        await app.aclose()
        if not args.keep and not args.schema:
            conn = await asyncpg.connect(args.connection)
            try:
                await conn.execute(f"drop schema {quote_ident(schema)} cascade")
            finally:
                await conn.close()
    width = max(len(r["path"]) for r in results)
    print(f"{'request':<{width}}  median ms  p95 ms")
    for r in results:
        print(f"{r['path']:<{width}}  {r['median_ms']:>9}  {r['p95_ms']:>6}")
    print(json.dumps({"jobs": args.jobs, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
