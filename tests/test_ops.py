"""Operations: Prometheus metrics, the inspection/admin commands, the multi-process supervisor.

All against the real test database. Metrics are checked by scraping the HTTP
endpoint; the commands by parsing arguments with their own ``register`` and
running ``run_command``; the supervisor as a real process tree that is
signalled and SIGKILLed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

import kongtask
from kongtask import JobSpec, TaskList, WorkerUtils
from kongtask.db import quote_ident
from kongtask.errors import ConfigError
from kongtask.worker import Runner, WorkerOptions

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kongtask import inspect_cli  # noqa: E402
from kongtask.metrics import Metrics  # noqa: E402
from kongtask.supervisor import resolve_processes, without_processes  # noqa: E402


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30, what: str = "condition"
) -> Any:
    """Await ``check()`` until it returns something truthy (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last result {result!r}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- metrics
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(port: int) -> Samples:
    return await asyncio.to_thread(_scrape, port)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_counts_jobs_and_reports_queue_gauges(
    database_url: str, utils: WorkerUtils
) -> None:
    schema = utils.schema
    release = asyncio.Event()
    entered = asyncio.Event()
    tasks = TaskList()

    @tasks.task("ok")
    async def ok(payload: Any, helpers: kongtask.Helpers) -> None:
        if payload.get("block"):
            entered.set()
            await release.wait()

    @tasks.task("boom")
    async def boom(payload: Any, helpers: kongtask.Helpers) -> None:
        raise RuntimeError(f"boom {payload['n']}")

    finished: list[str] = []
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry, refresh_interval=0.05)
    runner = Runner(database_url, tasks, WorkerOptions(schema=schema, concurrency=3))
    for name in ("job:success", "job:error"):
        runner.events.on(name, lambda payload, name=name: finished.append(name))
    metrics.attach(runner)  # before start: sees the first LISTEN connection too
    await runner.start()
    await metrics.start_server(0)
    assert metrics.port
    try:
        await utils.add_jobs(
            [
                *(JobSpec("ok", {"n": i}) for i in range(6)),
                *(JobSpec("boom", {"n": i}, max_attempts=1) for i in range(3)),
                JobSpec("boom", {"n": 0}, max_attempts=5, queue_name="retry"),
                JobSpec("ok", {"n": 99}, run_at=_in(3600), queue_name="later"),
                JobSpec("unhandled", {}),
            ]
        )
        await eventually(lambda: _true(len(finished) >= 10), what="10 jobs finished")

        async def settled() -> Samples | None:
            s = await scrape(metrics.port or 0)
            ok_done = value(
                s, "kongtask_queue_jobs", schema=schema, task_name="ok", queue="", state="available"
            )
            failed = value(
                s, "kongtask_queue_jobs", schema=schema, task_name="boom", queue="", state="failed"
            )
            return s if ok_done is None and failed == 3 else None

        s = await eventually(settled, what="queue gauges after the flush")
        processed = "kongtask_jobs_processed_total"
        assert value(s, processed, task_name="ok", status="success") == 6
        assert value(s, processed, task_name="boom", status="failed") == 3
        assert value(s, processed, task_name="boom", status="error") == 1
        assert value(s, processed, task_name="boom", status="success") == 0
        assert value(s, "kongtask_job_duration_seconds_count", task_name="ok") == 6
        assert value(s, "kongtask_job_duration_seconds_count", task_name="boom") == 4
        assert value(s, "kongtask_job_duration_seconds_bucket", task_name="ok", le="+Inf") == 6
        assert 0 <= (value(s, "kongtask_job_duration_seconds_sum", task_name="ok") or -1) < 6

        gauge = "kongtask_queue_jobs"
        # The job that failed once waits for its retry (backoff): scheduled.
        assert (
            value(s, gauge, schema=schema, task_name="boom", queue="retry", state="scheduled") == 1
        )
        assert value(s, gauge, schema=schema, task_name="ok", queue="later", state="scheduled") == 1
        # Nobody runs "unhandled": it stays available, and its wait is reported.
        assert (
            value(s, gauge, schema=schema, task_name="unhandled", queue="", state="available") == 1
        )
        assert (
            value(
                s,
                "kongtask_queue_oldest_due_seconds",
                schema=schema,
                task_name="unhandled",
                queue="",
            )
            is not None
        )
        assert (
            value(s, "kongtask_queue_stats_refreshed_timestamp_seconds", schema=schema) or 0
        ) > time.time() - 60
        assert value(s, "kongtask_slots") == 3
        assert value(s, "kongtask_slots_busy") == 0
        assert value(s, "kongtask_listener_connected") == 1
        assert (value(s, "kongtask_listener_connects_total") or 0) >= 1
        assert value(s, "kongtask_queue_stats_errors_total") == 0

        # A running job shows as a busy slot and, in the database, as locked.
        await utils.add_job("ok", {"block": True})
        await asyncio.wait_for(entered.wait(), 20)

        async def busy() -> Samples | None:
            s = await scrape(metrics.port or 0)
            locked = value(s, gauge, schema=schema, task_name="ok", queue="", state="locked")
            return s if locked == 1 else None

        s = await eventually(busy, what="the blocked job to show as locked")
        assert value(s, "kongtask_slots_busy") == 1
        release.set()

        async def seven() -> bool:
            s = await scrape(metrics.port or 0)
            return value(s, processed, task_name="ok", status="success") == 7

        await eventually(seven, what="the blocked job to count as a success")
    finally:
        release.set()
        await runner.stop()
        await metrics.stop()
    # The runner detached itself on stop; the server is gone.
    assert metrics._runners == []
    with pytest.raises(OSError):
        await scrape(metrics.port or 0)


