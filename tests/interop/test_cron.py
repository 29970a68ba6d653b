"""graphile-worker's cron and kongtask's cron sharing one schema.

Both record crontab identifiers in ``_private_known_crontabs`` and both
schedule a minute only by moving its ``last_execution`` forward, so a row
written by either one is honoured by the other, and a Node pool and a Python
pool running one crontab add each minute's job once.

No test waits for a real minute boundary. Minutes are "missed" either by
giving kongtask's scheduler a clock shifted by a few minutes, or by writing
the row as of a few minutes ago, and both sides' backfill (``fill``) then
makes them up at start-up; where both must contend for the same minutes, the
test holds the row's lock until both are queued on it. The only live timers
are the pools' own; a tick they happen to fire during a test is allowed for,
not relied on.

The cron jobs are for a task neither pool handles, so they stay in
``_private_jobs`` for inspection.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

import kongtask
from kongtask import EventEmitter, WorkerUtils
from kongtask.cron import CronScheduler
from kongtask.crontab import parse_crontab
from kongtask.db import create_pool, quote_ident

from .support import NODE_TIMEOUT, GraphileWorker, NodePool, from_js, python_recorder, wait_until

pytestmark = pytest.mark.interop

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
TASK = "interop_cron"


def crontab_line(identifier: str) -> str:
    """A per-minute item with a 10-minute backfill window, in the syntax both sides parse.

    The payload names the identifier, so a job says which item it came from.
    """
    return f'* * * * * {TASK} ?id={identifier}&fill=10m {{"item":"{identifier}"}}'


SHARED = crontab_line("shared")
PYTHON_ONLY = crontab_line("python_only")
#: ``_cron.ts`` as JavaScript's ``Date.toISOString()`` writes a whole minute.
JS_MINUTE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00\.000Z$")


# ------------------------------------------------------------------ helpers
def js_iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    floor = floor_minute(moment)
    return floor if floor == moment else floor + MINUTE


def minutes(first: datetime, before: datetime) -> list[datetime]:
    """Whole minutes from ``first`` (a minute) up to, not including, ``before``."""
    out = []
    while first < before:
        out.append(first)
        first += MINUTE
    return out


def shifted_clock(offset: timedelta) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + offset


def expected_job(identifier: str, minute: datetime, backfilled: bool) -> dict[str, Any]:
    """The job a per-minute item without options adds for ``minute``, whichever side adds it."""
    return {
        "task": TASK,
        "payload": {"item": identifier, "_cron": {"ts": js_iso(minute), "backfilled": backfilled}},
        "queue_name": None,
        "run_at": minute,
        "attempts": 0,
        "max_attempts": 25,
        "priority": 0,
        "key": None,
        "flags": None,
        "locked_by": None,
        "revision": 0,
    }


def without_minute(job: dict[str, Any]) -> dict[str, Any]:
    """A job minus what depends on its minute, to compare jobs of different minutes."""
    payload = dict(job["payload"])
    cron = payload.pop("_cron")
    return {**job, "payload": payload, "run_at": None, "_cron_keys": sorted(cron)}


async def cron_jobs(conn: asyncpg.Connection, schema: str, identifier: str) -> list[dict[str, Any]]:
    """The jobs of one crontab item (its payload's ``item``), in minute order."""
    s = quote_ident(schema)
    rows = await conn.fetch(
        f"select t.identifier as task, j.payload::text as payload, q.queue_name, j.run_at, "
        f"j.attempts, j.max_attempts, j.priority, j.key, j.flags::text as flags, j.locked_by, "
        f"j.revision from {s}._private_jobs as j "
        f"join {s}._private_tasks as t on t.id = j.task_id "
        f"left join {s}._private_job_queues as q on q.id = j.job_queue_id "
        f"where j.payload->>'item' = $1 "
        f"order by j.payload->'_cron'->>'ts', j.id",
        identifier,
    )
    return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]


def stamp(job: dict[str, Any]) -> datetime:
    return from_js(job["payload"]["_cron"]["ts"])


async def known_row(conn: asyncpg.Connection, schema: str, identifier: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"select * from {quote_ident(schema)}._private_known_crontabs where identifier = $1",
        identifier,
    )
    assert row is not None, f"{identifier!r} is not in _private_known_crontabs"
    return dict(row)


