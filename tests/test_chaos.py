"""Chaos: worker processes SIGKILLed and restarted, backends terminated, PostgreSQL
restarted, while 20,000 jobs drain. Nothing may be lost or left locked.

CI runs the default size; ``KONGTASK_CHAOS_JOBS`` and ``KONGTASK_CHAOS_FAULTS``
make the longer mode (e.g. 200000 and 60). The summary line printed at the end
(jobs, faults, lost, duplicates, recovery time) is what README's reliability
section reports.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import asyncpg

from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .test_reliability import _cluster, _pg_ctl

TASKS = """
import os
from kongtask import TaskList

tasks = TaskList()
TABLE = os.environ["CHAOS_TABLE"]

@tasks.task("chaos")
async def chaos(payload, helpers):
    # The run is recorded before the job completes: a recorded run whose
    # completion was lost shows up as a duplicate, never as a lost job.
    sql = f"insert into {TABLE} (n, pid) values ($1, $2)"
    await helpers.with_pg_client(lambda c: c.execute(sql, payload["n"], os.getpid()))
"""

CONTROLLER = "kongtask-chaos-controller"
WORKERS = "kongtask-chaos-worker"  # only these backends are terminated: other suites are safe


async def _connect(dsn: str) -> asyncpg.Connection:
    """A connection for the controller, retried across the PostgreSQL restart."""
    for _ in range(100):
        try:
            return await asyncpg.connect(dsn, server_settings={"application_name": CONTROLLER})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.1)
    raise RuntimeError("database did not come back")


async def test_chaos_no_job_lost(database_url: str, utils: WorkerUtils, tmp_path: Path) -> None:
    jobs = int(os.environ.get("KONGTASK_CHAOS_JOBS", "20000"))
    max_faults = int(os.environ.get("KONGTASK_CHAOS_FAULTS", "12"))
    rng = random.Random(int(os.environ.get("KONGTASK_CHAOS_SEED", "7")))
    s = quote_ident(utils.schema)
    table = f"{s}.chaos_runs"
    conn = await _connect(database_url)
    await conn.execute(f"create table {table} (n int not null, pid int not null)")
    await conn.close()
    (tmp_path / "chaos_tasks.py").write_text(TASKS)
    await utils.add_jobs_count([JobSpec("chaos", {"n": n}) for n in range(jobs)])

    env = {**os.environ, "CHAOS_TABLE": table, "KONGTASK_LOG_LEVEL": "ERROR"}
    argv = [
        sys.executable,
        "-m",
        "kongtask",
        "run",
        "-c",
        database_url,
        "-s",
        utils.schema,
        "--tasks",
        str(tmp_path / "chaos_tasks.py"),
        "-j",
        "8",
        "--poll-interval",
        "250",
        "--heartbeat-interval",
        "0.5",
        "--dead-worker-timeout",
        "3",
    ]

    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )

    workers = [await spawn() for _ in range(3)]
    faults: dict[str, int] = {"sigkill": 0, "terminate_backends": 0, "pg_restart": 0}
    restart_possible = _cluster() is not None
    conn = await _connect(database_url)
    last_fault = time.monotonic()
    try:
        for number in range(max_faults):
            await asyncio.sleep(rng.uniform(0.3, 0.8))  # spacing of faults, not a wait for state
            try:
                remaining = await conn.fetchval(f"select count(*) from {s}._private_jobs")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = await _connect(database_url)
                continue
            if remaining < jobs * 0.1:
                break
            if restart_possible and faults["pg_restart"] == 0 and number == max_faults // 2:
                await conn.close()
                await asyncio.to_thread(_pg_ctl, "restart")
                faults["pg_restart"] += 1
                conn = await _connect(database_url)
            elif number % 2 == 0:
                victim = rng.randrange(len(workers))
                try:
                    workers[victim].kill()
                except ProcessLookupError:
                    pass  # it exited already (e.g. started while the database was down)
                await workers[victim].wait()
                workers[victim] = await spawn()
                faults["sigkill"] += 1
            else:
                await conn.fetchval(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                    "where application_name = $1 and random() < 0.5",
                    WORKERS,
                )
                faults["terminate_backends"] += 1
            last_fault = time.monotonic()

        deadline = time.monotonic() + 180
        while True:
            try:
                remaining = await conn.fetchval(f"select count(*) from {s}._private_jobs")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = await _connect(database_url)
                continue
            if remaining == 0:
                break
            assert time.monotonic() < deadline, f"{remaining} jobs never completed"
            await asyncio.sleep(0.1)  # polling a table: there is no event for "queue empty"
        recovery = time.monotonic() - last_fault
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.terminate()
        for proc in workers:
            await proc.wait()

    runs = await conn.fetch(f"select n, count(*) as c from {table} group by n")
    locked = await conn.fetchval(
        f"select (select count(*) from {s}._private_jobs where locked_by is not null)"
        f" + (select count(*) from {s}._private_job_queues where locked_by is not null)"
    )
    await conn.close()
    ran = {row["n"] for row in runs}
    lost = jobs - len(ran & set(range(jobs)))
    duplicates = sum(row["c"] - 1 for row in runs)
    print(
        f"\nchaos: jobs={jobs} faults={sum(faults.values())} {faults} lost={lost} "
        f"duplicates={duplicates} recovery_after_last_fault={recovery:.1f}s"
    )
    assert sum(faults.values()) >= 3
    assert lost == 0
    assert locked == 0