async def test_metrics_fetch_batch_histogram(database_url: str, utils: WorkerUtils) -> None:
    tasks = TaskList({"ok": _noop})
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    await utils.add_jobs([JobSpec("ok", {"n": i}) for i in range(50)])
    runner = Runner(database_url, tasks, WorkerOptions(schema=utils.schema), once=True)
    metrics.attach(runner)
    await runner.start()
    await metrics.start_server(0)
    try:
        await runner.wait()
        s = await scrape(metrics.port or 0)
    finally:
        await metrics.stop()
    assert value(s, "kongtask_fetch_batch_size_sum") == 50
    assert (value(s, "kongtask_fetch_batch_size_count") or 0) >= 1


async def test_metrics_attach_after_start_and_without_queue_labels(
    database_url: str, utils: WorkerUtils
) -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry, refresh_interval=0.05, queue_labels=False)
    await utils.add_jobs(
        [JobSpec("later", {}, queue_name=f"q{i}", run_at=_in(600)) for i in range(5)]
    )
    runner = await kongtask.run(database_url, {"later": _noop}, schema=utils.schema)
    metrics.attach(runner)
    await metrics.start_server(0, host="127.0.0.1")
    try:

        async def gauges() -> Samples | None:
            s = await scrape(metrics.port or 0)
            scheduled = value(
                s,
                "kongtask_queue_jobs",
                schema=utils.schema,
                task_name="later",
                queue="",
                state="scheduled",
            )
            return s if scheduled == 5 else None

        s = await eventually(gauges, what="per-task gauges")
        assert not any(
            dict(labels).get("queue") for (name, labels) in s if name == "kongtask_queue_jobs"
        )
        with pytest.raises(RuntimeError):
            await metrics.start_server(0)
    finally:
        await runner.stop()
        await metrics.stop()


async def _noop(payload: Any, helpers: kongtask.Helpers) -> None:
    return None


async def _true(value: bool) -> bool:
    return value


def _in(seconds: float) -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- commands
def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    """What cli.py passes in (a copy: the test builds its own parser)."""
    parser.add_argument("-c", "--connection", metavar="DSN")
    parser.add_argument("-s", "--schema", metavar="NAME")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kongtask")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect_cli.register(sub, _add_connection_args)
    return parser.parse_args(list(argv))


