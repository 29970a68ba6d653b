"""Driving graphile-worker (``gw.js``) from the interop tests, and recording runs.

Both sides record every job their handler starts into one table of the test
schema, with the same columns, so a test compares what a Node handler and a
kongtask handler were given with plain SQL. Waits are on conditions with a
deadline (and fail early, with Node's stderr, if a Node pool died), never a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg

import kongtask
from kongtask.db import quote_ident
from kongtask.tasks import Handler

HERE = Path(__file__).resolve().parent
GW_JS = HERE / "gw.js"
GW_VERSION = "0.17.3"
RECORD_TABLE = "interop_runs"
NODE_TIMEOUT = 30.0
#: Seconds ``npm ci`` may take; it needs the npm registry, which may be slow.
NPM_CI_TIMEOUT = 600


def in_ci() -> bool:
    """CI must run these tests, never skip them: a missing toolchain is a failure there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def node_problem() -> str | None:
    """Why graphile-worker cannot be driven here, or None when it can.

    When only ``tests/interop/node_modules`` is missing (or holds another version)
    it is installed first from the lockfile (``npm ci``), so ``python -m pytest
    tests`` on a fresh clone runs every test that needs it; asked once per session.
    """
    if shutil.which("node") is None:
        return "node is not on PATH (the interop tests need Node 20)"
    if _installed_problem() is None:
        return None
    return _npm_ci() or _installed_problem()


def _installed_problem() -> str | None:
    package = HERE / "node_modules" / "graphile-worker" / "package.json"
    if not package.is_file():
        return "tests/interop/node_modules is missing: run `cd tests/interop && npm ci`"
    version = json.loads(package.read_text("utf-8")).get("version")
    if version != GW_VERSION:
        return f"tests/interop has graphile-worker {version}, expected {GW_VERSION}: run `npm ci`"
    return None


