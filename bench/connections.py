"""How many PostgreSQL server connections one ``kongtask run`` process takes, by concurrency.

Measured, not computed: for each ``--concurrency`` C, a fresh ``python -m
kongtask run -j C`` process (kongtask's defaults otherwise) is started, left
idle, then given C x 20 jobs that each sleep 50 ms, so every slot is busy,
then 5,000 jobs that return at once (fetching and writing results flat out),
then C x 20 jobs whose handler holds a pool connection for 50 ms
(``helpers.with_pg_client`` running ``pg_sleep``): the pool at its largest.
``pg_stat_activity`` is sampled every 20 ms throughout:

* **direct**: the process's backends (its connections carry an
  ``application_name`` of their own), at idle and the peak under load;
* **through PgBouncer** (transaction pooling, a fresh PgBouncer per C, with
  ``--no-prepared-statements`` and a direct ``--listen-dsn``): the server
  connections PgBouncer opened for the process (PgBouncer logs in as a role
  of its own, so they are told apart), the peak of those busy in a
  transaction at the same moment, and the direct LISTEN connection.

Run it against a server of your own (it creates a login role for PgBouncer,
dropped at the end, and works in its own schema of the ``kongtask_bench``
database)::

    python bench/connections.py -c postgresql://postgres@127.0.0.1:5432/postgres
    python bench/connections.py -c ... --concurrency 1,4,10,24,50 --json out.json

It prints a Markdown table (the one in docs/deployment.md) and, with
``--json``, writes every sample summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from kongtask import JobSpec, WorkerUtils
from kongtask.benchmark import bouncer
from kongtask.benchmark.database import ensure_database, with_database
from kongtask.db import quote_ident

SAMPLE_S = 0.02
IDLE_S = 2.0
JOBS_PER_SLOT = 20
JOB_MS = 50
#: The second load: jobs that return at once, so fetching and result writing
#: (not handlers) keep the connections busy.
BURST_JOBS = 5000
ROLE = "kongtask_bench_bouncer"

TASKS = '''
"""bench/connections.py's task: sleeps, so every slot of the pool is busy."""
import asyncio

from kongtask import TaskList

tasks = TaskList()


@tasks.task("sleep")
async def sleep(payload, helpers):
    await asyncio.sleep(payload["ms"] / 1000)


@tasks.task("db_sleep")
async def db_sleep(payload, helpers):
    seconds = payload["ms"] / 1000
    await helpers.with_pg_client(lambda conn: conn.execute("select pg_sleep($1)", seconds))