async def _command(database_url: str, *argv: str) -> tuple[int, str]:
    args = _parse(*argv)
    out = io.StringIO()
    code = await inspect_cli.run_command(args, database_url, out)
    return code, out.getvalue()


async def _failing_jobs(database_url: str, utils: WorkerUtils) -> list[int]:
    """Three permanently failed jobs (real failures, multi-line last_error)."""
    jobs = await utils.add_jobs(
        [
            JobSpec("flaky", {"n": 1}, max_attempts=1),
            JobSpec("flaky", {"n": 2}, max_attempts=1, queue_name="serial"),
            JobSpec("flaky", {"n": 3}, max_attempts=1, job_key="flaky-3"),
        ]
    )

    async def flaky(payload: Any, helpers: kongtask.Helpers) -> None:
        raise ValueError(f"bad input {payload['n']}\nsecond line")

    await kongtask.run_once(database_url, {"flaky": flaky}, schema=utils.schema)
    return sorted(job.id for job in jobs)


async def test_jobs_command_reports_counts_oldest_and_failures(
    database_url: str,
    utils: WorkerUtils,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = utils.schema
    failed_ids = await _failing_jobs(database_url, utils)
    old = await utils.add_job("send_email", {"to": "a"}, run_at=_in(-120), queue_name="mail")
    await utils.add_job("send_email", {"to": "b"})
    await utils.add_job("send_email", {"to": "c"}, run_at=_in(3600))

    code, out = await _command(database_url, "jobs", "-s", schema, "--json")
    assert code == 0
    doc = orjson.loads(out)
    counts = {(c["task"], c["queue"]): c for c in doc["counts"]}
    assert counts[("send_email", None)]["available"] == 1
    assert counts[("send_email", None)]["scheduled"] == 1
    assert counts[("send_email", "mail")]["available"] == 1
    assert counts[("flaky", None)]["failed"] == 2
    assert counts[("flaky", "serial")]["failed"] == 1
    assert doc["oldest_due"]["id"] == old.id and doc["oldest_due"]["age"] >= 119
    assert doc["failed_total"] == 3
    assert sorted(f["id"] for f in doc["failed"]) == failed_ids
    assert {f["error"] for f in doc["failed"]} == {
        "ValueError: bad input 1",
        "ValueError: bad input 2",
        "ValueError: bad input 3",
    }
    assert all("second line" in f["last_error"] for f in doc["failed"])

    code, out = await _command(
        database_url, "jobs", "-s", schema, "--json", "--failed", "--queue", "serial"
    )
    doc = orjson.loads(out)
    assert "counts" not in doc and [f["id"] for f in doc["failed"]] == [failed_ids[1]]

    code, out = await _command(database_url, "jobs", "-s", schema, "--json", "--task", "send_email")
    doc = orjson.loads(out)
    assert {c["task"] for c in doc["counts"]} == {"send_email"} and doc["failed"] == []

    code, out = await _command(database_url, "jobs", "-s", schema, "--json", "--limit", "1")
    assert len(orjson.loads(out)["failed"]) == 1

    # Human output fits the terminal, shows the first error line only.
    monkeypatch.setenv("COLUMNS", "64")
    code, out = await _command(database_url, "jobs", "-s", schema)
    assert code == 0
    lines = out.splitlines()
    assert all(len(line) <= 64 for line in lines), out
    assert any(line.startswith("TASK") and "AVAILABLE" in line for line in lines)
    assert f"oldest due job: {old.id} (send_email, queue mail)" in out
    assert "second line" not in out and "ValueError: bad" in out
    monkeypatch.setenv("COLUMNS", "200")
    code, out = await _command(database_url, "jobs", "-s", schema)
    assert "ValueError: bad input 1" in out

    # An empty schema says so.
    await conn.execute(f"delete from {quote_ident(schema)}._private_jobs")
    code, out = await _command(database_url, "jobs", "-s", schema)
    assert "no jobs in schema" in out and "no permanently failed jobs" in out


async def test_retry_remove_unlock(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    schema = utils.schema
    s = quote_ident(schema)
    failed_ids = await _failing_jobs(database_url, utils)

    code, out = await _command(database_url, "retry", "-s", schema, str(failed_ids[0]), "999999")
    assert code == inspect_cli.EXIT_SKIPPED
    assert orjson.loads(out) == {"rescheduled": [failed_ids[0]], "skipped": [999999]}
    row = await conn.fetchrow(
        f"select attempts, is_available, run_at <= now() as due from {s}._private_jobs "
        "where id = $1",
        failed_ids[0],
    )
    assert row["attempts"] == 0 and row["is_available"] and row["due"]

    code, out = await _command(
        database_url, "retry", "-s", schema, "--all-failed", "--queue", "serial"
    )
    assert code == 0 and orjson.loads(out)["rescheduled"] == [failed_ids[1]]
    code, out = await _command(database_url, "retry", "-s", schema, "--all-failed")
    assert code == 0 and orjson.loads(out)["rescheduled"] == [failed_ids[2]]

    # By key: a pending job is deleted.
    code, out = await _command(database_url, "remove", "-s", schema, "flaky-3")
    assert code == 0
    assert orjson.loads(out) == {
        "key": "flaky-3",
        "found": True,
        "id": failed_ids[2],
        "removed": True,
        "running": False,
    }
    code, out = await _command(database_url, "remove", "-s", schema, "flaky-3")
    assert code == inspect_cli.EXIT_SKIPPED and orjson.loads(out)["found"] is False

    # By id; a job locked by a live worker is skipped, and unlock frees it.
    await conn.execute(
        f"update {s}._private_jobs set locked_by = 'dead-worker', locked_at = now() where id = $1",
        failed_ids[1],
    )
    await conn.execute(
        f"update {s}._private_job_queues set locked_by = 'dead-worker', locked_at = now()"
    )
    code, out = await _command(
        database_url, "remove", "-s", schema, "--id", str(failed_ids[0]), str(failed_ids[1])
    )
    assert code == inspect_cli.EXIT_SKIPPED
    assert orjson.loads(out) == {"removed": [failed_ids[0]], "skipped": [failed_ids[1]]}

    code, out = await _command(database_url, "jobs", "-s", schema, "--json")
    assert orjson.loads(out)["workers"] == [
        {
            "worker_id": "dead-worker",
            "hostname": None,
            "pid": None,
            "last_seen_age": None,
            "locked_jobs": 1,
        }
    ]
    code, out = await _command(database_url, "unlock", "-s", schema, "dead-worker", "other")
    assert code == 0
    assert orjson.loads(out) == {
        "workers": ["dead-worker", "other"],
        "jobs_unlocked": 1,
        "queues_unlocked": 1,
    }
    assert (
        await conn.fetchval(f"select count(*) from {s}._private_jobs where locked_by is not null")
        == 0
    )
    code, out = await _command(database_url, "remove", "-s", schema, "--id", str(failed_ids[1]))
    assert code == 0 and orjson.loads(out)["removed"] == [failed_ids[1]]
    assert await conn.fetchval(f"select count(*) from {s}._private_jobs") == 0


async def test_jobs_lists_live_workers_and_what_they_hold(
    database_url: str, utils: WorkerUtils, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(payload: Any, helpers: kongtask.Helpers) -> None:
        entered.set()
        await release.wait()

    await utils.add_job("hold", {})
    runner = await kongtask.run(database_url, {"hold": hold}, schema=utils.schema)
    try:
        await asyncio.wait_for(entered.wait(), 20)
        # A job runs leased (row-locked, nothing written) until its lease's
        # deadline claims it; from then on it shows as held.
        conn = await asyncpg.connect(database_url)
        try:
            s = quote_ident(utils.schema)
            deadline = asyncio.get_running_loop().time() + 10
            while not await conn.fetchval(
                f"select count(*) from {s}._private_jobs where locked_by = $1", runner.worker_id
            ):
                assert asyncio.get_running_loop().time() < deadline, "the lease never claimed"
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        code, out = await _command(database_url, "jobs", "-s", utils.schema, "--json")
        doc = orjson.loads(out)
        assert [(w["worker_id"], w["pid"], w["locked_jobs"]) for w in doc["workers"]] == [
            (runner.worker_id, os.getpid(), 1)
        ]
        assert doc["workers"][0]["last_seen_age"] < 60
        assert doc["counts"] == [
            {
                "task": "hold",
                "queue": None,
                "available": 0,
                "scheduled": 0,
                "locked": 1,
                "failed": 0,
                "oldest_due_age": None,
            }
        ]
        monkeypatch.setenv("COLUMNS", "100")
        code, out = await _command(database_url, "jobs", "-s", utils.schema)
        assert code == 0 and runner.worker_id in out and "LOCKED JOBS" in out
    finally:
        release.set()
        await runner.stop()


async def test_remove_running_job_by_key_keeps_it_from_retrying(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    job = await utils.add_job("t", {}, job_key="k1", max_attempts=5)
    await conn.execute(
        f"update {quote_ident(utils.schema)}._private_jobs "
        "set locked_by = 'w', locked_at = now(), attempts = 1 where id = $1",
        job.id,
    )
    code, out = await _command(database_url, "remove", "-s", utils.schema, "k1")
    assert code == 0
    assert orjson.loads(out) == {
        "key": "k1",
        "found": True,
        "id": job.id,
        "removed": False,
        "running": True,
    }


async def test_command_argument_errors(database_url: str, utils: WorkerUtils) -> None:
    for argv in (("retry", "abc"), ("retry", "0"), ("jobs", "--limit", "0"), ("unlock",)):
        with pytest.raises(SystemExit) as exc:
            _parse(*argv)
        assert exc.value.code == 2
    for argv in (
        ("retry",),
        ("retry", "1", "--task", "x"),
        ("remove",),
        ("remove", "key", "--id", "1"),
    ):
        with pytest.raises(ConfigError):
            await _command(database_url, *argv, "-s", utils.schema)
    args = _parse("jobs", "-c", "postgresql://x", "-s", "sch", "--task", "t", "--queue", "q")
    assert (args.command, args.connection, args.schema, args.task, args.queue, args.limit) == (
        "jobs",
        "postgresql://x",
        "sch",
        "t",
        "q",
        20,
    )
    assert set(inspect_cli.COMMAND_NAMES) == {"jobs", "retry", "remove", "unlock"}


def test_format_table_fits_width() -> None:
    rows = [["1", "a" * 50, "b" * 80], ["22", "short", "x"]]
    lines = inspect_cli.format_table(
        ["ID", "TASK", "ERROR"], rows, width=40, flexible=(2, 1), right=(0,)
    )
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].endswith("…") and lines[2].startswith("22")


# --------------------------------------------------------------------------- supervisor
def test_resolve_processes() -> None:
    assert resolve_processes("3") == 3
    assert resolve_processes(" AUTO ") >= 1
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--processes"):
            resolve_processes(bad)


def test_without_processes() -> None:
    argv = ["--log-level", "DEBUG", "run", "-c", "dsn", "--processes", "4", "-j", "5"]
    assert without_processes(argv) == ["--log-level", "DEBUG", "run", "-c", "dsn", "-j", "5"]
    assert without_processes(["run", "--processes=auto", "--once"]) == ["run", "--once"]
    assert without_processes(["run", "--proc", "2", "--poll-interval", "5"]) == [
        "run",
        "--poll-interval",
        "5",
    ]


PID_TASKS = """
import asyncio
import os
import sys
from kongtask import TaskList

tasks = TaskList()
_table = '"' + os.environ["TEST_SCHEMA"].replace('"', '""') + '".ran'

@tasks.task("pid")
async def pid(payload, helpers):
    await asyncio.sleep(0.001)
    await helpers.with_pg_client(
        lambda c: c.execute(f"insert into {_table} (n, pid, idx) values ($1, $2, $3)",
                            payload["n"], os.getpid(), os.environ["KONGTASK_PROCESS_INDEX"]))

@tasks.task("slow")
async def slow(payload, helpers):
    print("SLOW-STARTED", file=sys.stderr, flush=True)
    await asyncio.sleep(120)
"""


class Supervised:
    """``supervise([...], 2)`` in a subprocess, its log lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(
        cls, database_url: str, schema: str, tasks_file: Path, processes: int = 2
    ) -> Supervised:
        code = (
            "import logging, sys\n"
            "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
            "from kongtask.supervisor import supervise\n"
            f"sys.exit(supervise(sys.argv[1:], {processes}, restart_backoff=0.1))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code,
            "run", "-c", database_url, "-s", schema, "--tasks", str(tasks_file), "-j", "4",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TEST_SCHEMA": schema},
        )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_lines(self, text: str, n: int, timeout: float = 60) -> None:
        async def loop() -> None:
            while self.count(text) < n:
                if self._reader.done():
                    raise AssertionError(f"process ended; log:\n{self.log}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {n}x {text!r} in log:\n{self.log}") from None

    def child_pids(self) -> list[int]:
        return [int(line.rsplit("pid ", 1)[1]) for line in self.lines if "started: pid" in line]

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def finish(self, timeout: float = 60) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def _pid_setup(
    utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> tuple[Path, str]:
    s = quote_ident(utils.schema)
    await conn.execute(f"create table {s}.ran (n int, pid int, idx text)")
    # Two pools registering the same new task identifiers at the same moment can
    # race in Runner._register_tasks (KeyError; reported to the lead); these tests
    # are about the supervisor, so the identifiers exist before the children start.
    await conn.execute(
        f"insert into {s}._private_tasks (identifier) values ('pid'), ('slow') "
        "on conflict do nothing"
    )
    tasks_file = tmp_path / "pid_tasks.py"
    tasks_file.write_text(PID_TASKS)
    return tasks_file, s


async def test_supervisor_spreads_work_and_stops_cleanly(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    tasks_file, s = await _pid_setup(utils, conn, tmp_path)
    sup = await Supervised.start(database_url, utils.schema, tasks_file)
    try:
        await sup.wait_lines("ready:", 2)  # both children listen before jobs arrive
        pids = sup.child_pids()
        assert len(pids) == 2, sup.log
        await utils.add_jobs_count([JobSpec("pid", {"n": i}) for i in range(2000)])

        async def all_ran() -> bool:
            return await conn.fetchval(f"select count(*) from {s}.ran") == 2000

        await eventually(all_ran, timeout=90, what="2000 jobs to run")
        by_pid = dict(await conn.fetch(f"select pid, count(*) from {s}.ran group by pid"))
        assert set(by_pid) == set(pids), (by_pid, pids)
        assert await conn.fetchval(f"select count(distinct n) from {s}.ran") == 2000
        indexes = await conn.fetchval(f"select array_agg(distinct idx order by idx) from {s}.ran")
        assert indexes == ["0", "1"]
        sup.proc.send_signal(signal.SIGTERM)
        assert await sup.finish() == 0, sup.log
    finally:
        sup.kill()
    assert sup.count("exited with code 0") == 2, sup.log
    assert sup.count("started: pid") == 2  # nothing restarted after the signal
    assert await conn.fetchval(f"select count(*) from {s}._private_jobs") == 0
    assert (
        await conn.fetchval(
            f"select (select count(*) from {s}._private_jobs where locked_by is not null)"
            f" + (select count(*) from {s}._private_job_queues where locked_by is not null)"
        )
        == 0
    )


async def _run_jobs_then_stop(
    sup: Supervised, utils: WorkerUtils, conn: asyncpg.Connection, s: str, n: int, when: str
) -> None:
    """Add ``n`` jobs, wait until the children ran them all, stop gracefully (exit 0)."""
    await utils.add_jobs_count([JobSpec("pid", {"n": i}) for i in range(n)])

    async def all_ran() -> bool:
        return await conn.fetchval(f"select count(*) from {s}.ran") == n

    await eventually(all_ran, what=f"{n} jobs to run {when}")
    sup.proc.send_signal(signal.SIGTERM)
    assert await sup.finish() == 0, sup.log


async def test_supervisor_restarts_a_killed_child(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    tasks_file, s = await _pid_setup(utils, conn, tmp_path)
    sup = await Supervised.start(database_url, utils.schema, tasks_file)
    try:
        await sup.wait_lines("ready:", 2)
        victim = sup.child_pids()[-1]  # the newest child is surely alive
        started_before = sup.count("started: pid")
        ready_before = sup.count("ready:")
        os.kill(victim, signal.SIGKILL)
        await sup.wait_lines(f"(pid {victim}) exited with code {128 + signal.SIGKILL}", 1)
        await sup.wait_lines("started: pid", started_before + 1)
        await sup.wait_lines("ready:", ready_before + 1)
        new_pid = sup.child_pids()[started_before]
        assert new_pid != victim
        os.kill(new_pid, 0)  # alive
        await _run_jobs_then_stop(sup, utils, conn, s, 200, "after the restart")
    finally:
        sup.kill()
    assert victim not in dict(await conn.fetch(f"select pid, count(*) from {s}.ran group by pid"))


async def test_supervisor_passes_sigusr1_on_and_stops_nothing(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    tasks_file, s = await _pid_setup(utils, conn, tmp_path)
    sup = await Supervised.start(database_url, utils.schema, tasks_file)
    try:
        await sup.wait_lines("ready:", 2)  # a child without its handlers would die of it
        pids = sup.child_pids()
        sup.proc.send_signal(signal.SIGUSR1)
        await sup.wait_lines("state of worker", 2)
        assert sup.count("exited with code") == 0, sup.log
        for pid in pids:
            os.kill(pid, 0)  # both children still alive
        await _run_jobs_then_stop(sup, utils, conn, s, 20, "after the state dump")
    finally:
        sup.kill()


async def test_supervisor_stops_on_schema_too_new(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    tasks_file, s = await _pid_setup(utils, conn, tmp_path)
    await conn.execute(f"insert into {s}.migrations (id, breaking) values (20, true)")
    sup = await Supervised.start(database_url, utils.schema, tasks_file)
    try:
        assert await sup.finish() == 57, sup.log
    finally:
        sup.kill()
    assert sup.count("started: pid") == 2, sup.log  # no restart loop
    assert sup.count("cannot be fixed by a restart") >= 1


async def test_supervisor_second_signal_forces_children(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    from kongtask.worker import SHUTDOWN_MESSAGE

    tasks_file, s = await _pid_setup(utils, conn, tmp_path)
    job = await utils.add_job("slow", {}, max_attempts=3)
    sup = await Supervised.start(database_url, utils.schema, tasks_file)
    try:
        await sup.wait_lines("SLOW-STARTED", 1)
        await sup.wait_lines("ready:", 2)
        sup.proc.send_signal(signal.SIGTERM)
        await sup.wait_lines("finishing running jobs", 2)  # both children went graceful
        sup.proc.send_signal(signal.SIGTERM)
        assert await sup.finish(timeout=30) == 0, sup.log
    finally:
        sup.kill()
    assert sup.count("stop forcefully") == 1
    row = await conn.fetchrow(
        f"select last_error, locked_by, attempts from {s}._private_jobs where id = $1", job.id
    )
    assert row["last_error"].startswith(SHUTDOWN_MESSAGE) and row["locked_by"] is None
    assert row["attempts"] == 1  # it will be retried
