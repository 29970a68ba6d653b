"""Workers behind a PgBouncer in transaction pooling (docs/guarantees.md, "PgBouncer").

Debian's ``pgbouncer`` is started by the test in front of the private cluster
(``pool_mode = transaction``); two workers connect through it with
``--no-prepared-statements`` and drain plain jobs, one named queue and jobs
that fail once. Both modes: nothing lost, no overlap, no repeat, the named
queue never runs two jobs at once, a failed job runs again after its backoff,
and the server sees no more connections than PgBouncer's pool allows, plus
one direct LISTEN connection per worker when ``--listen-dsn`` exists (LISTEN
cannot work through transaction pooling; without it the pools poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from functools import cache
from pathlib import Path

import asyncpg
import pytest

from kongtask import JobSpec
from kongtask.migrate import migrate

from .. import pgcluster
from .conftest import Scenario, database_dsn, work
from .harness import (
    LEASE_TIME,
    MODE_ARGS,
    WORKER_APP,
    describe,
    report,
    rerun_too_early,
    reruns_after,
    serial_overlaps,
    wait_for,
)

PGBOUNCER = "/usr/sbin/pgbouncer"
#: Server connections PgBouncer may open to the database (its whole budget).
POOL_SIZE = 12
SERVER_ROLE = "faults_bouncer"  # PgBouncer logs in as this role: its backends are told apart
LISTEN_APP = "kongtask-faults-listen"
PLAIN = 1000
SERIAL = 100
RETRIED = 50
WORKERS = 2


@cache
def _has_listen_dsn() -> bool:
    """Whether this kongtask has ``run --listen-dsn`` (a direct LISTEN connection)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "kongtask", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "--listen-dsn" in help_text