def _install_lock() -> Path:
    """A lock file per checkout, so two sessions never run ``npm ci`` into one folder."""
    tag = hashlib.sha256(str(HERE).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"kongtask-interop-npm-{tag}.lock"


def _npm_ci() -> str | None:
    """Installs graphile-worker from the lockfile; None on success, else why not."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH to install tests/interop/node_modules"
    with _install_lock().open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _installed_problem() is None:  # another session installed it while we waited
            return None
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"`npm ci` in {HERE} took over {NPM_CI_TIMEOUT}s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`npm ci` in {HERE} failed (exit {done.returncode}): {tail[0]}"
    return None


def op(fn: str, *args: Any) -> dict[str, Any]:
    """One call for ``gw.js add``/``admin``: a WorkerUtils method name and its arguments."""
    return {"fn": fn, "args": list(args)}


def iso(moment: datetime) -> str:
    return moment.isoformat()


def from_js(text: str) -> datetime:
    """A ``Date.toISOString()`` string (as gw.js prints it) as an aware datetime.

    Python 3.10's ``fromisoformat`` does not read the trailing ``Z``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ms(moment: datetime) -> datetime:
    """A time JavaScript can hold exactly (Dates keep milliseconds, PostgreSQL microseconds)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def now_ms() -> datetime:
    return ms(datetime.now(timezone.utc))


# --------------------------------------------------------------- recording
async def create_record_table(conn: asyncpg.Connection, schema: str) -> None:
    """The table both sides' handlers insert into; ``seq`` orders job starts."""
    await conn.execute(
        f"""create table {quote_ident(schema)}.{quote_ident(RECORD_TABLE)} (
          seq bigint generated always as identity primary key,
          runner text not null,
          worker_id text,
          job_id bigint not null,
          task_identifier text not null,
          queue_name text,
          payload jsonb,
          priority int,
          run_at timestamptz,
          attempts int,
          max_attempts int,
          key text,
          flags text[],
          revision int,
          started_at timestamptz not null default clock_timestamp()
        )"""
    )


def _insert_sql(schema: str) -> str:
    return (
        f"insert into {quote_ident(schema)}.{quote_ident(RECORD_TABLE)} "
        "(runner, worker_id, job_id, task_identifier, queue_name, payload, priority, run_at, "
        "attempts, max_attempts, key, flags, revision) "
        "values ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12::text[], $13)"
    )


def python_recorder(schema: str, runner: str = "kongtask") -> Handler:
    """A kongtask handler that records what it was given, as gw.js's tasks do."""
    sql = _insert_sql(schema)

    async def record(payload: Any, helpers: kongtask.Helpers) -> None:
        job = helpers.job
        await helpers.with_pg_client(
            lambda conn: conn.execute(
                sql,
                runner,
                job.locked_by,
                job.id,
                job.task_identifier,
                job.queue_name,
                json.dumps(payload),
                job.priority,
                job.run_at,
                job.attempts,
                job.max_attempts,
                job.key,
                job.flags,
                job.revision,
            )
        )

    return record


async def recorded(conn: asyncpg.Connection, schema: str) -> list[asyncpg.Record]:
    """Every recorded start, in start order; payloads decoded."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return await conn.fetch(
        f"select * from {quote_ident(schema)}.{quote_ident(RECORD_TABLE)} order by seq"
    )


async def count_recorded(conn: asyncpg.Connection, schema: str) -> int:
    return await conn.fetchval(
        f"select count(*) from {quote_ident(schema)}.{quote_ident(RECORD_TABLE)}"
    )


async def jobs_left(conn: asyncpg.Connection, schema: str) -> int:
    return await conn.fetchval(f"select count(*) from {quote_ident(schema)}._private_jobs")


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float = 20.0,
    watch: Sequence[NodePool] = (),
) -> None:
    """Until ``check()`` holds; fails after ``timeout`` or as soon as a watched pool exits."""
    deadline = time.monotonic() + timeout
    while not await check():
        for pool in watch:
            pool.assert_alive()
        if time.monotonic() > deadline:
            details = "".join(f"\n--- {p.name} stderr ---\n{p.stderr}" for p in watch)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{details}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------- node side
class NodePool:
    """One ``gw.js run`` process: a graphile-worker pool in its own Node process."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.pool_id: str | None = None
        self._lines: list[str] = []
        self._line_added = asyncio.Event()
        self._stderr: list[str] = []
        self._stdout_reader = asyncio.create_task(self._read(proc.stdout, self._on_stdout))
        # Wake line waiters at EOF too, so a pool that dies fails them at once.
        self._stdout_reader.add_done_callback(lambda _: self._line_added.set())
        self._readers = [
            self._stdout_reader,
            asyncio.create_task(self._read(proc.stderr, self._stderr.append)),
        ]

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, sink: Callable[[str], None]) -> None:
        assert stream is not None
        while line := await stream.readline():
            sink(line.decode("utf-8", "replace"))

    def _on_stdout(self, line: str) -> None:
        self._lines.append(line.strip())
        self._line_added.set()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def assert_alive(self) -> None:
        if self.proc.returncode is not None:
            raise AssertionError(
                f"graphile-worker pool {self.name!r} exited with {self.proc.returncode}:\n"
                f"{self.stderr}"
            )

    def lines(self, prefix: str) -> list[str]:
        """Every stdout line so far that starts with ``prefix``, in order."""
        return [line for line in self._lines if line.startswith(prefix)]

    async def wait_line(self, prefix: str, timeout: float = NODE_TIMEOUT) -> str:
        """The first stdout line starting with ``prefix`` (e.g. ``READY``)."""

        async def find() -> str:
            while True:
                for line in self._lines:
                    if line.startswith(prefix):
                        return line
                if self._stdout_reader.done():
                    raise AssertionError(
                        f"{self.name} ended before printing {prefix}:\n{self.stderr}"
                    )
                self._line_added.clear()
                await self._line_added.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.name} did not print {prefix} within {timeout}s:\n{self.stderr}"
            ) from None

    async def stop(self, timeout: float = NODE_TIMEOUT) -> None:
        """SIGTERM: graphile-worker's graceful shutdown must finish and exit 0.

        A pool that stopped by itself (exit code 57 after a breaking
        ``worker:migrate``, say) fails here with its stderr.
        """
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise AssertionError(
                f"{self.name} did not stop within {timeout}s:\n{self.stderr}"
            ) from None
        await asyncio.gather(*self._readers)
        assert code == 0 and "STOPPED" in self._lines, (
            f"{self.name} exited with {code}, output {self._lines}:\n{self.stderr}"
        )

    async def kill(self) -> None:
        """SIGKILL: the process dies holding whatever it had locked, like a crash."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


class GraphileWorker:
    """Spawns ``gw.js`` against one database; kills anything left running at teardown."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pools: list[NodePool] = []

    async def _spawn(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "node",
            str(GW_JS),
            *args,
            cwd=HERE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def _call(self, *args: str, timeout: float = NODE_TIMEOUT) -> str:
        proc = await self._spawn(*args)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"gw.js {args[0]} took longer than {timeout}s") from None
        if proc.returncode != 0:
            raise AssertionError(
                f"gw.js {args[0]} exited with {proc.returncode}:\n{err.decode(errors='replace')}"
            )
        lines = out.decode().strip().splitlines()
        assert lines, f"gw.js {args[0]} printed nothing:\n{err.decode(errors='replace')}"
        return lines[-1]

    def _pool_args(
        self,
        schema: str,
        name: str,
        tasks: Iterable[str],
        fail_tasks: Iterable[str],
        block_tasks: Iterable[str],
        concurrency: int,
        poll_interval_ms: int,
        forbidden_flags: Iterable[str],
        crontab: str | None = None,
    ) -> list[str]:
        args = [
            "run",
            "--dsn",
            self.dsn,
            "--schema",
            schema,
            "--record-table",
            RECORD_TABLE,
            "--name",
            name,
            "--concurrency",
            str(concurrency),
            "--poll-interval",
            str(poll_interval_ms),
        ]
        for option, values in (
            ("--tasks", tasks),
            ("--fail-tasks", fail_tasks),
            ("--block-tasks", block_tasks),
            ("--forbidden-flags", forbidden_flags),
        ):
            joined = ",".join(values)
            if joined:
                args += [option, joined]
        if crontab is not None:
            args += ["--crontab", crontab]
        return args

    async def start_pool(
        self,
        schema: str,
        *,
        name: str = "node",
        tasks: Iterable[str] = ("record",),
        fail_tasks: Iterable[str] = (),
        block_tasks: Iterable[str] = (),
        concurrency: int = 1,
        poll_interval_ms: int = 200,
        forbidden_flags: Iterable[str] = (),
        crontab: str | None = None,
    ) -> NodePool:
        """A running pool, returned once its LISTEN is in place (``pool_id`` set).

        With ``crontab`` (crontab file text) it also runs graphile-worker's cron
        and prints ``CRON_*`` lines (see gw.js); its registration and backfill
        may still be in progress on return: wait for ``CRON_STARTED``.
        """
        args = self._pool_args(
            schema,
            name,
            tasks,
            fail_tasks,
            block_tasks,
            concurrency,
            poll_interval_ms,
            forbidden_flags,
            crontab,
        )
        pool = NodePool(await self._spawn(*args), name)
        self._pools.append(pool)
        ready = await pool.wait_line("READY")
        pool.pool_id = ready.split(" ", 1)[1]
        return pool

    async def run_once(
        self,
        schema: str,
        *,
        name: str = "node",
        tasks: Iterable[str] = ("record",),
        fail_tasks: Iterable[str] = (),
    ) -> None:
        """graphile-worker's ``runOnce``: everything due now, then exit."""
        args = self._pool_args(schema, name, tasks, fail_tasks, (), 1, 2000, ())
        line = await self._call(*args, "--once")
        assert line == "DONE", line

    async def add(self, schema: str, ops: Sequence[dict[str, Any]]) -> list[Any]:
        """Node's ``addJob``/``addJobs``/``quickAddJob``, in order; their results."""
        out = await self._call(
            "add", "--dsn", self.dsn, "--schema", schema, "--ops", json.dumps(ops)
        )
        return json.loads(out)

    async def admin(self, schema: str, ops: Sequence[dict[str, Any]]) -> list[Any]:
        """Node's WorkerUtils admin functions, in order; their results."""
        out = await self._call(
            "admin", "--dsn", self.dsn, "--schema", schema, "--ops", json.dumps(ops)
        )
        return json.loads(out)

    async def migrate(self, schema: str) -> None:
        """graphile-worker's own migration (it NOTIFYs ``worker:migrate``, DB-wide)."""
        assert await self._call("migrate", "--dsn", self.dsn, "--schema", schema) == "MIGRATED"

    async def close(self) -> None:
        for pool in self._pools:
            with contextlib.suppress(ProcessLookupError):
                await pool.kill()


