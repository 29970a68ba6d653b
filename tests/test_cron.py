"""Cron: the crontab parser, time-zone rules, and the scheduler against a real database.

The scheduler is driven by an injected clock and :meth:`CronScheduler.tick`,
so minutes, DST changes and clock jumps pass instantly; only two tests let the
real timer run, with the clock placed a fraction of a second before a minute
boundary.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import pytest

from kongtask import CronSyntaxError, EventEmitter, InvalidJobSpec, WorkerUtils
from kongtask._core import schedule
from kongtask.cron import CronScheduler
from kongtask.crontab import (
    MACROS,
    CronItem,
    as_cron_items,
    cron_check_main,
    describe_next,
    load_crontab,
    parse_crontab,
    parse_time_phrase,
)
from kongtask.db import create_pool, quote_ident

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
MINUTE = timedelta(minutes=1)


def at(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


def one(text: str) -> CronItem:
    (item,) = parse_crontab(text)
    return item


def syntax_error(text: str) -> CronSyntaxError:
    with pytest.raises(CronSyntaxError) as info:
        parse_crontab(text)
    return info.value


# ----------------------------------------------------------------- parser: syntax


@pytest.mark.parametrize(
    "fields",
    [
        "* * * * *",
        "*/5 * * * *",
        "0 4 * * *",
        "0,30 9-17 * * 1-5",
        "5-55/10 */3 1,15 1-6/2 0",
        "0 0 13 * 5",
        "0 0 * * 7",
    ],
)
def test_time_fields_parse_like_core(fields: str) -> None:
    item = one(f"{fields} my_task")
    assert item.schedule == schedule.parse_cron(fields)
    assert item.task == "my_task" and item.identifier == "my_task"


def test_defaults_follow_graphile_worker() -> None:
    item = one("* * * * * do_it")
    assert item.payload is None and item.tz is None
    assert (item.queue_name, item.job_key, item.job_key_mode) == (None, None, None)
    assert (item.priority, item.max_attempts, item.backfill_period) == (None, None, 0.0)


def test_task_names_allow_colons_slashes_and_dashes() -> None:
    assert one("* * * * * _a:b/c-D9").task == "_a:b/c-D9"


def test_every_option() -> None:
    item = one(
        "0 4 * * * send ?id=nightly_send&fill=1w2d3h4m5s&max=3&queue=mail:q"
        "&jobKey=k%26x+y&jobKeyMode=preserve_run_at&priority=-7&tz=Europe/Paris"
    )
    assert item.identifier == "nightly_send"
    assert item.backfill_period == 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5
    assert item.max_attempts == 3 and item.queue_name == "mail:q"
    assert item.job_key == "k&x y"  # URL-decoded, as Node's querystring does
    assert item.job_key_mode == "preserve_run_at" and item.priority == -7
    assert item.tz == PARIS


def test_job_key_without_mode_means_replace() -> None:
    assert one("* * * * * t ?jobKey=k").job_key_mode == "replace"


@pytest.mark.parametrize(
    ("phrase", "seconds"),
    [("30s", 30), ("1m", 60), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400)],
)
def test_time_phrases(phrase: str, seconds: int) -> None:
    assert parse_time_phrase(phrase) == seconds
    assert one(f"* * * * * t ?fill={phrase}").backfill_period == seconds


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        ("{a: 1, 'b': 'two',}", {"a": 1, "b": "two"}),
        ("{n: 0x10, f: .5, g: +1, list: [1, 2,],}", {"n": 16, "f": 0.5, "g": 1, "list": [1, 2]}),
        ("{a: 1 /* inline comment */}", {"a": 1}),
        ('{text: "has # and } inside"}', {"text": "has # and } inside"}),
        ("{}", {}),
    ],
)
def test_json5_payloads(payload: str, expected: dict[str, Any]) -> None:
    assert one(f"* * * * * t {payload}").payload == expected
    assert one(f"* * * * * t ?max=2 {payload}").payload == expected


def test_strict_json_payload_works_without_json5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "json5", None)
    assert one('* * * * * t {"a": [1]}').payload == {"a": [1]}
    error = syntax_error("* * * * * t {a: 1}")
    assert "kongtask[cron]" in str(error) and (error.line, error.column) == (1, 13)


def test_comments_blank_lines_crlf_and_indentation() -> None:
    items = parse_crontab(
        "# header\r\n\r\n   \n  # indented comment\n\t0 1 * * * a\r\n  0 2 * * * b {x: 1}  \n"
    )
    assert [(item.task, item.schedule.source) for item in items] == [
        ("a", "0 1 * * *"),
        ("b", "0 2 * * *"),
    ]
    assert items[1].payload == {"x": 1}
    assert parse_crontab("") == [] and parse_crontab("# nothing\n") == []


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros(macro: str) -> None:
    item = one(f"{macro} t ?id=x&fill=1h {{a: 1}}")
    assert item.schedule == schedule.parse_cron(MACROS[macro])
    assert (item.identifier, item.backfill_period, item.payload) == ("x", 3600, {"a": 1})
    assert CronItem.create("t", macro).schedule == item.schedule


def test_duplicate_identifiers_name_both_lines() -> None:
    error = syntax_error("* * * * * a\n# c\n0 * * * * b ?id=a\n")
    assert (error.line, error.column) == (3, 14)
    assert "'a'" in error.message and "line 1" in error.message and "?id=" in error.message
    assert len(parse_crontab("* * * * * a\n0 * * * * a ?id=a2\n")) == 2


@pytest.mark.parametrize(
    ("text", "line", "column", "expected"),
    [
        ("* * * * *", 1, 10, "task name"),
        ("* * *", 1, 6, "5 time fields"),
        ("\n61 * * * * t", 2, 1, "0-59"),
        ("* 24 * * * t", 1, 3, "0-23"),
        ("* * 0 * * t", 1, 5, "1-31"),
        ("* * * 13 * t", 1, 7, "1-12"),
        ("* * * * 8 t", 1, 9, "0-7"),
        ("* * * * MON t", 1, 9, "expected N, A-B"),
        ("*/0 * * * * t", 1, 1, "at least 1"),
        ("5-1 * * * * t", 1, 1, "reversed"),
        ("1,,2 * * * * t", 1, 3, "empty item"),
        ("0 0 30 2 * t", 1, 5, "never fire"),
        ("* * * * * 9t", 1, 11, "letter or '_'"),
        ("* * * * * t?id=x", 1, 12, "space"),
        ("* * * * * t{}", 1, 12, "space"),
        ("* * * * * t$x", 1, 12, "unexpected '$'"),
        ("* * * * * t ?", 1, 13, "options after '?'"),
        ("* * * * * t ?colour=red", 1, 14, "unknown option 'colour'"),
        ("* * * * * t ?id=a&id=b", 1, 19, "more than once"),
        ("* * * * * t ?id=", 1, 17, "needs a value"),
        ("* * * * * t ?id=9a", 1, 17, "invalid id"),
        ("* * * * * t ?fill=1h2x", 1, 21, "did not understand '2x'"),
        ("* * * * * t ?max=0", 1, 18, "1 to 32767"),
        ("* * * * * t ?max=x", 1, 18, "1 to 32767"),
        ("* * * * * t ?queue=a%20b", 1, 20, "invalid queue"),
        ("* * * * * t ?jobKeyMode=keep", 1, 25, "replace or preserve_run_at"),
        ("* * * * * t ?priority=1.5", 1, 23, "-32768 to 32767"),
        ("* * * * * t ?priority=40000", 1, 23, "-32768 to 32767"),
        ("* * * * * t ?tz=Mars/Olympus", 1, 17, "unknown time zone"),
        ("* * * * * t extra", 1, 13, "'?options' or a '{...}' payload"),
        ("* * * * * t ?id=x extra", 1, 19, "a '{...}' payload"),
        ("* * * * * t {a: 1", 1, 18, "end with '}'"),
        ("* * * * * t {a: }", 1, 17, 'Unexpected "}"'),
        ("* * * * * t {a: 1} {b: 2}", 1, 20, "invalid JSON5"),
        ("@reboot t", 1, 1, "unknown macro"),
        ("@daily", 1, 7, "task name"),
        ("  @hourly  t ?max=-1", 1, 19, "1 to 32767"),
    ],
)
def test_errors_name_line_column_and_expectation(
    text: str, line: int, column: int, expected: str
) -> None:
    error = syntax_error(text)
    assert (error.line, error.column) == (line, column), str(error)
    assert expected in error.message
    assert str(error).startswith(f"line {line}, column {column}: ")


def test_large_integer_payload_is_rejected_with_position() -> None:
    error = syntax_error("* * * * * t {n: 123456789012345678901234567890}")
    assert (error.line, error.column) == (1, 13) and "JSON" in error.message


# ------------------------------------------------------------- programmatic items


def test_cron_item_create() -> None:
    item = CronItem.create(
        "report",
        "0 4 * * 1-5",
        payload={"to": "ops"},
        queue_name="reports",
        job_key="daily-report",
        priority=5,
        max_attempts=2,
        backfill_period="1d",
        tz="Europe/Paris",
    )
    assert item.identifier == "report" and item.job_key_mode == "replace"
    assert item.backfill_period == 86400 and item.tz == PARIS
    assert item.schedule == schedule.parse_cron("0 4 * * 1-5")
    assert CronItem.create("t", "* * * * *", backfill_period=timedelta(hours=1)).backfill_period
    assert CronItem.create("t", schedule.parse_cron("5 * * * *"), identifier="i").identifier == "i"
    source = {"a": 1}
    copied = CronItem.create("t", "* * * * *", payload=source)
    source["a"] = 2
    assert copied.payload == {"a": 1}


def test_cron_item_errors() -> None:
    with pytest.raises(CronSyntaxError) as info:
        CronItem.create("t", "* * 32 * *")
    assert info.value.column == 5
    with pytest.raises(CronSyntaxError):
        CronItem.create("t", "@often")
    for kwargs, field in [
        ({"priority": 99999}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"job_key_mode": "sometimes", "job_key": "k"}, "job_key_mode"),
        ({"queue_name": ""}, "queue_name"),
        ({"identifier": ""}, "identifier"),
        ({"payload": [1, 2]}, "payload"),
        ({"payload": {"x": object()}}, "payload"),
        ({"backfill_period": -1}, "backfill_period"),
        ({"backfill_period": "forever"}, "backfill_period"),
        ({"tz": "Nowhere/Town"}, "tz"),
    ]:
        with pytest.raises(InvalidJobSpec) as spec_error:
            CronItem.create("t", "* * * * *", **kwargs)
        assert spec_error.value.field == field, kwargs
    for task in ["", "t" * 129, "a\0b", 5]:
        # The task is the job's identifier, but the item has an identifier of its own.
        with pytest.raises(InvalidJobSpec) as spec_error:
            CronItem.create(task, "* * * * *", identifier="ok")  # type: ignore[arg-type]
        assert spec_error.value.field == "task", task
    with pytest.raises(InvalidJobSpec):
        CronItem("t", "* * * * *", "t")  # type: ignore[arg-type]
    with pytest.raises(InvalidJobSpec):
        CronItem("t", schedule.parse_cron("0 0 31 2 *"), "t")


def test_as_cron_items() -> None:
    assert as_cron_items(None) == []
    assert [item.task for item in as_cron_items("* * * * * a\n0 * * * * b")] == ["a", "b"]
    items = [CronItem.create("a", "* * * * *"), CronItem.create("b", "@daily")]
    assert as_cron_items(items) == items
    with pytest.raises(CronSyntaxError, match="items 0 and 1"):
        as_cron_items([CronItem.create("a", "* * * * *"), CronItem.create("a", "@daily")])
    with pytest.raises(TypeError):
        as_cron_items([{"task": "a"}])  # type: ignore[list-item]


def test_describe_next_and_cron_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = parse_crontab("*/20 * * * * a\n30 2 * * * b ?tz=Europe/Paris")
    (first, a_times), (_, b_times) = describe_next(items, count=3, now=at(2024, 3, 30, 23, 50))
    assert first.task == "a"
    assert a_times == [at(2024, 3, 31, 0, 0), at(2024, 3, 31, 0, 20), at(2024, 3, 31, 0, 40)]
    # 02:30 does not exist in Paris on 31 March 2024: it fires at the shift, 03:00 CEST.
    assert [t.isoformat() for t in b_times] == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]
    good = tmp_path / "crontab"
    good.write_text("# jobs\n0 4 * * * backup ?fill=1h {a: 1}\n@hourly ping ?tz=Asia/Tokyo\n")
    assert cron_check_main(str(good)) == 0
    out = capsys.readouterr().out
    assert "backup: 0 4 * * * backup ?fill=1h" in out and "ping ?tz=Asia/Tokyo" in out
    assert out.count("\n  ") == 10 and "UTC)" in out
    assert [item.task for item in load_crontab(good)] == ["backup", "ping"]
    bad = tmp_path / "bad"
    bad.write_text("* * * * * ok\n* * * * * ok ?fill=3y\n")
    assert cron_check_main(str(bad)) == 2
    assert f"{bad}:2:20: fill: invalid time phrase" in capsys.readouterr().err
    assert cron_check_main(str(tmp_path / "missing")) == 2
    assert "cannot read crontab" in capsys.readouterr().err


# ------------------------------------------------------------------- time zones


def _brute_force(item: CronItem, start: datetime, end: datetime) -> list[datetime]:
    out = []
    moment = start
    while moment < end:
        if item.is_due(moment):
            out.append(moment)
        moment += MINUTE
    return out


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/Paris", at(2024, 3, 30, 22)),  # spring forward 01:00Z
        ("Europe/Paris", at(2024, 10, 26, 22)),  # fall back 01:00Z
        ("America/New_York", at(2024, 3, 10, 4)),
        ("America/New_York", at(2024, 11, 3, 3)),
        ("Australia/Lord_Howe", at(2024, 10, 5, 13)),  # 30-minute shift
        ("Pacific/Apia", at(2011, 12, 29, 8)),  # skipped 30 December 2011
        ("Asia/Kolkata", at(2024, 1, 1)),
    ],
)
@pytest.mark.parametrize("pattern", ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *"])
def test_zoned_due_times_next_fire_and_is_due_agree(
    zone: str, start: datetime, pattern: str
) -> None:
    item = CronItem.create("t", pattern, tz=zone)
    end = start + timedelta(hours=30)
    listed = item.due_times(start, end)
    assert listed == _brute_force(item, start, end)
    assert listed == sorted(set(listed))  # at most once per UTC minute
    chained = []
    moment = start - MINUTE
    while (moment := item.next_fire(moment)) < end:
        chained.append(moment)
    assert chained == listed


def test_dst_gap_fires_once_at_the_shift() -> None:
    daily = CronItem.create("t", "30 2 * * *", tz="Europe/Paris")
    day = (at(2024, 3, 30), at(2024, 4, 2))
    assert daily.due_times(*day) == [
        at(2024, 3, 30, 1, 30),
        at(2024, 3, 31, 1, 0),  # 03:00 CEST, the first minute after the gap
        at(2024, 4, 1, 0, 30),
    ]
    hourly = CronItem.create("t", "0 * * * *", tz="Europe/Paris")
    # 02:00 never happens and 03:00 is the shift itself: one job, not two.
    assert hourly.due_times(at(2024, 3, 30, 23), at(2024, 3, 31, 3)) == [
        at(2024, 3, 30, 23),
        at(2024, 3, 31, 0),
        at(2024, 3, 31, 1),
        at(2024, 3, 31, 2),
    ]
    minutely = CronItem.create("t", "* * * * *", tz="Europe/Paris")
    assert len(minutely.due_times(at(2024, 3, 31, 0), at(2024, 3, 31, 2))) == 120


def test_dst_overlap_fires_once_at_the_first_occurrence() -> None:
    daily = CronItem.create("t", "30 2 * * *", tz="Europe/Paris")
    # 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET): only the first fires.
    assert daily.due_times(at(2024, 10, 27), at(2024, 10, 28)) == [at(2024, 10, 27, 0, 30)]
    half_hourly = CronItem.create("t", "*/30 * * * *", tz="Europe/Paris")
    assert half_hourly.due_times(at(2024, 10, 27, 0), at(2024, 10, 27, 2, 31)) == [
        at(2024, 10, 27, 0, 0),
        at(2024, 10, 27, 0, 30),
        at(2024, 10, 27, 2, 0),
        at(2024, 10, 27, 2, 30),
    ]
    assert not daily.is_due(at(2024, 10, 27, 1, 30))


# -------------------------------------------------------------------- scheduler


class Clock:
    """A settable clock for the scheduler."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Events:
    """Records every cron event."""

    NAMES = (
        "cron:starting",
        "cron:started",
        "cron:schedule",
        "cron:backfill",
        "cron:prematureTimer",
        "cron:overdueTimer",
    )

    def __init__(self) -> None:
        self.emitter = EventEmitter()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        for name in self.NAMES:
            self.emitter.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        def record(payload: dict[str, Any]) -> None:
            self.seen.append((name, payload))
            self.changed.set()

        return record

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [payload for seen, payload in self.seen if seen == name]

    async def wait_for(self, name: str, timeout: float = 10) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while not self.of(name):
                self.changed.clear()
                await self.changed.wait()
            return self.of(name)[0]

        return await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def pool(database_url: str, utils: WorkerUtils) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the migrated test schema (``utils`` migrates it)."""
    created = await create_pool(database_url, min_size=1, max_size=3)
    yield created
    await created.close()


def scheduler(
    pool: asyncpg.Pool,
    schema: str,
    crontab: str | list[CronItem],
    clock: Clock,
    events: Events | None = None,
) -> CronScheduler:
    return CronScheduler(
        pool,
        schema,
        as_cron_items(crontab),
        (events or Events()).emitter,
        clock=clock,
    )


async def cron_jobs(conn: asyncpg.Connection, schema: str) -> list[dict[str, Any]]:
    """Every job with its task, `_cron` stamp and options, in id order."""
    s = quote_ident(schema)
    rows = await conn.fetch(
        f"select t.identifier as task, j.payload::text as payload, j.run_at, q.queue_name, "
        f"j.max_attempts, j.priority, j.key, j.revision from {s}._private_jobs j "
        f"join {s}._private_tasks t on t.id = j.task_id "
        f"left join {s}._private_job_queues q on q.id = j.job_queue_id order by j.id"
    )
    out = []
    for row in rows:
        job = dict(row)
        job["payload"] = orjson.loads(row["payload"])
        job["ts"] = job["payload"]["_cron"]["ts"]
        job["backfilled"] = job["payload"]["_cron"]["backfilled"]
        out.append(job)
    return out


async def stamps(conn: asyncpg.Connection, schema: str, task: str) -> list[tuple[str, bool]]:
    return [
        (job["ts"], job["backfilled"])
        for job in await cron_jobs(conn, schema)
        if job["task"] == task
    ]


async def known(conn: asyncpg.Connection, schema: str) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        f"select * from {quote_ident(schema)}._private_known_crontabs order by identifier"
    )
    return {row["identifier"]: row for row in rows}


async def set_known(
    conn: asyncpg.Connection,
    schema: str,
    identifier: str,
    known_since: datetime,
    last_execution: datetime | None,
) -> None:
    await conn.execute(
        f"insert into {quote_ident(schema)}._private_known_crontabs "
        "(identifier, known_since, last_execution) values ($1, $2, $3)",
        identifier,
        known_since,
        last_execution,
    )


async def test_tick_adds_due_jobs_with_payload_and_options(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    clock = Clock(at(2024, 5, 1, 11, 59, 30))
    events = Events()
    cron = scheduler(
        pool,
        schema,
        "* * * * * every ?queue=q&max=3&priority=4 {a: 1, nested: {b: [1, 2]}}\n"
        "0 12 * * * noon ?jobKey=noon-key\n"
        "30 * * * * half\n",
        clock,
        events,
    )
    await cron.start(timer=False)
    assert events.names() == ["cron:starting", "cron:started"]
    assert cron.next_tick == at(2024, 5, 1, 12, 0)
    assert await cron.tick(at(2024, 5, 1, 12, 0, 0, 1000)) == 2
    assert cron.next_tick == at(2024, 5, 1, 12, 1)
    jobs = sorted(await cron_jobs(conn, schema), key=lambda job: job["task"])
    assert [job["task"] for job in jobs] == ["every", "noon"]
    every, noon = jobs
    assert every["payload"] == {
        "a": 1,
        "nested": {"b": [1, 2]},
        "_cron": {"ts": "2024-05-01T12:00:00.000Z", "backfilled": False},
    }
    assert every["run_at"] == at(2024, 5, 1, 12, 0)
    assert (every["queue_name"], every["max_attempts"], every["priority"]) == ("q", 3, 4)
    assert noon["payload"] == {"_cron": {"ts": "2024-05-01T12:00:00.000Z", "backfilled": False}}
    assert (noon["key"], noon["max_attempts"], noon["priority"]) == ("noon-key", 25, 0)
    schedule_event = events.of("cron:schedule")[0]
    assert schedule_event["timestamp"] == at(2024, 5, 1, 12, 0)
    assert [item.identifier for item in schedule_event["items"]] == ["every", "noon"]
    rows = await known(conn, schema)
    assert rows["every"]["last_execution"] == at(2024, 5, 1, 12, 0)
    assert rows["half"]["last_execution"] is None
    # A minute nothing is due in touches nothing and runs no statement.
    cron.items = [item for item in cron.items if item.identifier == "half"]
    assert await cron.tick(at(2024, 5, 1, 12, 1, 0, 500)) == 0
    assert await cron.tick(at(2024, 5, 1, 12, 30, 0, 500)) == 1  # overdue, no fill: current only


async def test_start_registers_unknown_identifiers_without_touching_known_ones(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    old = at(2024, 1, 1)
    await set_known(conn, schema, "old", old, at(2024, 1, 2))
    start = at(2024, 5, 1, 12, 0, 30)
    cron = scheduler(pool, schema, "* * * * * old\n* * * * * new", Clock(start))
    await cron.start(timer=False)
    rows = await known(conn, schema)
    assert (rows["old"]["known_since"], rows["old"]["last_execution"]) == (old, at(2024, 1, 2))
    assert (rows["new"]["known_since"], rows["new"]["last_execution"]) == (start, None)
    assert await cron_jobs(conn, schema) == []  # no fill: no backfill
    assert cron.next_tick == at(2024, 5, 1, 12, 1)


async def test_backfill_only_for_known_identifiers_within_fill(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    start = at(2024, 5, 1, 12, 0, 30)
    # Known, ran 30 minutes ago, fill 10m: the last 10 minutes only.
    await set_known(conn, schema, "recent", at(2024, 4, 1), start - timedelta(minutes=30))
    # Known, ran 3 minutes ago, fill 1h: from its last execution, not the whole hour.
    await set_known(conn, schema, "short", at(2024, 4, 1), at(2024, 5, 1, 11, 57))
    # Known since 5 minutes ago, never ran, fill 1h: from when it became known.
    await set_known(conn, schema, "young", at(2024, 5, 1, 11, 55, 10), None)
    # Known, no fill: nothing.
    await set_known(conn, schema, "nofill", at(2024, 4, 1), at(2024, 4, 30))
    # Hourly, known for days, fill 3h: 10:00, 11:00 and 12:00 (12:00 < start).
    await set_known(conn, schema, "hourly", at(2024, 4, 1), at(2024, 4, 2))
    events = Events()
    cron = scheduler(
        pool,
        schema,
        "* * * * * recent ?fill=10m\n"
        "* * * * * short ?fill=1h\n"
        "* * * * * young ?fill=1h\n"
        "* * * * * nofill\n"
        "0 * * * * hourly ?fill=3h\n"
        "* * * * * unknown ?fill=1d\n",
        Clock(start),
        events,
    )
    await cron.start(timer=False)

    def minutes(*values: tuple[int, int]) -> list[tuple[str, bool]]:
        return [(f"2024-05-01T{h:02d}:{m:02d}:00.000Z", True) for h, m in values]

    assert await stamps(conn, schema, "recent") == minutes(
        *((11, m) for m in range(51, 60)), (12, 0)
    )
    assert await stamps(conn, schema, "short") == minutes((11, 58), (11, 59), (12, 0))
    assert await stamps(conn, schema, "young") == minutes(
        *((11, m) for m in range(56, 60)), (12, 0)
    )
    assert await stamps(conn, schema, "hourly") == minutes((10, 0), (11, 0), (12, 0))
    assert await stamps(conn, schema, "nofill") == []
    assert await stamps(conn, schema, "unknown") == []
    assert (await known(conn, schema))["recent"]["last_execution"] == at(2024, 5, 1, 12, 0)
    backfills = events.of("cron:backfill")
    assert backfills[0]["timestamp"] == at(2024, 5, 1, 10, 0)
    assert [item.identifier for item in backfills[-1]["items"]] == [
        "recent",
        "short",
        "young",
        "hourly",
    ]
    assert events.names()[-1] == "cron:started"
    # The first tick carries on at 12:01; the minutes already filled never repeat.
    assert await cron.tick(at(2024, 5, 1, 12, 1, 0, 1)) == 5  # hourly is not due


async def test_backfill_of_a_week_is_one_pass(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    start = at(2024, 5, 8, 0, 0)
    await set_known(conn, schema, "busy", at(2024, 1, 1), at(2024, 1, 1))
    await set_known(conn, schema, "keyed", at(2024, 1, 1), at(2024, 1, 1))
    cron = scheduler(
        pool,
        schema,
        "* * * * * busy ?fill=1w\n* * * * * keyed ?fill=6h&jobKey=keyed",
        Clock(start),
    )
    await cron.start(timer=False)
    jobs = await cron_jobs(conn, schema)
    busy = [job["ts"] for job in jobs if job["task"] == "busy"]
    assert len(busy) == 7 * 24 * 60 == len(set(busy))
    assert (busy[0], busy[-1]) == ("2024-05-01T00:00:00.000Z", "2024-05-07T23:59:00.000Z")
    # With a job key each minute replaces the previous job (as in graphile-worker):
    # one job, the newest minute, after 360 add_job calls.
    (keyed,) = [job for job in jobs if job["task"] == "keyed"]
    assert keyed["ts"] == "2024-05-07T23:59:00.000Z" and keyed["revision"] == 359


async def test_three_schedulers_racing_schedule_each_minute_once(
    database_url: str, utils: WorkerUtils, schema: str, conn: asyncpg.Connection
) -> None:
    crontab = "* * * * * every ?fill=10m\n*/2 * * * * even ?fill=10m\n0 * * * * hourly ?fill=1h"
    clock = Clock(at(2024, 5, 1, 12, 0, 30))
    pools = [await create_pool(database_url, min_size=2, max_size=2) for _ in range(4)]
    try:
        crons = [scheduler(p, schema, crontab, clock) for p in pools]
        await asyncio.gather(*(cron.start(timer=False) for cron in crons[:3]))
        racers, late = crons[:3], crons[3]
        await late.start(timer=False)
        for minute in range(1, 21):
            now = at(2024, 5, 1, 12, minute, 0, 5000)
            ticks = [cron.tick(now) for cron in racers for _ in range(2)]
            if minute in (5, 20):
                ticks.append(late.tick(now))  # overdue: catches up 12:01.. while others tick
            await asyncio.gather(*ticks)
        jobs = await cron_jobs(conn, schema)
        pairs = [(job["task"], job["ts"]) for job in jobs]
        assert len(pairs) == len(set(pairs))
        assert sum(task == "every" for task, _ in pairs) == 20
        assert sum(task == "even" for task, _ in pairs) == 10
        assert sum(task == "hourly" for task, _ in pairs) == 0
        assert [ts for task, ts in pairs if task == "every"] == sorted(
            f"2024-05-01T12:{m:02d}:00.000Z" for m in range(1, 21)
        )
    finally:
        for p in pools:
            await p.close()


async def test_minute_taken_by_another_worker_is_skipped(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    """graphile-worker (or any pool) that scheduled a minute set last_execution to it."""
    await set_known(conn, schema, "shared", at(2024, 1, 1), at(2024, 5, 1, 12, 1))
    cron = scheduler(pool, schema, "* * * * * shared", Clock(at(2024, 5, 1, 12, 0, 30)))
    await cron.start(timer=False)
    assert await cron.tick(at(2024, 5, 1, 12, 1)) == 0
    assert await cron.tick(at(2024, 5, 1, 12, 2)) == 1


async def test_overdue_timer_catches_up_inside_fill_only(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    events = Events()
    cron = scheduler(
        pool,
        schema,
        "* * * * * wide ?fill=1h\n* * * * * narrow ?fill=2m\n* * * * * plain\n*/3 * * * * sparse",
        Clock(at(2024, 5, 1, 11, 59, 59)),
        events,
    )
    await cron.start(timer=False)
    assert await cron.tick(at(2024, 5, 1, 12, 0, 0, 2000)) == 4
    # The event loop stalled: the 12:01 timer fires at 12:05:10.
    added = await cron.tick(at(2024, 5, 1, 12, 5, 10))
    overdue = events.of("cron:overdueTimer")
    assert len(overdue) == 1
    assert overdue[0]["expected"] == at(2024, 5, 1, 12, 1)
    assert overdue[0]["current"] == at(2024, 5, 1, 12, 5, 10)
    wide = [(f"2024-05-01T12:0{m}:00.000Z", True) for m in range(1, 5)]
    assert await stamps(conn, schema, "wide") == [
        ("2024-05-01T12:00:00.000Z", False),
        *wide,
        ("2024-05-01T12:05:00.000Z", False),
    ]
    # 2 minutes before 12:05:10 is 12:03:10: only 12:04 is inside the window.
    assert await stamps(conn, schema, "narrow") == [
        ("2024-05-01T12:00:00.000Z", False),
        ("2024-05-01T12:04:00.000Z", True),
        ("2024-05-01T12:05:00.000Z", False),
    ]
    assert await stamps(conn, schema, "plain") == [
        ("2024-05-01T12:00:00.000Z", False),
        ("2024-05-01T12:05:00.000Z", False),
    ]
    assert await stamps(conn, schema, "sparse") == [("2024-05-01T12:00:00.000Z", False)]
    assert added == 8
    assert cron.next_tick == at(2024, 5, 1, 12, 6)
    assert [event["timestamp"] for event in events.of("cron:backfill")] == [
        at(2024, 5, 1, 12, m) for m in range(1, 5)
    ]


async def test_premature_timer_waits_and_never_double_fires(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    events = Events()
    cron = scheduler(pool, schema, "* * * * * t", Clock(at(2024, 5, 1, 12, 0, 30)), events)
    other = scheduler(pool, schema, "* * * * * t", Clock(at(2024, 5, 1, 12, 0, 30)))
    await cron.start(timer=False)
    await other.start(timer=False)
    assert await cron.tick(at(2024, 5, 1, 12, 1, 0, 1000)) == 1
    # The clock steps back 40 s: the 12:02 timer finds 12:01:20.
    assert await cron.tick(at(2024, 5, 1, 12, 1, 20)) == 0
    premature = events.of("cron:prematureTimer")
    assert premature[0]["expected"] == at(2024, 5, 1, 12, 2)
    assert premature[0]["current"] == at(2024, 5, 1, 12, 1, 20)
    assert cron.next_tick == at(2024, 5, 1, 12, 2)
    # Another pool whose clock is behind tries 12:01 again: already taken.
    assert await other.tick(at(2024, 5, 1, 12, 1, 0, 9000)) == 0
    assert await cron.tick(at(2024, 5, 1, 12, 2, 0, 1000)) == 1
    assert await stamps(conn, schema, "t") == [
        ("2024-05-01T12:01:00.000Z", False),
        ("2024-05-01T12:02:00.000Z", False),
    ]


async def _drive(cron: CronScheduler, start: datetime, minutes: int) -> None:
    for minute in range(minutes):
        await cron.tick(start + minute * MINUTE + timedelta(milliseconds=1))


async def test_scheduler_across_dst_gap_and_overlap(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    crontab = "30 2 * * * daily ?tz=Europe/Paris\n0 * * * * hourly ?tz=Europe/Paris"
    spring = scheduler(pool, schema, crontab, Clock(at(2024, 3, 30, 23, 59, 30)))
    await spring.start(timer=False)
    await _drive(spring, at(2024, 3, 31, 0, 0), 4 * 60)
    assert await stamps(conn, schema, "daily") == [("2024-03-31T01:00:00.000Z", False)]
    assert [ts for ts, _ in await stamps(conn, schema, "hourly")] == [
        "2024-03-31T00:00:00.000Z",  # 01:00 CET
        "2024-03-31T01:00:00.000Z",  # 03:00 CEST: 02:00 never happened, one job for both
        "2024-03-31T02:00:00.000Z",
        "2024-03-31T03:00:00.000Z",
    ]
    await conn.execute(f"delete from {quote_ident(schema)}._private_jobs")
    autumn = scheduler(pool, schema, crontab, Clock(at(2024, 10, 26, 23, 59, 30)))
    await autumn.start(timer=False)
    await _drive(autumn, at(2024, 10, 27, 0, 0), 4 * 60)
    assert await stamps(conn, schema, "daily") == [("2024-10-27T00:30:00.000Z", False)]
    assert [ts for ts, _ in await stamps(conn, schema, "hourly")] == [
        "2024-10-27T00:00:00.000Z",  # 02:00 CEST; the second 02:00 (CET) does not fire
        "2024-10-27T02:00:00.000Z",  # 03:00 CET
        "2024-10-27T03:00:00.000Z",
    ]


async def test_deleted_known_row_is_recreated_and_still_once(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    cron = scheduler(pool, schema, "* * * * * t", Clock(at(2024, 5, 1, 12, 0, 30)))
    await cron.start(timer=False)
    await conn.execute(f"delete from {quote_ident(schema)}._private_known_crontabs")
    assert await cron.tick(at(2024, 5, 1, 12, 1)) == 1
    row = (await known(conn, schema))["t"]
    assert row["last_execution"] == at(2024, 5, 1, 12, 1)
    cron._expected = at(2024, 5, 1, 12, 1)  # replay the same minute: nothing
    assert await cron.tick(at(2024, 5, 1, 12, 1)) == 0


async def test_failed_tick_keeps_its_minute_for_the_retry(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    cron = scheduler(pool, schema, "* * * * * t", Clock(at(2024, 5, 1, 12, 0, 30)))
    await cron.start(timer=False)

    class Broken:
        async def fetch(self, *args: Any) -> Any:
            raise asyncpg.PostgresConnectionError("connection lost")

    cron.pool = Broken()  # type: ignore[assignment]
    with pytest.raises(asyncpg.PostgresConnectionError):
        await cron.tick(at(2024, 5, 1, 12, 1))
    assert cron.next_tick == at(2024, 5, 1, 12, 1)
    cron.pool = pool
    assert await cron.tick(at(2024, 5, 1, 12, 1, 2)) == 1


async def test_tick_before_start_and_double_start_are_errors(
    pool: asyncpg.Pool, schema: str
) -> None:
    cron = scheduler(pool, schema, "* * * * * t", Clock(at(2024, 5, 1, 12)))
    with pytest.raises(RuntimeError):
        await cron.tick()
    await cron.start(timer=False)
    with pytest.raises(RuntimeError):
        await cron.start()
    await cron.stop()
    await cron.stop()


class ShiftedClock:
    """Real time, shifted so that a chosen instant is 'now' when the test begins."""

    def __init__(self, now: datetime) -> None:
        self.offset = now - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_real_timer_fires_on_the_next_minute_boundary(
    pool: asyncpg.Pool, schema: str, conn: asyncpg.Connection
) -> None:
    events = Events()
    clock = ShiftedClock(at(2024, 5, 1, 12, 0, 59, 700000))
    cron = scheduler(pool, schema, "* * * * * t {a: 1}", clock, events)  # type: ignore[arg-type]
    await cron.start()
    try:
        fired = await events.wait_for("cron:schedule", timeout=10)
        assert fired["timestamp"] == at(2024, 5, 1, 12, 1)

        async def job_written() -> None:
            while not await cron_jobs(conn, schema):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(job_written(), 10)
    finally:
        await cron.stop()
    (job,) = await cron_jobs(conn, schema)
    assert job["payload"] == {
        "a": 1,
        "_cron": {"ts": "2024-05-01T12:01:00.000Z", "backfilled": False},
    }
    assert "cron:prematureTimer" not in events.names()


async def test_real_timer_reports_a_premature_firing(pool: asyncpg.Pool, schema: str) -> None:
    events = Events()
    clock = ShiftedClock(at(2024, 5, 1, 12, 0, 59, 800000))
    cron = scheduler(pool, schema, "* * * * * t", clock, events)  # type: ignore[arg-type]
    await cron.start()
    try:
        await asyncio.sleep(0)  # let the timer compute its wait from the true clock
        clock.offset -= timedelta(seconds=30)  # the clock steps back while the timer waits
        premature = await events.wait_for("cron:prematureTimer", timeout=10)
        assert premature["expected"] == at(2024, 5, 1, 12, 1)
        assert "cron:schedule" not in events.names()
    finally:
        await cron.stop()
