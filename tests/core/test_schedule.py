"""schedule: backoff, cron parsing, matching and next-fire search, against each twin."""

from __future__ import annotations

import json
import math
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kongtask.errors import CronSyntaxError

from .conftest import Twin

UTC = timezone.utc
GOLDEN = Path(__file__).parent / "data" / "graphile_cron_golden.json"
MINUTE = timedelta(minutes=1)


def bits(*values: int) -> int:
    return sum(1 << value for value in set(values))


def reference_day_ok(schedule: Any, dt: datetime) -> bool:
    """graphile-worker's day rule written out plainly, on the parsed bit sets."""
    if not schedule.months >> dt.month & 1:
        return False
    dom_ok = bool(schedule.days >> dt.day & 1)
    dow_ok = bool(schedule.weekdays >> ((dt.weekday() + 1) % 7) & 1)
    dom_restricted = schedule.days != bits(*range(1, 32))
    dow_restricted = schedule.weekdays != bits(*range(7))
    if dom_restricted and dow_restricted:
        return dom_ok or dow_ok
    if dom_restricted:
        return dom_ok
    if dow_restricted:
        return dow_ok
    return True


def reference_matches(schedule: Any, dt: datetime) -> bool:
    return bool(
        schedule.minutes >> dt.minute & 1
        and schedule.hours >> dt.hour & 1
        and reference_day_ok(schedule, dt)
    )


def reference_next(schedule: Any, after: datetime, days: int = 3000) -> datetime | None:
    """Minute-by-minute search (days that cannot match skipped whole), for comparison."""
    moment = after.replace(second=0, microsecond=0) + MINUTE
    end = moment + timedelta(days=days)
    while moment < end:
        if not reference_day_ok(schedule, moment):
            moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
            continue
        if reference_matches(schedule, moment):
            return moment
        moment += MINUTE
    return None


# --- backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [
        (0, 1.0),
        (1, math.e),
        (2, math.exp(2)),
        (9, math.exp(9)),
        (10, math.exp(10)),
        (11, math.exp(10)),
        (25, math.exp(10)),
        (10**100, math.exp(10)),
        (-1, math.exp(-1)),
        (-1000, math.exp(-1000)),
        (-(10**100), 0.0),
        (True, math.e),
    ],
)
def test_backoff_seconds(twin: Twin, attempts: int, seconds: float) -> None:
    assert twin.schedule.backoff_seconds(attempts) == seconds


@pytest.mark.parametrize("attempts", [1.0, "3", None])
def test_backoff_needs_an_integer(twin: Twin, attempts: Any) -> None:
    with pytest.raises(TypeError):
        twin.schedule.backoff_seconds(attempts)


# --- parse_field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("*", 0, bits(*range(60))),
        ("0", 0, bits(0)),
        ("59", 0, bits(59)),
        ("*/15", 0, bits(0, 15, 30, 45)),
        ("*/7", 0, bits(*range(0, 60, 7))),
        ("*/60", 0, bits(0)),
        ("*/1000000000000000000000", 0, bits(0)),
        ("5/20", 0, bits(5, 25, 45)),
        ("10-20/5", 0, bits(10, 15, 20)),
        ("10-21/5", 0, bits(10, 15, 20)),
        ("1,2,3,2,1", 0, bits(1, 2, 3)),
        ("007", 0, bits(7)),
        ("5-5", 0, bits(5)),
        ("0-59", 0, bits(*range(60))),
        ("*", 1, bits(*range(24))),
        ("9-17", 1, bits(*range(9, 18))),
        ("*/6,23", 1, bits(0, 6, 12, 18, 23)),
        ("*", 2, bits(*range(1, 32))),
        ("*/2", 2, bits(*range(1, 32, 2))),
        ("31", 2, bits(31)),
        ("1,15,31", 2, bits(1, 15, 31)),
        ("20/5", 2, bits(20, 25, 30)),
        ("*", 3, bits(*range(1, 13))),
        ("*/3", 3, bits(1, 4, 7, 10)),
        ("2", 3, bits(2)),
        ("*", 4, bits(*range(7))),
        ("7", 4, bits(0)),
        ("0,7", 4, bits(0)),
        ("5-7", 4, bits(5, 6, 0)),
        ("0-7", 4, bits(*range(7))),
        ("1-5", 4, bits(1, 2, 3, 4, 5)),
        ("1/2", 4, bits(1, 3, 5)),
        ("7/3", 4, bits(0)),
        ("*/2", 4, bits(0, 2, 4, 6)),
        ("1-7/2", 4, bits(1, 3, 5, 0)),
    ],
)
def test_parse_field(twin: Twin, text: str, kind: int, expected: int) -> None:
    assert twin.schedule.parse_field(text, kind) == expected