def assert_no_node_errors(stderr: str) -> None:
    assert "[graphile-worker error]" not in stderr, stderr
    assert "Cron hit an error" not in stderr, stderr


@pytest.fixture
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The pool a :class:`CronScheduler` driven by the test runs on."""
    created = await create_pool(database_url, min_size=1, max_size=2)
    yield created
    await created.close()


class Started:
    """Collects the ``start`` of ``cron:started`` and the minutes of ``cron:backfill``."""

    def __init__(self) -> None:
        self.emitter = EventEmitter()
        self.starts: list[datetime] = []
        self.backfilled: list[datetime] = []
        self.emitter.on("cron:started", lambda p: self.starts.append(p["start"]))
        self.emitter.on("cron:backfill", lambda p: self.backfilled.append(p["timestamp"]))

    @property
    def start(self) -> datetime:
        (start,) = self.starts
        return start


# -------------------------------------------------------------------- tests
async def test_identifier_registered_by_node_is_known_to_kongtask(
    database_url: str,
    schema: str,
    conn: asyncpg.Connection,
    gw: GraphileWorker,
    utils: WorkerUtils,
    pg_pool: asyncpg.Pool,
) -> None:
    """A Node pool registers ``shared``; kongtask's scheduler, started five minutes
    later (by its clock) on the same schema, treats it as known: it backfills
    the minutes since Node's ``known_since`` and leaves Node's registration
    alone. ``python_only``, which Node never saw, is registered and not
    backfilled, so the backfill is owed to Node's row alone."""
    node = await gw.start_pool(schema, crontab=SHARED)
    node_start = from_js((await node.wait_line("CRON_STARTED")).split(" ", 1)[1])
    await node.stop()
    assert_no_node_errors(node.stderr)

    registered = await known_row(conn, schema, "shared")
    assert registered["known_since"] == node_start
    # Node's own timer fires at the first boundary after its start; it may have
    # done so before it stopped.
    node_tick = registered["last_execution"]
    assert node_tick in (None, ceil_minute(node_start)), registered
    assert [
        (stamp(j), j["payload"]["_cron"]["backfilled"])
        for j in await cron_jobs(conn, schema, "shared")
    ] == ([] if node_tick is None else [(node_tick, False)])

    events = Started()
    cron = CronScheduler(
        pg_pool,
        schema,
        parse_crontab(f"{SHARED}\n{PYTHON_ONLY}"),
        events.emitter,
        clock=shifted_clock(timedelta(minutes=5)),
    )
    try:
        await cron.start(timer=False)
    finally:
        await cron.stop()
    kongtask_start = events.start

    due = minutes(ceil_minute(node_start), kongtask_start)
    assert len(due) >= 5, (node_start, kongtask_start)
    jobs = await cron_jobs(conn, schema, "shared")
    assert jobs == [expected_job("shared", m, backfilled=m != node_tick) for m in due]
    assert events.backfilled == [m for m in due if m != node_tick]
    assert await known_row(conn, schema, "shared") == {
        "identifier": "shared",
        "known_since": node_start,
        "last_execution": due[-1],
    }

    assert await cron_jobs(conn, schema, "python_only") == []
    assert await known_row(conn, schema, "python_only") == {
        "identifier": "python_only",
        "known_since": kongtask_start,
        "last_execution": None,
    }