'''


class Sampler:
    """Counts the process's connections in ``pg_stat_activity`` on a fixed beat."""

    def __init__(self, conn: asyncpg.Connection, app: str, via_bouncer: bool) -> None:
        self.conn = conn
        self.app = app
        self.via_bouncer = via_bouncer
        self.peaks: dict[str, int] = {}

    async def sample(self) -> dict[str, int]:
        if self.via_bouncer:
            row = await self.conn.fetchrow(
                "select count(*) filter (where usename = $1) as server,"
                " count(*) filter (where usename = $1 and state <> 'idle') as busy,"
                " count(*) filter (where application_name = $2) as listen"
                " from pg_stat_activity",
                ROLE,
                f"{self.app}-listen",
            )
        else:
            row = await self.conn.fetchrow(
                "select count(*) as server,"
                " count(*) filter (where state <> 'idle') as busy, 0 as listen"
                " from pg_stat_activity where application_name = $1",
                self.app,
            )
        counts = {key: int(row[key]) for key in ("server", "busy", "listen")}
        for key, value in counts.items():
            self.peaks[key] = max(self.peaks.get(key, 0), value)
        return counts

    async def peak_for(self, seconds: float) -> dict[str, int]:
        self.peaks = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.sample()
            await asyncio.sleep(SAMPLE_S)
        return dict(self.peaks)


async def start_worker(argv: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    deadline = time.monotonic() + 60
    while " ready: " not in log.read_text(errors="replace"):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log.read_text(errors='replace')[-2000:]}")
        await asyncio.sleep(0.05)
    return proc


async def drain(
    admin: asyncpg.Connection,
    dsn: str,
    schema: str,
    sampler: Sampler,
    jobs: int,
    ms: int,
    task: str = "sleep",
) -> tuple[dict[str, int], float]:
    """Add ``jobs`` jobs sleeping ``ms`` each; the peaks until the table is empty, and
    how long that took."""
    async with WorkerUtils(dsn, schema=schema, max_pool_size=1) as utils:
        await utils.add_jobs([JobSpec(task, {"ms": ms}) for _ in range(jobs)])
    sampler.peaks = {}
    t0 = time.monotonic()
    table = f"{quote_ident(schema)}._private_jobs"
    while await admin.fetchval(f"select count(*) from {table}") > 0:
        await sampler.sample()
        await asyncio.sleep(SAMPLE_S)
        if time.monotonic() - t0 > 300:
            raise RuntimeError("the queue did not drain within 300 s")
    return dict(sampler.peaks), time.monotonic() - t0


async def measure(
    admin: asyncpg.Connection,
    dsn: str,
    schema: str,
    workdir: Path,
    concurrency: int,
    bouncer_dsn: str | None,
) -> dict[str, Any]:
    app = f"kt-conn-{secrets.token_hex(3)}"
    via_bouncer = bouncer_dsn is not None
    argv = [sys.executable, "-m", "kongtask", "run", "-s", schema, "-j", str(concurrency)]
    argv += ["--tasks", str(workdir / "conn_tasks.py")]
    if via_bouncer:
        argv += ["-c", f"{bouncer_dsn}?application_name={app}", "--no-prepared-statements"]
        argv += ["--listen-dsn", f"{dsn}?application_name={app}-listen"]
    else:
        argv += ["-c", f"{dsn}?application_name={app}"]
    proc = await start_worker(argv, workdir / f"worker-{app}.log")
    sampler = Sampler(admin, app, via_bouncer)
    try:
        idle = await sampler.peak_for(IDLE_S)
        sleeping = concurrency * JOBS_PER_SLOT
        load, seconds = await drain(admin, dsn, schema, sampler, sleeping, JOB_MS)
        burst, burst_s = await drain(admin, dsn, schema, sampler, BURST_JOBS, 0)
        db, db_s = await drain(admin, dsn, schema, sampler, sleeping, JOB_MS, task="db_sleep")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    return {
        "mode": "pgbouncer" if via_bouncer else "direct",
        "concurrency": concurrency,
        "idle": idle,
        "load": load,
        "jobs": sleeping,
        "drain_s": round(seconds, 2),
        "burst": burst,
        "burst_jobs": BURST_JOBS,
        "burst_s": round(burst_s, 2),
        "db": db,
        "db_s": round(db_s, 2),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    await ensure_database(args.connection, args.database)
    dsn = with_database(args.connection, args.database)
    schema = f"conn_{os.getpid()}"
    admin = await asyncpg.connect(dsn)
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="kongtask-connections-"))
    (workdir / "conn_tasks.py").write_text(TASKS)
    use_bouncer = not args.no_pgbouncer and bouncer.binary() is not None
    if not args.no_pgbouncer and not use_bouncer:
        print("pgbouncer is not installed: direct connections only", file=sys.stderr)
    try:
        async with WorkerUtils(dsn, schema=schema, max_pool_size=1) as utils:
            await utils.migrate()
        if use_bouncer:
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await admin.execute(f"create role {quote_ident(ROLE)} login superuser")
        for concurrency in args.concurrency:
            results.append(await measure(admin, dsn, schema, workdir, concurrency, None))
            print(orjson.dumps(results[-1]).decode(), file=sys.stderr, flush=True)
            if use_bouncer:
                async with bouncer.pgbouncer(dsn, pool_size=args.pool_size, server_user=ROLE) as b:
                    results.append(await measure(admin, dsn, schema, workdir, concurrency, b.dsn))
                print(orjson.dumps(results[-1]).decode(), file=sys.stderr, flush=True)
    finally:
        await admin.execute(f"drop schema if exists {quote_ident(schema)} cascade")
        if use_bouncer:
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f"drop role if exists {quote_ident(ROLE)}")
        await admin.close()
    return results


def table(results: list[dict[str, Any]], pool_size: int) -> str:
    by = {(r["mode"], r["concurrency"]): r for r in results}
    lines = [
        "| `-j` | direct: idle | direct: sleeping jobs | direct: no-op burst "
        "| direct: jobs using the DB | via PgBouncer: idle | via PgBouncer: sleeping jobs "
        f"| via PgBouncer: no-op burst | via PgBouncer (pool {pool_size}): jobs using the DB "
        "| via PgBouncer: direct LISTEN |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted({r["concurrency"] for r in results}):
        direct = by.get(("direct", c))
        pooled = by.get(("pgbouncer", c))

        def cell(r: dict[str, Any] | None, when: str, key: str) -> str:
            return "-" if r is None else str(r[when].get(key, "-"))

        lines.append(
            f"| {c} | {cell(direct, 'idle', 'server')} | {cell(direct, 'load', 'server')} "
            f"| {cell(direct, 'burst', 'server')} | {cell(direct, 'db', 'server')} "
            f"| {cell(pooled, 'idle', 'server')} "
            f"| {cell(pooled, 'load', 'server')} ({cell(pooled, 'load', 'busy')}) "
            f"| {cell(pooled, 'burst', 'server')} ({cell(pooled, 'burst', 'busy')}) "
            f"| {cell(pooled, 'db', 'server')} ({cell(pooled, 'db', 'busy')}) "
            f"| {cell(pooled, 'load', 'listen')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--connection", required=True, metavar="DSN")
    parser.add_argument("--database", default="kongtask_bench")
    parser.add_argument(
        "--concurrency",
        default="1,4,10,24,50",
        type=lambda text: [int(part) for part in text.split(",")],
    )
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer's default_pool_size")
    parser.add_argument("--no-pgbouncer", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(table(results, args.pool_size))
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
