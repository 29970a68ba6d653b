"""The worker pool against a real database: ordering, retries, queues, shutdown, faults."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

import kongtask
import kongtask.worker
from kongtask import JobSpec, TaskList, WorkerUtils
from kongtask.db import quote_ident
from kongtask.worker import SHUTDOWN_MESSAGE


@pytest.fixture(autouse=True, params=["leases", "claim-at-fetch"])
def fetch_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every pool test runs with leases (the default) and with ``lease_time=0``
    (every job claimed at fetch, graphile-worker's way), unless it sets one."""
    if request.param == "claim-at-fetch":
        original = kongtask.worker.build_options

        def claim_at_fetch(**options: Any) -> kongtask.WorkerOptions:
            options.setdefault("lease_time", 0)
            return original(**options)

        monkeypatch.setattr(kongtask.worker, "build_options", claim_at_fetch)
    return str(request.param)


async def _locked_rows(conn: asyncpg.Connection, schema: str) -> int:
    s = quote_ident(schema)
    return await conn.fetchval(
        f"select (select count(*) from {s}._private_jobs where locked_by is not null)"
        f" + (select count(*) from {s}._private_job_queues where locked_by is not null)"
    )


async def _jobs(conn: asyncpg.Connection, schema: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"select id, attempts, max_attempts, last_error, run_at, locked_by, payload::text "
        f"from {quote_ident(schema)}._private_jobs order by id"
    )