async def test_identifier_registered_by_kongtask_is_known_to_node(
    database_url: str,
    schema: str,
    conn: asyncpg.Connection,
    gw: GraphileWorker,
    utils: WorkerUtils,
    pg_pool: asyncpg.Pool,
) -> None:
    """kongtask's scheduler, its clock six minutes behind, registers ``shared`` and
    ticks its first minute. A Node pool started afterwards reads that row
    without error and backfills from kongtask's ``last_execution``: every later
    minute up to its start, and not the minute kongtask took. The job Node adds
    has the same columns and payload shape as the one kongtask added."""
    events = Started()
    cron = CronScheduler(
        pg_pool,
        schema,
        parse_crontab(SHARED),
        events.emitter,
        clock=shifted_clock(-timedelta(minutes=6)),
    )
    try:
        await cron.start(timer=False)
        kongtask_start = events.start
        assert await known_row(conn, schema, "shared") == {
            "identifier": "shared",
            "known_since": kongtask_start,
            "last_execution": None,
        }
        assert events.backfilled == [], "a new identifier has nothing to backfill"
        first = ceil_minute(kongtask_start)
        assert await cron.tick(first) == 1
    finally:
        await cron.stop()
    assert (await known_row(conn, schema, "shared"))["last_execution"] == first

    node = await gw.start_pool(schema, crontab=SHARED)
    node_start = from_js((await node.wait_line("CRON_STARTED")).split(" ", 1)[1])
    node_backfill = [from_js(line.split(" ", 1)[1]) for line in node.lines("CRON_BACKFILL")]
    await node.stop()
    assert_no_node_errors(node.stderr)

    due = minutes(first, node_start)
    assert len(due) >= 5, (kongtask_start, node_start)
    # Node's backfill starts at the row's last_execution (its statement then
    # skips that minute, as already taken): proof it read kongtask's row.
    assert node_backfill == due
    jobs = await cron_jobs(conn, schema, "shared")
    # Node's timer may have ticked the minute after its start before stopping.
    node_tick = ceil_minute(node_start)
    if jobs and stamp(jobs[-1]) == node_tick:
        due.append(node_tick)
    assert jobs == [expected_job("shared", m, backfilled=first < m < node_start) for m in due]
    assert (await known_row(conn, schema, "shared"))["last_execution"] == due[-1]

    # The job kongtask added and one graphile-worker added have the same shape.
    by_kongtask, by_node = jobs[0], jobs[1]
    assert by_kongtask["payload"]["_cron"] == {"ts": js_iso(first), "backfilled": False}
    assert by_node["payload"]["_cron"] == {"ts": js_iso(first + MINUTE), "backfilled": True}
    assert without_minute(by_kongtask) == without_minute(by_node)
    assert all(JS_MINUTE.match(job["payload"]["_cron"]["ts"]) for job in jobs)