# ----------------------------------------------------------------- catalog
#: How an entry of each ``describe_schema`` section is named.
CATALOG_IDENTITY: dict[str, Callable[[dict[str, Any]], str]] = {
    "relations": lambda row: row["name"],
    "columns": lambda row: f"{row['rel']}.{row['name']}",
    "constraints": lambda row: row["name"],
    "indexes": lambda row: row["name"],
    "functions": lambda row: f"{row['name']}({row['arguments']})",
    "sequences": lambda row: row["name"],
}

#: Everything kongtask's migration creates that graphile-worker's does not: its
#: own migration track and the worker heartbeats (DESIGN.md section 2 allows
#: such objects only where graphile-worker never looks). Listed by hand so that
#: a new kongtask-only object is a visible, deliberate change to this file.
KONGTASK_ONLY: dict[str, frozenset[str]] = {
    "relations": frozenset({"_kongtask_migrations", "_kongtask_workers"}),
    "columns": frozenset(
        {
            "_kongtask_migrations.id",
            "_kongtask_migrations.ts",
            "_kongtask_workers.worker_id",
            "_kongtask_workers.hostname",
            "_kongtask_workers.pid",
            "_kongtask_workers.started_at",
            "_kongtask_workers.last_seen",
            "_kongtask_workers.host_key",
            "_kongtask_workers.process_start",
        }
    ),
    "constraints": frozenset({"_kongtask_migrations_pkey", "_kongtask_workers_pkey"}),
    "indexes": frozenset(
        {
            "_kongtask_jobs_claim_index",
            "_kongtask_jobs_lease_index",
            "_kongtask_migrations_pkey",
            "_kongtask_workers_pkey",
        }
    ),
    "functions": frozenset(),
    "sequences": frozenset(),
}


def split_kongtask_only(
    description: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, set[str]]]:
    """``description`` without kongtask-only entries, and the names of those removed."""
    shared: dict[str, list[dict[str, Any]]] = {}
    removed: dict[str, set[str]] = {}
    for section, identity in CATALOG_IDENTITY.items():
        ours = KONGTASK_ONLY[section]
        shared[section] = [r for r in description[section] if identity(r) not in ours]
        removed[section] = {identity(r) for r in description[section] if identity(r) in ours}
    return shared, removed