class Recorder:
    """Collects handler calls; ``wait_for(n)`` awaits the n-th call (no sleeping)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._changed = asyncio.Event()

    def record(self, value: Any) -> None:
        self.calls.append(value)
        self._changed.set()

    async def wait_for(self, n: int, timeout: float = 20) -> None:
        async def loop() -> None:
            while len(self.calls) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def test_runs_in_priority_then_run_at_order(database_url: str, utils: WorkerUtils) -> None:
    now = datetime.now(timezone.utc)
    await utils.add_job("order", {"n": "late-run_at"}, run_at=now - timedelta(seconds=1))
    await utils.add_job("order", {"n": "early-run_at"}, run_at=now - timedelta(seconds=10))
    await utils.add_job("order", {"n": "high-priority"}, priority=-1)
    await utils.add_job("order", {"n": "low-priority"}, priority=5)
    rec = Recorder()
    tasks = TaskList({"order": _async_record(rec)})
    await kongtask.run_once(database_url, tasks, schema=utils.schema, concurrency=1)
    assert [c["n"] for c in rec.calls] == [
        "high-priority",
        "early-run_at",
        "late-run_at",
        "low-priority",
    ]


def _async_record(rec: Recorder):  # type: ignore[no-untyped-def]
    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record(payload)

    return handler


async def test_failure_records_error_backoff_and_retries_until_permanent(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    job = await utils.add_job("boom", {"x": 1}, max_attempts=2)
    failed_events: list[Any] = []
    events = kongtask.EventEmitter()
    events.on("job:failed", failed_events.append)

    async def boom(payload: Any, helpers: kongtask.Helpers) -> None:
        raise KeyError("missing thing")

    await kongtask.run_once(database_url, {"boom": boom}, schema=utils.schema, events=events)
    [row] = await _jobs(conn, utils.schema)
    assert row["attempts"] == 1 and row["locked_by"] is None
    assert row["last_error"].startswith("KeyError: 'missing thing'")
    assert "raise KeyError" in row["last_error"]  # short traceback follows the message
    # Backoff: greatest(now, run_at) + exp(1) seconds.
    delay = (row["run_at"] - job.run_at).total_seconds()
    assert 2.7 <= delay <= 2.72 + 5
    assert failed_events == []
    await utils.reschedule_jobs([job.id], run_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    await kongtask.run_once(database_url, {"boom": boom}, schema=utils.schema, events=events)
    [row] = await _jobs(conn, utils.schema)
    assert row["attempts"] == 2
    assert len(failed_events) == 1 and failed_events[0]["job"].id == job.id
    # Used up: never fetched again.
    await utils.reschedule_jobs([job.id], run_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    await kongtask.run_once(database_url, {"boom": boom}, schema=utils.schema, events=events)
    assert (await _jobs(conn, utils.schema))[0]["attempts"] == 2


@pytest.mark.parametrize("exc", [ValueError("v"), SystemError(), Exception(""), ZeroDivisionError])
async def test_any_exception_type_fails_the_job(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection, exc: Any
) -> None:
    await utils.add_job("raise")

    def raiser(payload: Any, helpers: kongtask.Helpers) -> None:  # sync handler, in a thread
        raise exc

    await kongtask.run_once(database_url, {"raise": raiser}, schema=utils.schema)
    [row] = await _jobs(conn, utils.schema)
    assert row["attempts"] == 1 and row["last_error"]
    assert await _locked_rows(conn, utils.schema) == 0


async def test_sync_handlers_run_in_threads(database_url: str, utils: WorkerUtils) -> None:
    await utils.add_jobs([JobSpec("sync", {"i": i}) for i in range(5)])
    threads: set[int] = set()
    seen: list[int] = []

    def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        threads.add(threading.get_ident())
        seen.append(payload["i"])

    await kongtask.run_once(database_url, {"sync": handler}, schema=utils.schema)
    assert sorted(seen) == list(range(5))
    assert threading.get_ident() not in threads


async def test_named_queue_is_serial_across_two_pools(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    n = 60
    await utils.add_jobs([JobSpec("serial", {"i": i}, queue_name="one") for i in range(n)])
    await utils.add_jobs([JobSpec("serial", {"i": 1000 + i}) for i in range(n)])
    order: list[int] = []
    active = 0
    overlap = False
    done = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        nonlocal active, overlap
        if helpers.job.queue_name == "one":
            active += 1
            overlap = overlap or active > 1
            await asyncio.sleep(0)
            order.append(payload["i"])
            active -= 1
        done.record(payload["i"])

    opts = {
        "schema": utils.schema,
        "concurrency": 10,
        "local_queue_size": 20,
        "complete_batch_delay": 0.001,
    }
    a = await kongtask.run(database_url, {"serial": handler}, **opts)
    b = await kongtask.run(database_url, {"serial": handler}, **opts)
    try:
        await done.wait_for(2 * n, timeout=60)
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert not overlap
    assert order == list(range(n))
    assert await _locked_rows(conn, utils.schema) == 0


async def test_batch_never_holds_two_jobs_of_one_queue(
    database_url: str, utils: WorkerUtils
) -> None:
    await utils.add_jobs([JobSpec("q", {"i": i}, queue_name="only") for i in range(5)])
    seen_batches: list[list[int]] = []
    events = kongtask.EventEmitter()
    rec = Recorder()
    # Every fetch cycle reports what it delivered.
    events.on(
        "localQueue:getJobs:complete",
        lambda event: seen_batches.append([j.id for j in event["jobs"]]),
    )
    runner = kongtask.Runner(
        database_url,
        {"q": _async_record(rec)},
        kongtask.WorkerOptions(schema=utils.schema, events=events, concurrency=5),
    )
    await runner.start()
    try:
        await rec.wait_for(5)
    finally:
        await runner.stop()
    assert len(seen_batches) == 5
    assert all(len(batch) == 1 for batch in seen_batches)
    assert [c["i"] for c in rec.calls] == list(range(5))


async def test_run_once_runs_every_job_of_a_named_queue(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """A queue's next job becomes runnable only once this very run unlocks the
    queue; run_once must keep going until nothing is runnable."""
    queued = await utils.add_jobs([JobSpec("r", {"i": i}, queue_name="q") for i in range(50)])
    await utils.add_jobs([JobSpec("r", {"i": 100 + i}) for i in range(50)])
    rec = Recorder()

    async def record(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record((helpers.job.queue_name, helpers.job.id))

    assert await kongtask.run_once(database_url, {"r": record}, schema=utils.schema) == 0
    assert len(rec.calls) == 100
    assert [job_id for queue, job_id in rec.calls if queue == "q"] == sorted(j.id for j in queued)
    s = quote_ident(utils.schema)
    assert await conn.fetchval(f"select count(*) from {s}._private_jobs") == 0


async def test_failed_claim_of_a_named_queue_is_tried_again(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    """A claim that fails (here: a trigger raising on the first queue lock, as a
    lost connection would) must not forget that queued jobs are due: run_once
    would otherwise find nothing else, call the queue drained and return."""
    s = quote_ident(utils.schema)
    # A sequence, because nextval survives the rollback of the failed claim.
    await conn.execute(
        f"""
        create sequence {s}.claim_attempts;
        create function {s}.fail_first_claim() returns trigger language plpgsql as $$
        begin
          if new.locked_by is not null and nextval('{s}.claim_attempts') = 1 then
            raise exception 'injected failure of the first queue claim';
          end if;
          return new;
        end $$;
        create trigger fail_first_claim before update on {s}._private_job_queues
          for each row execute function {s}.fail_first_claim();
        """
    )
    await utils.add_jobs([JobSpec("r", {"i": i}, queue_name="q") for i in range(3)])
    rec = Recorder()
    tasks = {"r": _async_record(rec)}
    assert await kongtask.run_once(database_url, tasks, schema=utils.schema) == 0
    assert await conn.fetchval(f"select last_value from {s}.claim_attempts") > 1
    assert [c["i"] for c in rec.calls] == [0, 1, 2]
    assert await conn.fetchval(f"select count(*) from {s}._private_jobs") == 0


async def test_forbidden_flags_list_and_callable(database_url: str, utils: WorkerUtils) -> None:
    await utils.add_job("f", {"n": "plain"})
    await utils.add_job("f", {"n": "red"}, flags=["red"])
    await utils.add_job("f", {"n": "blue"}, flags=["blue"])
    rec = Recorder()
    await kongtask.run_once(
        database_url, {"f": _async_record(rec)}, schema=utils.schema, forbidden_flags=["red"]
    )
    assert sorted(c["n"] for c in rec.calls) == ["blue", "plain"]

    async def forbid() -> list[str]:
        return ["nothing-matches"]

    await kongtask.run_once(
        database_url, {"f": _async_record(rec)}, schema=utils.schema, forbidden_flags=forbid
    )
    assert sorted(c["n"] for c in rec.calls) == ["blue", "plain", "red"]


async def test_scheduled_job_starts_on_time_not_at_poll(
    database_url: str, utils: WorkerUtils
) -> None:
    rec = Recorder()
    started: list[datetime] = []

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        started.append(datetime.now(timezone.utc))
        rec.record(payload)

    runner = await kongtask.run(
        database_url, {"later": handler}, schema=utils.schema, poll_interval=10
    )
    try:
        run_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        await utils.add_job("later", run_at=run_at)
        await rec.wait_for(1, timeout=8)
    finally:
        await runner.stop()
    assert started[0] >= run_at - timedelta(milliseconds=5)  # clock of DB and host agree here
    assert started[0] - run_at < timedelta(seconds=1)


async def test_notification_wakes_idle_pool(database_url: str, utils: WorkerUtils) -> None:
    rec = Recorder()
    runner = await kongtask.run(
        database_url, {"n": _async_record(rec)}, schema=utils.schema, poll_interval=30
    )
    try:
        await utils.add_job("n", {"k": 1})
        await rec.wait_for(1, timeout=5)  # far below the 30 s poll interval
    finally:
        await runner.stop()


async def test_invalid_payload_fails_clearly_and_pool_continues(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    s = quote_ident(utils.schema)
    bad = await utils.add_job("p", {"ok": 0})
    # Valid for PostgreSQL's json type, not for any Python JSON parser.
    await conn.execute(
        f"update {s}._private_jobs set payload = $1::json where id = $2",
        '{"deep": ' + "[" * 5_000 + "]" * 5_000 + "}",
        bad.id,
    )
    await utils.add_job("p", {"ok": 1})
    rec = Recorder()
    await kongtask.run_once(database_url, {"p": _async_record(rec)}, schema=utils.schema)
    assert rec.calls == [{"ok": 1}]
    [row] = await _jobs(conn, utils.schema)
    assert row["id"] == bad.id and row["attempts"] == 1
    assert "payload" in row["last_error"] and "JSON" in row["last_error"]


async def test_batch_job_keeps_only_failed_entries(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    await utils.add_job("batch", [1, 2, 3, 4])

    async def handler(payload: list[int], helpers: kongtask.Helpers) -> list[Any]:
        async def fails() -> None:
            raise RuntimeError("async nope")

        return [None, ValueError("two failed"), None, fails()]

    await kongtask.run_once(database_url, {"batch": handler}, schema=utils.schema)
    [row] = await _jobs(conn, utils.schema)
    assert row["payload"].replace(" ", "") == "[2,4]"
    assert row["last_error"].startswith("Batch failures:\ntwo failed\nasync nope")


async def test_helpers_job_and_add_job(database_url: str, utils: WorkerUtils) -> None:
    rec = Recorder()
    seen: dict[str, Any] = {}

    async def first(payload: Any, helpers: kongtask.Helpers) -> None:
        job = helpers.job
        seen.update(
            id=job.id,
            task=job.task_identifier,
            attempts=job.attempts,
            queue=job.queue_name,
            key=job.key,
            priority=job.priority,
        )
        helpers.logger.info("adding follow-up")
        await helpers.add_job("second", {"from": job.id})
        seen["one"] = await helpers.with_pg_client(lambda c: c.fetchval("select 1"))

    async def second(payload: Any, helpers: kongtask.Helpers) -> None:
        rec.record(payload)

    job = await utils.add_job("first", queue_name="hq", job_key="jk", priority=2)
    runner = await kongtask.run(
        database_url, {"first": first, "second": second}, schema=utils.schema
    )
    try:
        await rec.wait_for(1)
    finally:
        await runner.stop()
    assert seen == {
        "id": job.id,
        "task": "first",
        "attempts": 1,
        "queue": "hq",
        "key": "jk",
        "priority": 2,
        "one": 1,
    }
    assert rec.calls == [{"from": job.id}]


async def test_graceful_shutdown_finishes_running_jobs_and_returns_queued(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    await utils.add_jobs([JobSpec("slow", {"i": i}) for i in range(20)])
    started = Recorder()
    release = asyncio.Event()

    async def slow(payload: Any, helpers: kongtask.Helpers) -> None:
        started.record(payload["i"])
        await release.wait()

    runner = await kongtask.run(
        database_url, {"slow": slow}, schema=utils.schema, concurrency=2, local_queue_size=10
    )
    await started.wait_for(2)
    stopping = asyncio.create_task(runner.stop())
    await asyncio.sleep(0.05)  # let stop() return the unstarted jobs first
    release.set()
    await stopping
    rows = await _jobs(conn, utils.schema)
    assert len(rows) == 18  # the two running jobs completed
    assert all(r["attempts"] == 0 for r in rows)  # unstarted jobs got their attempt back
    assert await _locked_rows(conn, utils.schema) == 0


async def test_forceful_shutdown_fails_running_jobs_so_they_retry(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    await utils.add_jobs([JobSpec("stuck", queue_name=f"q{i}") for i in range(3)])
    started = Recorder()
    aborted: list[bool] = []

    async def stuck(payload: Any, helpers: kongtask.Helpers) -> None:
        started.record(1)
        try:
            await asyncio.Event().wait()
        finally:
            aborted.append(helpers.abort_signal.is_set())

    runner = await kongtask.run(database_url, {"stuck": stuck}, schema=utils.schema, concurrency=3)
    await started.wait_for(3)
    await runner.kill()
    rows = await _jobs(conn, utils.schema)
    assert len(rows) == 3
    assert all(r["attempts"] == 1 and r["last_error"] == SHUTDOWN_MESSAGE for r in rows)
    assert all(r["attempts"] < r["max_attempts"] for r in rows)
    assert aborted == [True, True, True]
    assert await _locked_rows(conn, utils.schema) == 0


async def test_shutdown_timeout_turns_graceful_into_forceful(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    await utils.add_job("hang")
    started = Recorder()

    async def hang(payload: Any, helpers: kongtask.Helpers) -> None:
        started.record(1)
        await asyncio.Event().wait()

    runner = await kongtask.run(database_url, {"hang": hang}, schema=utils.schema)
    await started.wait_for(1)
    await runner.stop(timeout=0.2)
    [row] = await _jobs(conn, utils.schema)
    assert row["last_error"] == SHUTDOWN_MESSAGE and row["locked_by"] is None


async def test_listener_reconnects_after_backend_is_killed(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    rec = Recorder()
    connected = Recorder()
    events = kongtask.EventEmitter()
    events.on("pool:listen:success", lambda _: connected.record(1))
    runner = await kongtask.run(
        database_url,
        {"n": _async_record(rec)},
        schema=utils.schema,
        poll_interval=60,
        events=events,
    )
    try:
        killed = await conn.fetchval(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where query like 'LISTEN%' and pid <> pg_backend_pid() "
            "and datname = current_database()"
        )
        assert killed >= 1
        await connected.wait_for(2, timeout=10)
        await utils.add_job("n", {"after": "reconnect"})
        await rec.wait_for(1, timeout=10)
    finally:
        await runner.stop()


async def test_killed_worker_connections_lose_no_job(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    n = 3000
    await utils.add_jobs_count([JobSpec("k", {"i": i}) for i in range(n)])
    counts: Counter[int] = Counter()
    rec = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        if not counts[payload["i"]]:
            unique.record(payload["i"])
        counts[payload["i"]] += 1
        rec.record(1)

    async def killer() -> int:
        killed = 0
        for threshold in (300, 1500):
            await rec.wait_for(threshold, timeout=60)
            killed += await conn.fetchval(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where application_name = 'kongtask-test-victim' "
                "and datname = current_database()"
            )
        return killed

    unique = Recorder()
    runner = await kongtask.run(
        database_url,
        {"k": handler},
        schema=utils.schema,
        concurrency=8,
        poll_interval=0.2,
        connect_kwargs={"server_settings": {"application_name": "kongtask-test-victim"}},
    )
    kills = asyncio.create_task(killer())
    try:
        assert await kills >= 2
        await unique.wait_for(n, timeout=60)
    finally:
        await runner.stop()
    assert (
        await conn.fetchval(f"select count(*) from {quote_ident(utils.schema)}._private_jobs") == 0
    )
    assert set(counts) == set(range(n))  # every job ran at least once
    assert await _locked_rows(conn, utils.schema) == 0


async def test_two_pools_run_each_job_exactly_once(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    n = 10_000
    await utils.add_jobs_count([JobSpec("once", {"i": i}) for i in range(n)])
    counts: Counter[int] = Counter()
    rec = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        counts[payload["i"]] += 1
        rec.record(1)

    opts = {"schema": utils.schema, "concurrency": 12, "local_queue_size": 200}
    a = await kongtask.run(database_url, {"once": handler}, **opts)
    b = await kongtask.run(database_url, {"once": handler}, **opts)
    try:
        await rec.wait_for(n, timeout=120)
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert len(counts) == n and max(counts.values()) == 1
    assert (
        await conn.fetchval(f"select count(*) from {quote_ident(utils.schema)}._private_jobs") == 0
    )


async def test_job_key_replace_against_running_pool(
    database_url: str, utils: WorkerUtils, conn: asyncpg.Connection
) -> None:
    started = Recorder()
    release = asyncio.Event()
    rec = Recorder()

    async def handler(payload: Any, helpers: kongtask.Helpers) -> None:
        started.record(payload)
        if payload["v"] == 1:
            await release.wait()
        rec.record(payload)

    runner = await kongtask.run(database_url, {"keyed": handler}, schema=utils.schema)
    try:
        await utils.add_job("keyed", {"v": 1}, job_key="same")
        await started.wait_for(1)
        # The first job is running: a replace creates a second job instead.
        await utils.add_job("keyed", {"v": 2}, job_key="same")
        await rec.wait_for(1)
        release.set()
        await rec.wait_for(2)
    finally:
        await runner.stop()
    assert sorted(p["v"] for p in rec.calls) == [1, 2]


async def test_task_module_import_error_is_clear(tmp_path: Any) -> None:
    bad = tmp_path / "broken_tasks.py"
    bad.write_text("import does_not_exist_anywhere\n")
    with pytest.raises(kongtask.TaskLoadError, match="does_not_exist_anywhere"):
        kongtask.load_tasks(str(bad))


async def test_task_directory_names_tasks_by_path(tmp_path: Any) -> None:
    (tmp_path / "users" / "emails").mkdir(parents=True)
    (tmp_path / "users" / "emails" / "verify.py").write_text(
        "async def task(payload, helpers):\n    return None\n"
    )
    (tmp_path / "ping.py").write_text("def ping(payload, helpers):\n    return 1\n")
    tasks = kongtask.load_tasks(str(tmp_path))
    assert sorted(tasks) == ["ping", "users/emails/verify"]
    assert tasks.is_async("users/emails/verify") and not tasks.is_async("ping")


async def test_listener_that_raises_never_breaks_the_pool(
    database_url: str, utils: WorkerUtils
) -> None:
    events = kongtask.EventEmitter()

    def bad_listener(payload: Any) -> None:
        raise RuntimeError("listener bug")

    events.on("job:start", bad_listener)
    events.on("job:success", bad_listener)
    await utils.add_job("e")
    rec = Recorder()
    await kongtask.run_once(
        database_url, {"e": _async_record(rec)}, schema=utils.schema, events=events
    )
    assert len(rec.calls) == 1
    with pytest.raises(ValueError, match="unknown event"):
        events.on("job:started", bad_listener)