@contextlib.asynccontextmanager
async def pgbouncer(scenario: Scenario) -> AsyncIterator[int]:
    """A PgBouncer in transaction pooling in front of the scenario's database; its port.

    Its files live in a folder of their own under the system's temp folder:
    pytest's is private to root, and PgBouncer runs as ``postgres``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="kongtask-pgbouncer-"))
    port = pgcluster.free_port()
    target = scenario.cluster
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
faults = host=127.0.0.1 port={target.port} dbname={scenario.database} user={SERVER_ROLE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_db_connections = {POOL_SIZE}
reserve_pool_size = 0
max_client_conn = 500
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""
    )
    argv = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        argv = ["runuser", "-u", "postgres", "--", *argv]
    with (workdir / "stderr").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
    try:

        async def accepting() -> bool:
            if proc.returncode is not None:
                output = "".join(
                    path.read_text(errors="replace")
                    for path in (workdir / "stderr", workdir / "pgbouncer.log")
                    if path.exists()
                )
                raise AssertionError(f"pgbouncer exited with {proc.returncode}:\n{output}")
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{port}/faults", statement_cache_size=0
                )
            except (OSError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        await wait_for(accepting, "pgbouncer to accept connections", timeout=30)
        yield port
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((workdir / "pgbouncer.pid").read_text()), signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        shutil.rmtree(workdir, ignore_errors=True)


async def _create_server_role(scenario: Scenario) -> None:
    exists = await scenario.conn.fetchval("select 1 from pg_roles where rolname = $1", SERVER_ROLE)
    if not exists:
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await scenario.conn.execute(f"create role {SERVER_ROLE} login superuser")


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed")
@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_through_pgbouncer_transaction_pooling(scenario: Scenario, mode: str) -> None:
    started = time.monotonic()
    await _create_server_role(scenario)
    listen_direct = _has_listen_dsn()
    async with pgbouncer(scenario) as port:
        fleet = scenario.fleet
        fleet.dsn = f"postgresql://postgres@127.0.0.1:{port}/faults?application_name={WORKER_APP}"
        args = [*MODE_ARGS[mode], "--no-prepared-statements", "--poll-interval", "200"]
        if listen_direct:
            direct = database_dsn(scenario.cluster, scenario.database)
            args += ["--listen-dsn", f"{direct}?application_name={LISTEN_APP}"]
        for _ in range(WORKERS):
            await fleet.start(*args)
        serial_ids = await scenario.add(work(SERIAL, ms=5, queue_name="serial"))
        retried_ids = await scenario.add(
            [JobSpec("work", {"ms": 5, "fail_attempts": 1}) for _ in range(RETRIED)]
        )
        await scenario.add(work(PLAIN, ms=5))
        peaks = {"bouncer": 0, "direct": 0}

        async def drained() -> bool:
            row = await scenario.conn.fetchrow(
                "select count(*) filter (where usename = $2) as bouncer,"
                " count(*) filter (where usename <> $2 and application_name in ($3, $4))"
                " as direct from pg_stat_activity where datname = $1",
                scenario.database,
                SERVER_ROLE,
                WORKER_APP,
                LISTEN_APP,
            )
            for key in peaks:
                peaks[key] = max(peaks[key], row[key])
            return await scenario.jobs_left() == 0

        await wait_for(drained, "the queue to drain", timeout=90, fleet=fleet)
        await fleet.stop_all()

    verdict = await scenario.verdict()
    in_serial = {job: "serial" for job in serial_ids}
    serial = serial_overlaps(verdict.runs, in_serial)
    retries = reruns_after([r for r in verdict.runs if r.job in set(retried_ids)], ("fail",))
    report(
        "pgbouncer",
        mode,
        started,
        verdict,
        jobs=len(scenario.job_ids),
        listen_dsn=listen_direct,
        peak_server_connections=peaks["bouncer"],
        peak_direct_connections=peaks["direct"],
        serial_overlaps=len(serial),
    )
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert len(verdict.successes) == len(scenario.job_ids)
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert verdict.repeats == [], describe(verdict.repeats)
    assert serial == [], describe(serial)
    assert len(retries) == RETRIED and all(again.outcome == "end" for _, again in retries)
    # A lease writes a failure in its own transaction, whose now() is the
    # fetch's: there the backoff counts from up to lease_time before the failure.
    slack = 0.05 + (LEASE_TIME if mode == "lease" else 0)
    early = [(fail, again) for fail, again in retries if rerun_too_early(fail, again, slack)]
    assert early == [], f"retried before the backoff: {describe(early)}"
    assert 0 < peaks["bouncer"] <= POOL_SIZE
    # LISTEN is the only connection that bypasses PgBouncer, one per worker.
    assert peaks["direct"] == (WORKERS if listen_direct else 0)


#: A cron task added to the scenario's task module: one line per run, the
#: tick it was added for (``_cron.ts``), its job id and the process.
CRON_TASK = """

_TICKS_PATH = os.environ["KONGTASK_FAULTS_LOG"] + ".cron"
_TICKS = os.open(_TICKS_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)


@tasks.task("cron_tick")
async def cron_tick(payload, helpers):
    line = f"{payload['_cron']['ts']} {helpers.job.id} {os.getpid()}\\n"
    os.write(_TICKS, line.encode())