@pytest.mark.parametrize("row", ["ran", "never_ran"])
@pytest.mark.parametrize("first", ["kongtask", "node"])
async def test_node_and_kongtask_backfilling_the_same_minutes_add_each_once(
    database_url: str,
    schema: str,
    conn: asyncpg.Connection,
    gw: GraphileWorker,
    utils: WorkerUtils,
    row: str,
    first: str,
) -> None:
    """A Node pool and a kongtask pool both run ``* * * * * interop_cron ?id=shared&fill=10m``,
    and ``shared`` missed the last five minutes: its ``last_execution`` is five
    minutes back (``ran``), or it was registered five minutes ago and never
    ran (``never_ran``). The test holds the row's lock while both start, so
    each reads the same row, plans the same missed minutes and queues on the
    lock in its scheduling statement, ``first`` ahead of the other; then it
    lets both go at once. Every missed minute gets exactly one job, backfilled,
    whoever won it.

    With ``never_ran`` and Node first, Node's first statement takes the first
    missed minute and kongtask's, queued behind it, must see that and take
    only the rest; in the other cases the side queued first takes all of
    them and the other side's statements must add nothing.
    """
    s = quote_ident(schema)
    now = datetime.now(UTC)
    first_missed = floor_minute(now) - 4 * MINUTE
    if row == "ran":
        known_since, last_execution = first_missed - timedelta(hours=1), first_missed - MINUTE
    else:
        known_since, last_execution = first_missed, None
    await conn.execute(
        f"insert into {s}._private_known_crontabs (identifier, known_since, last_execution) "
        "values ($1, $2, $3)",
        "shared",
        known_since,
        last_execution,
    )
    # graphile-worker backfills from `last_execution or known_since` inclusive.
    node_first_attempt = last_execution or known_since
    missed_at_start = minutes(first_missed, floor_minute(now) + MINUTE)

    kongtask_events = Started()
    pools: list[NodePool] = []
    starting: list[asyncio.Task[kongtask.Runner]] = []

    async def start_kongtask() -> None:
        starting.append(
            asyncio.create_task(
                kongtask.run(
                    database_url,
                    {"record": python_recorder(schema)},
                    schema=schema,
                    crontab=SHARED,
                    events=kongtask_events.emitter,
                )
            )
        )

    async def start_node() -> None:
        pools.append(await gw.start_pool(schema, crontab=SHARED))

    async def waiting_on_the_row() -> int:
        for task in starting:
            if task.done():
                task.result()  # raises what the start raised
                raise AssertionError("kongtask's cron start did not wait for the row lock")
        # Whoever queues second waits behind the first, not behind the locker:
        # count every statement on this schema's known crontabs that waits.
        return await conn.fetchval(
            "select count(*) from pg_stat_activity "
            "where wait_event_type = 'Lock' and cardinality(pg_blocking_pids(pid)) > 0 "
            "and position($1 in query) > 0",
            f"{s}._private_known_crontabs",
        )

    locker = await asyncpg.connect(database_url)
    runner: kongtask.Runner | None = None
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute(
            f"select 1 from {s}._private_known_crontabs where identifier = $1 for update",
            "shared",
        )
        order = {"kongtask": (start_kongtask, start_node), "node": (start_node, start_kongtask)}
        for queued, start_side in enumerate(order[first], 1):
            await start_side()

            async def queued_up(n: int = queued) -> bool:
                return await waiting_on_the_row() == n

            await wait_until(
                queued_up,
                f"{queued} cron statement(s) queued on the row lock",
                timeout=NODE_TIMEOUT,
                watch=pools,
            )
        (node,) = pools
        # Each planned its backfill from the row as set up: kongtask all of it
        # in one statement, Node one minute per statement, from the row's
        # minute (inclusive).
        assert kongtask_events.backfilled[: len(missed_at_start)] == missed_at_start
        await node.wait_line("CRON_BACKFILL")  # printed before its statement was sent
        assert node.lines("CRON_BACKFILL") == [f"CRON_BACKFILL {js_iso(node_first_attempt)}"]
        await lock.rollback()

        runner = await asyncio.wait_for(starting[0], NODE_TIMEOUT)
    finally:
        await locker.close()  # releases the lock if an assertion failed
        for task in starting:
            task.cancel()
        outcome = await asyncio.gather(*starting, return_exceptions=True)
        if runner is None and outcome and isinstance(outcome[0], kongtask.Runner):
            await outcome[0].stop()
    try:
        node_start = from_js((await node.wait_line("CRON_STARTED")).split(" ", 1)[1])
        node_backfill = [from_js(x.split(" ", 1)[1]) for x in node.lines("CRON_BACKFILL")]
        await node.stop()
    finally:
        await runner.stop()
    assert_no_node_errors(node.stderr)

    kongtask_start = kongtask_events.start
    missed = minutes(first_missed, min(node_start, kongtask_start))
    assert len(missed_at_start) == 5
    assert missed[: len(missed_at_start)] == missed_at_start, (now, node_start, kongtask_start)
    # Each side tried every missed minute.
    assert set(missed) <= set(kongtask_events.backfilled)
    assert set(missed) <= set(node_backfill)

    jobs = await cron_jobs(conn, schema, "shared")
    stamps = [stamp(job) for job in jobs]
    assert len(stamps) == len(set(stamps)), f"a minute was scheduled twice: {stamps}"
    assert stamps[: len(missed)] == missed
    assert jobs[: len(missed)] == [expected_job("shared", m, backfilled=True) for m in missed]
    # Any later minute came from the later start's backfill or a live timer
    # tick; each of those too is added once, with no gap.
    assert stamps == minutes(first_missed, stamps[-1] + MINUTE)
    assert (await known_row(conn, schema, "shared"))["last_execution"] == stamps[-1]
    # Which side added which: kongtask adds a statement's jobs in one
    # transaction (one created_at), graphile-worker one minute per statement.
    batches = await conn.fetch(
        f"select created_at, count(*) as n from {s}._private_jobs "
        "group by created_at order by created_at"
    )
    print(
        f"[{first} first, {row}] {len(jobs)} jobs for {len(missed)} missed minutes, "
        f"added in batches of {[b['n'] for b in batches]}"
    )