@pytest.mark.parametrize(
    ("text", "kind", "message", "column"),
    [
        ("60", 0, "minute value 60 in '60' is out of range: expected 0-59", 1),
        ("1,2,99", 0, "minute value 99 in '99' is out of range: expected 0-59", 5),
        ("24", 1, "hour value 24 in '24' is out of range: expected 0-23", 1),
        ("0", 2, "day of month value 0 in '0' is out of range: expected 1-31", 1),
        ("1-32", 2, "day of month value 32 in '1-32' is out of range: expected 1-31", 1),
        ("13", 3, "month value 13 in '13' is out of range: expected 1-12", 1),
        ("0/2", 3, "month value 0 in '0/2' is out of range: expected 1-12", 1),
        ("8", 4, "day of week value 8 in '8' is out of range: expected 0-7", 1),
        (
            "99999999999999999999",
            1,
            "hour value 99999999999999999999 in '99999999999999999999' is out of range: "
            "expected 0-23",
            1,
        ),
        ("*/0", 0, "minute step in '*/0' must be at least 1", 1),
        ("1-5/00", 1, "hour step in '1-5/00' must be at least 1", 1),
        ("5-1", 0, "minute range '5-1' is reversed: expected start <= end", 1),
        ("1,6-2", 4, "day of week range '6-2' is reversed: expected start <= end", 3),
        ("", 0, "empty item in minute field '': expected a number, range or '*'", 1),
        ("1,,2", 1, "empty item in hour field '1,,2': expected a number, range or '*'", 3),
        ("1,", 2, "empty item in day of month field '1,': expected a number, range or '*'", 3),
        (",1", 3, "empty item in month field ',1': expected a number, range or '*'", 1),
        ("x", 0, "invalid minute 'x': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("1,jan", 3, "invalid month 'jan': expected N, A-B, *, */S, A-B/S or N/S", 3),
        ("mon", 4, "invalid day of week 'mon': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("-1", 0, "invalid minute '-1': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("1-", 0, "invalid minute '1-': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("1-2-3", 0, "invalid minute '1-2-3': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("*/", 0, "invalid minute '*/': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("*/2/2", 0, "invalid minute '*/2/2': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("*/-1", 0, "invalid minute '*/-1': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("**", 0, "invalid minute '**': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("*-5", 0, "invalid minute '*-5': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("1.5", 0, "invalid minute '1.5': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("\u0661", 0, "invalid minute '\u0661': expected N, A-B, *, */S, A-B/S or N/S", 1),
        ("²", 0, "invalid minute '²': expected N, A-B, *, */S, A-B/S or N/S", 1),
        (" 1", 0, "invalid minute ' 1': expected N, A-B, *, */S, A-B/S or N/S", 1),
    ],
)
def test_parse_field_errors(twin: Twin, text: str, kind: int, message: str, column: int) -> None:
    with pytest.raises(CronSyntaxError) as info:
        twin.schedule.parse_field(text, kind)
    assert info.value.message == message
    assert info.value.column == column
    assert info.value.line is None
    assert str(info.value) == message


def test_parse_field_arguments(twin: Twin) -> None:
    for kind in (-1, 5, "0", 1.0, True):
        with pytest.raises(ValueError, match="kind must be"):
            twin.schedule.parse_field("*", kind)
    with pytest.raises(TypeError):
        twin.schedule.parse_field(5, 0)


# --- parse_cron -----------------------------------------------------------------------------


def test_parse_cron(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("*/15 9-17 * * 1-5")
    assert schedule.minutes == bits(0, 15, 30, 45)
    assert schedule.hours == bits(*range(9, 18))
    assert schedule.days == bits(*range(1, 32))
    assert schedule.months == bits(*range(1, 13))
    assert schedule.weekdays == bits(1, 2, 3, 4, 5)
    assert schedule.source == "*/15 9-17 * * 1-5"
    assert repr(schedule) == "CronSchedule('*/15 9-17 * * 1-5')"
    assert schedule.never is False


def test_parse_cron_whitespace(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("  0\t4  *   * \t *\n")
    assert schedule.source == "0 4 * * *"
    assert schedule == twin.schedule.parse_cron("0 4 * * *")


@pytest.mark.parametrize(
    ("expression", "message", "column"),
    [
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0 in ''", None),
        (
            "* * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), got 4 in '* * * *'",
            None,
        ),
        (
            "* * * * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), got 6 in "
            "'* * * * * *'",
            11,
        ),
        (
            "0 4 * * * task",
            "expected 5 fields (minute hour day-of-month month day-of-week), got 6 "
            "in '0 4 * * * task'",
            11,
        ),
        (
            "@daily",
            "expected 5 fields (minute hour day-of-month month day-of-week), got 1 in '@daily'",
            None,
        ),
        ("0 0 1,32 * *", "day of month value 32 in '32' is out of range: expected 1-31", 7),
        ("  0   25 * * *", "hour value 25 in '25' is out of range: expected 0-23", 7),
        ("0 0 * 0-13/2 *", "month value 0 in '0-13/2' is out of range: expected 1-12", 7),
        ("0 0 * * 1,2,x", "invalid day of week 'x': expected N, A-B, *, */S, A-B/S or N/S", 13),
        ("0 0 * JAN *", "invalid month 'JAN': expected N, A-B, *, */S, A-B/S or N/S", 7),
        ("0,,5 * * * *", "empty item in minute field '0,,5': expected a number, range or '*'", 3),
        ("* */0 * * *", "hour step in '*/0' must be at least 1", 3),
        ("* * 20-10 * *", "day of month range '20-10' is reversed: expected start <= end", 5),
    ],
)
def test_parse_cron_errors(twin: Twin, expression: str, message: str, column: int | None) -> None:
    with pytest.raises(CronSyntaxError) as info:
        twin.schedule.parse_cron(expression)
    assert info.value.message == message
    assert info.value.column == column
    assert isinstance(info.value, ValueError)


def test_parse_cron_needs_a_string(twin: Twin) -> None:
    with pytest.raises(TypeError):
        twin.schedule.parse_cron(None)


def test_cron_schedule_equality_hash_and_immutability(twin: Twin) -> None:
    sunday = twin.schedule.parse_cron("0 0 * * 0")
    seven = twin.schedule.parse_cron("0 0 * * 7")
    assert sunday == seven
    assert hash(sunday) == hash(seven)
    assert sunday.source != seven.source
    assert sunday != twin.schedule.parse_cron("0 0 * * 1")
    assert sunday != "0 0 * * 0"
    assert len({sunday, seven, twin.schedule.parse_cron("0 0 * * 1")}) == 2
    with pytest.raises(AttributeError):
        sunday.minutes = 0
    with pytest.raises(AttributeError):
        sunday.source = "x"
    assert pickle.loads(pickle.dumps(sunday)) == sunday
    assert pickle.loads(pickle.dumps(sunday)).source == "0 0 * * 0"


def test_cron_schedule_constructor(twin: Twin) -> None:
    cls = twin.schedule.CronSchedule
    built = cls(
        bits(0), bits(4), bits(*range(1, 32)), bits(*range(1, 13)), bits(*range(7)), "0 4 * * *"
    )
    assert built == twin.schedule.parse_cron("0 4 * * *")
    assert built.source == "0 4 * * *"
    bad_masks = [
        (0, 1, 2, 2, 1),
        (1 << 60, 1, 2, 2, 1),
        (1, 1 << 24, 2, 2, 1),
        (1, 1, 1, 2, 1),
        (1, 1, 2, 1, 1),
        (1, 1, 2, 1 << 13, 1),
        (1, 1, 2, 2, 1 << 7),
        (-1, 1, 2, 2, 1),
    ]
    for masks in bad_masks:
        with pytest.raises(ValueError, match="is empty or out of range"):
            cls(*masks)
    with pytest.raises(TypeError):
        cls(1.0, 1, 2, 2, 1)


# --- matches ----------------------------------------------------------------------------------


def test_matches_wall_clock_fields(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("30 4 * * *")
    assert schedule.matches(datetime(2026, 1, 1, 4, 30))
    assert schedule.matches(datetime(2026, 1, 1, 4, 30, 59, 999999))
    assert not schedule.matches(datetime(2026, 1, 1, 4, 31))
    tokyo = datetime(2026, 1, 1, 4, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert schedule.matches(tokyo)
    assert not schedule.matches(tokyo.astimezone(UTC))
    with pytest.raises(TypeError):
        schedule.matches("2026-01-01T04:30")


@pytest.mark.parametrize(
    ("expression", "day", "expected"),
    [
        # 2026-02-13 is a Friday, 2026-02-14 a Saturday, 2026-02-20 a Friday.
        ("0 0 13 * 5", datetime(2026, 2, 13), True),  # both restricted: either matches
        ("0 0 13 * 5", datetime(2026, 2, 20), True),
        ("0 0 13 * 5", datetime(2026, 3, 13), True),  # a Friday the 13th too
        ("0 0 13 * 5", datetime(2026, 2, 14), False),
        ("0 0 13 * *", datetime(2026, 2, 13), True),  # only day of month restricted
        ("0 0 13 * *", datetime(2026, 2, 20), False),
        ("0 0 * * 5", datetime(2026, 2, 20), True),  # only day of week restricted
        ("0 0 * * 5", datetime(2026, 2, 13), True),
        ("0 0 * * 5", datetime(2026, 2, 14), False),
        ("0 0 1-31 * 5", datetime(2026, 2, 14), False),  # 1-31 is not a restriction
        ("0 0 */1 * 5", datetime(2026, 2, 14), False),
        ("0 0 13 * 0-7", datetime(2026, 2, 14), False),  # 0-7 is not a restriction either
        ("0 0 13 * */1", datetime(2026, 2, 20), False),
        ("0 0 */2 * 6", datetime(2026, 2, 14), True),  # */2 is: OR rule, Saturday matches
        ("0 0 */2 * 6", datetime(2026, 2, 15), True),  # odd day matches
        ("0 0 */2 * 6", datetime(2026, 2, 16), False),
        ("0 0 * * 7", datetime(2026, 2, 15), True),  # 7 is Sunday
        ("0 0 * * 0", datetime(2026, 2, 15), True),
        ("0 0 29 2 *", datetime(2028, 2, 29), True),
        ("0 0 * 2 *", datetime(2026, 3, 1), False),
    ],
)
def test_day_of_month_and_day_of_week(
    twin: Twin, expression: str, day: datetime, expected: bool
) -> None:
    schedule = twin.schedule.parse_cron(expression)
    assert schedule.matches(day) is expected
    assert reference_matches(schedule, day) is expected


def test_matches_agrees_with_graphile_worker(twin: Twin) -> None:
    """Replays graphile-worker 0.17.3's own matcher output.

    data/make_graphile_cron_golden.js wrote it with the real package; this keeps
    the test free of Node.
    """
    golden = json.loads(GOLDEN.read_text())
    assert golden["graphile_worker"] == "0.17.3"
    moments = [datetime.fromisoformat(text) for text in golden["moments"]]
    positives = 0
    for case in golden["cases"]:
        schedule = twin.schedule.parse_cron(case["expression"])
        got = "".join("1" if schedule.matches(moment) else "0" for moment in moments)
        assert got == case["matches"], case["expression"]
        positives += got.count("1")
    assert positives > 1000  # the data exercises matches, not only misses


# --- next_fire ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 1)),
        ("* * * * *", datetime(2026, 1, 1, 0, 0, 59, 999999), datetime(2026, 1, 1, 0, 1)),
        ("0 4 * * *", datetime(2026, 1, 1, 4, 0), datetime(2026, 1, 2, 4, 0)),
        ("0 4 * * *", datetime(2026, 1, 1, 3, 59, 59), datetime(2026, 1, 1, 4, 0)),
        ("59 23 31 12 *", datetime(2026, 12, 31, 23, 59), datetime(2027, 12, 31, 23, 59)),
        ("0 0 1 1 *", datetime(2026, 12, 31, 23, 59, 30), datetime(2027, 1, 1, 0, 0)),
        ("* * * * *", datetime(2026, 12, 31, 23, 59), datetime(2027, 1, 1, 0, 0)),
        ("0 0 29 2 *", datetime(2024, 2, 29, 0, 0), datetime(2028, 2, 29, 0, 0)),
        ("0 0 29 2 *", datetime(2025, 1, 1), datetime(2028, 2, 29, 0, 0)),
        ("0 0 29 2 *", datetime(2096, 3, 1), datetime(2104, 2, 29, 0, 0)),  # 2100 is no leap year
        ("0 0 29 2 *", datetime(2399, 3, 1), datetime(2400, 2, 29, 0, 0)),  # 2400 is one
        ("0 0 31 * *", datetime(2026, 1, 31, 0, 0), datetime(2026, 3, 31, 0, 0)),
        ("0 0 31 * *", datetime(2026, 3, 31, 0, 0), datetime(2026, 5, 31, 0, 0)),
        ("0 0 30 * *", datetime(2026, 1, 30, 0, 0), datetime(2026, 3, 30, 0, 0)),
        ("0 12 28-31 2 *", datetime(2026, 2, 28, 12, 0), datetime(2027, 2, 28, 12, 0)),
        ("0 12 28-31 2 *", datetime(2027, 2, 28, 12, 0), datetime(2028, 2, 28, 12, 0)),
        ("0 12 28-31 2 *", datetime(2028, 2, 28, 12, 0), datetime(2028, 2, 29, 12, 0)),
        ("0 0 13 * 5", datetime(2026, 2, 13, 0, 0), datetime(2026, 2, 20, 0, 0)),
        ("0 0 13 * 5", datetime(2026, 2, 27, 0, 0), datetime(2026, 3, 6, 0, 0)),
        ("0 0 13 * 5", datetime(2026, 3, 12, 0, 0), datetime(2026, 3, 13, 0, 0)),
        ("*/20 9-17 * * 1-5", datetime(2026, 1, 2, 17, 40), datetime(2026, 1, 5, 9, 0)),
        ("0 0 * * 0", datetime(2026, 12, 31), datetime(2027, 1, 3)),
        ("5 * * 3 *", datetime(2026, 3, 31, 23, 5), datetime(2027, 3, 1, 0, 5)),
        ("0 0 1 */3 *", datetime(2026, 10, 1), datetime(2027, 1, 1)),
        ("0 0 * * *", datetime(9999, 12, 30, 12), datetime(9999, 12, 31)),
    ],
)
def test_next_fire(twin: Twin, expression: str, after: datetime, expected: datetime) -> None:
    schedule = twin.schedule.parse_cron(expression)
    got = schedule.next_fire(after)
    assert got == expected
    assert type(got) is datetime
    assert got.tzinfo is None
    assert schedule.matches(got)


def test_next_fire_keeps_tzinfo(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("0 9 * * *")
    zone = ZoneInfo("Europe/Berlin")
    got = schedule.next_fire(datetime(2026, 3, 28, 10, 0, tzinfo=zone))
    assert got == datetime(2026, 3, 29, 9, 0, tzinfo=zone)
    assert got.tzinfo is zone
    utc = schedule.next_fire(datetime(2026, 3, 28, 10, 0, tzinfo=UTC))
    assert utc.tzinfo is UTC


@pytest.mark.parametrize(
    "expression",
    ["0 0 30 2 *", "0 0 31 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 2 *", "* * 31 2,4 *"],
)
def test_impossible_expressions_raise(twin: Twin, expression: str) -> None:
    schedule = twin.schedule.parse_cron(expression)
    assert schedule.never is True
    with pytest.raises(ValueError, match="can never fire"):
        schedule.next_fire(datetime(2026, 1, 1))
    assert schedule.fire_times(datetime(2000, 1, 1), datetime(2100, 1, 1)) == []


def test_possible_only_through_the_or_rule(twin: Twin) -> None:
    # The 31st of February never comes, but with a restricted weekday the OR rule
    # makes every Monday of February a fire day.
    schedule = twin.schedule.parse_cron("0 0 31 2 1")
    assert schedule.never is False
    assert schedule.next_fire(datetime(2026, 1, 1)) == datetime(2026, 2, 2)


def test_next_fire_past_year_9999(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("0 0 1 1 *")
    with pytest.raises(ValueError, match="no fire time before year 10000"):
        schedule.next_fire(datetime(9999, 6, 1))
    with pytest.raises(TypeError):
        schedule.next_fire("2026-01-01")


@pytest.mark.parametrize(
    "expression",
    ["*/7 */5 * * *", "0 0 29 * *", "15 3 * * 6", "0 0 1,15 * 3", "1 1 */10 2-3 *", "0 0 * * *"],
)
def test_next_fire_against_reference(twin: Twin, expression: str) -> None:
    schedule = twin.schedule.parse_cron(expression)
    moment = datetime(2027, 12, 20, 22, 17, 45)
    for _ in range(40):
        expected = reference_next(schedule, moment)
        assert schedule.next_fire(moment) == expected
        moment = expected + timedelta(seconds=17)


# --- fire_times ---------------------------------------------------------------------------------


def test_fire_times_bounds(twin: Twin) -> None:
    every_15 = twin.schedule.parse_cron("*/15 * * * *")
    start = datetime(2026, 1, 1, 10, 0)
    assert every_15.fire_times(start, start + timedelta(hours=1)) == [
        start,
        start + 15 * MINUTE,
        start + 30 * MINUTE,
        start + 45 * MINUTE,
    ]
    # start with seconds is rounded up; an end with seconds includes its own minute.
    assert every_15.fire_times(start + timedelta(seconds=1), start + timedelta(minutes=45)) == [
        start + 15 * MINUTE,
        start + 30 * MINUTE,
    ]
    assert every_15.fire_times(start, start + timedelta(minutes=45, microseconds=1))[-1] == (
        start + 45 * MINUTE
    )
    assert every_15.fire_times(start, start) == []
    assert every_15.fire_times(start + MINUTE, start) == []


def test_fire_times_counts(twin: Twin) -> None:
    daily = twin.schedule.parse_cron("0 0 * * *")
    assert len(daily.fire_times(datetime(2024, 1, 1), datetime(2025, 1, 1))) == 366
    assert len(daily.fire_times(datetime(2025, 1, 1), datetime(2026, 1, 1))) == 365
    leap = twin.schedule.parse_cron("0 0 29 2 *")
    assert leap.fire_times(datetime(2000, 1, 1), datetime(2110, 1, 1)) == [
        datetime(year, 2, 29) for year in range(2000, 2110, 4) if year != 2100
    ]
    month_ends = twin.schedule.parse_cron("30 23 31 * *")
    assert [t.month for t in month_ends.fire_times(datetime(2026, 1, 1), datetime(2027, 1, 1))] == [
        1,
        3,
        5,
        7,
        8,
        10,
        12,
    ]


def test_fire_times_match_next_fire(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("*/13 */7 */3 * 2,4")
    start = datetime(2026, 11, 3, 5, 6, 7)
    times = schedule.fire_times(start, start + timedelta(days=120))
    assert times
    moment = start - MINUTE
    for expected in times:
        moment = schedule.next_fire(moment)
        assert moment == expected


def test_fire_times_time_zones(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("0 * * * *")
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 6, 1, 10, 0, tzinfo=paris)
    end_utc = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # 12:00 in Paris
    times = schedule.fire_times(start, end_utc)
    assert times == [start, start.replace(hour=11)]
    assert all(t.tzinfo is paris for t in times)
    with pytest.raises(TypeError):
        schedule.fire_times(datetime(2026, 1, 1), end_utc)
    with pytest.raises(TypeError):
        schedule.fire_times(start, datetime(2026, 6, 2))
    with pytest.raises(TypeError):
        schedule.fire_times("2026", end_utc)


def test_fire_times_across_year_end(twin: Twin) -> None:
    schedule = twin.schedule.parse_cron("0 */6 31,1 12,1 *")
    times = schedule.fire_times(datetime(2026, 12, 31, 12), datetime(2027, 1, 1, 13))
    assert times == [
        datetime(2026, 12, 31, 12),
        datetime(2026, 12, 31, 18),
        datetime(2027, 1, 1, 0),
        datetime(2027, 1, 1, 6),
        datetime(2027, 1, 1, 12),
    ]