"""
TICKS = 2


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed")
async def test_cron_through_pgbouncer_runs_each_tick_once(scenario: Scenario) -> None:
    """Two pools with one crontab, both through PgBouncer in transaction pooling:
    each minute's job is added once (the ``known_crontabs`` row lock and the
    insert share one transaction, which transaction pooling keeps whole) and runs once."""
    started = time.monotonic()
    await _create_server_role(scenario)
    tasks_module = scenario.workdir / "faults_tasks.py"
    tasks_module.write_text(tasks_module.read_text() + CRON_TASK)
    (scenario.workdir / "crontab").write_text("* * * * * cron_tick\n")
    ticks_log = Path(f"{scenario.observer.path}.cron")

    def runs() -> list[tuple[str, int, int]]:
        if not ticks_log.exists():
            return []
        return [
            (ts, int(job), int(pid))
            for ts, job, pid in (line.split() for line in ticks_log.read_text().splitlines())
        ]

    async with pgbouncer(scenario) as port:
        fleet = scenario.fleet
        fleet.dsn = f"postgresql://postgres@127.0.0.1:{port}/faults?application_name={WORKER_APP}"
        args = ["--no-prepared-statements", "--poll-interval", "200", "--crontab", "crontab"]
        for _ in range(WORKERS):
            await fleet.start(*args)

        async def ticked() -> bool:
            return len({ts for ts, _, _ in runs()}) >= TICKS

        # Ticks come on minute boundaries: TICKS of them take up to TICKS + 1 minutes.
        await wait_for(ticked, f"{TICKS} cron ticks", timeout=60 * (TICKS + 1) + 30, fleet=fleet)
        await scenario.wait_drained(timeout=30)
        await fleet.stop_all()

    done = runs()
    by_tick: dict[str, list[int]] = {}
    for ts, job, _ in done:
        by_tick.setdefault(ts, []).append(job)
    print(
        f"\nfaults: pgbouncer cron ticks={len(by_tick)} runs={len(done)} "
        f"pids={len({pid for _, _, pid in done})} time={time.monotonic() - started:.1f}s",
        flush=True,
    )
    assert len(by_tick) >= TICKS
    assert all(len(jobs) == 1 for jobs in by_tick.values()), by_tick
    assert await scenario.jobs_left() == 0
    known = await scenario.conn.fetchval(
        "select last_execution from graphile_worker._private_known_crontabs"
        " where identifier = 'cron_tick'"
    )
    newest = datetime.strptime(max(by_tick), "%Y-%m-%dT%H:%M:%S.%f%z")
    assert known == newest, (known, by_tick)


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed")
async def test_prepared_statements_through_pgbouncer_is_one_clear_line(scenario: Scenario) -> None:
    """A pool with prepared statements on, pointed at transaction pooling, stops at
    start-up with exit code 2 and one line that names the cure, no traceback."""
    await _create_server_role(scenario)
    await scenario.add(work(20))
    async with pgbouncer(scenario) as port:
        fleet = scenario.fleet
        fleet.dsn = f"postgresql://postgres@127.0.0.1:{port}/faults?application_name={WORKER_APP}"
        worker = await fleet.start(name="prepared", ready=False)
        worker.expected_exit = True
        code = await worker.wait_exit(60)
    output = worker.stderr()
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert code == 2, output
    assert "Traceback" not in output, output
    assert len(errors) == 1 and "--no-prepared-statements" in errors[0], output
    # A fresh PgBouncer: the start-up probe catches it before the pool is ready
    # (a used one: the first start-up statement clashes, with the same line).
    assert " ready: " not in output
    left = await scenario.conn.fetchval(
        "select count(*) from graphile_worker._private_jobs"
        " where attempts = 0 and locked_at is null"
    )
    assert left == 20, "a job was taken"


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed")
async def test_concurrent_migrations_through_pgbouncer_leave_no_lock(scenario: Scenario) -> None:
    """Workers of a fresh deploy, all pointed at PgBouncer, install a schema at once.

    Transaction pooling runs each transaction on whichever server connection is
    free, so a session lock taken outside the migration's transaction could be
    left on one connection and its unlock sent to another: the next migration
    would wait for ever. The lock lives in the migration's transaction instead;
    every migration ends, one installs, and no advisory lock is left anywhere.
    """
    await _create_server_role(scenario)
    schema = f"deploy_{os.urandom(4).hex()}"
    async with pgbouncer(scenario) as port:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/faults"
        conns = [await asyncpg.connect(dsn, statement_cache_size=0) for _ in range(6)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(migrate(c, schema) for c in conns)), 60
            )
            again = await asyncio.wait_for(migrate(conns[0], schema), 60)
        finally:
            for c in conns:
                await c.close()
    assert sum(r.installed for r in results) == 1, results
    assert again.installed is False and again.action == "none"
    left = await scenario.conn.fetchval("select count(*) from pg_locks where locktype = 'advisory'")
    assert left == 0
    await scenario.conn.execute(f"drop schema {schema} cascade")
