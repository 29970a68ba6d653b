"""Differential tests: both twins get the same random input and must agree exactly.

Agreement means the same value (compared by ``repr``, so NaN, -0.0, int vs
float and key order all count) or the same exception type, message and, for
kongtask's own errors, the same ``field``/``column``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from kongtask.errors import CronSyntaxError, InvalidJobSpec

from .conftest import Twin

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def outcome(call: Callable[[], Any]) -> tuple[str, ...]:
    """A comparable summary of what ``call`` returned or raised."""
    try:
        value = call()
    except (InvalidJobSpec, CronSyntaxError) as exc:
        event(f"raised {type(exc).__name__}")
        return (
            "raise",
            type(exc).__name__,
            str(exc),
            repr(getattr(exc, "field", None)),
            repr(getattr(exc, "column", None)),
        )
    except (ValueError, TypeError, OverflowError, KeyError) as exc:
        event(f"raised {type(exc).__name__}")
        return ("raise", type(exc).__name__, str(exc))
    event("returned")
    return ("ok", repr(value))


# --- payload text -----------------------------------------------------------------------------

weird_chars = st.sampled_from(["\ud800", "\udfff", "\u0000", "\u2028", "\x7f", '"', "\\", "🎉"])
text_values = st.text(max_size=12) | st.lists(weird_chars | st.text(max_size=3), max_size=4).map(
    "".join
)
# Integers at the edges of what orjson parses exactly ([-2**63, 2**64)).
EDGE_INTS = [
    sign * (base + delta)
    for sign in (1, -1)
    for base in (2**63, 2**64, 10**18, 10**19)
    for delta in (-1, 0, 1)
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: exercises the >64-bit fallback
    | st.sampled_from(EDGE_INTS)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text_values
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(text_values, children, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def payload_texts(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 5))
    if kind <= 1:
        return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    if kind == 2:  # damaged JSON
        text = json.dumps(draw(json_values))
        cut = draw(st.integers(0, len(text)))
        junk = draw(st.text(alphabet="[]{}\",:0123456789.eE+-tfnul \\'", max_size=4))
        return text[:cut] + junk + text[cut + draw(st.integers(0, 3)) :]
    if kind == 3:  # nesting around orjson's and the fallback's limits
        depth = draw(st.sampled_from([1, 500, 512, 513, 1023, 1024, 1025, 3000]))
        inner = draw(st.sampled_from(["1", "NaN", "12345678901234567890123", '"x"', "", "[]"]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
        return opener * depth + inner + closer * depth
    if kind == 4:  # arbitrary text, as bytes sometimes
        text = draw(
            st.text(alphabet='[]{}",:0123456789.eE+-tfnulNaIiy \\\u00e9\ud800', max_size=40)
        )
        return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text
    return draw(st.none() | st.integers() | st.dictionaries(st.text(max_size=3), st.integers()))


@SETTINGS
@given(text=payload_texts())
def test_loads_payload_agrees(both: tuple[Twin, Twin], text: Any) -> None:
    pure, compiled = both
    expected = outcome(lambda: pure.decode.loads_payload(text))
    assert outcome(lambda: compiled.decode.loads_payload(text)) == expected
    assert expected[0] == "ok"  # never raises


@SETTINGS
@given(value=json_values)
def test_valid_json_decodes_to_the_stdlib_value(both: tuple[Twin, Twin], value: Any) -> None:
    text = json.dumps(value)
    assume("NaN" not in text)  # NaN != NaN; covered by test_loads_payload_agrees
    for twin in both:
        decoded, error = twin.decode.loads_payload(text)
        assert error is None
        assert repr(decoded) == repr(json.loads(text))


flag_texts = (
    st.none()
    | st.dictionaries(st.text(max_size=5), st.just(True), max_size=4).map(json.dumps)
    | st.sampled_from(["{", "[]", "7", '{"a": true}'])
)
rows = st.tuples(
    st.integers(1, 10**12),
    st.none() | st.text(max_size=5),
    st.text(min_size=1, max_size=8),
    payload_texts(),
    st.integers(-32768, 32767),
    st.datetimes(),
    st.integers(0, 30),
    st.integers(1, 30),
    st.none() | st.text(max_size=10),
    st.datetimes(),
    st.datetimes(),
    st.none() | st.text(max_size=6),
    st.none() | st.datetimes(),
    st.none() | st.text(max_size=6),
    st.integers(0, 5),
    flag_texts,
)


def as_record(row: tuple) -> Any:
    """An asyncpg Record when asyncpg can build one here, else the tuple."""
    try:
        from asyncpg.protocol.protocol import _create_record
    except ImportError:
        return row
    return _create_record({f"c{i}": i for i in range(len(row))}, row)


@SETTINGS
@given(
    batch=st.lists(
        st.tuples(rows, st.sampled_from([tuple, list, as_record])).map(lambda p: p[1](p[0])),
        max_size=6,
    )
)
def test_decode_jobs_agrees(both: tuple[Twin, Twin], batch: list[Any]) -> None:
    pure, compiled = both
    expected = outcome(lambda: [job.as_dict() for job in pure.decode.decode_jobs(batch)])
    assert (
        outcome(lambda: [job.as_dict() for job in compiled.decode.decode_jobs(batch)]) == expected
    )
    assert expected[0] == "ok"


# --- job specs --------------------------------------------------------------------------------

ZONES = [
    timezone.utc,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-14)),
    ZoneInfo("Europe/Amsterdam"),
    ZoneInfo("America/New_York"),
    None,
]
names = (
    st.text(max_size=6)
    | st.text(min_size=126, max_size=130)
    | st.sampled_from(["task", "a\0b", "x\ud800", "é", 'q"uote', ""])
    | st.integers()
    | st.none()
)
small_ints = st.integers(-40000, 40000) | st.sampled_from([0, 1, 32767, 32768, -32768, -32769])
field_values = {
    "identifier": names,
    "payload": json_values | st.sampled_from([{1: 2}, {"s": {1}}, b"x", 2**64, [[[[[[1]]]]]]]),
    "queue_name": st.none() | names,
    "run_at": st.none()
    | st.builds(
        lambda dt, tz: dt.replace(tzinfo=tz),
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        st.sampled_from(ZONES),
    )
    | st.sampled_from([datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=3))), "2026-01-01"]),
    "max_attempts": st.none() | small_ints | st.sampled_from([True, 2.0, "3"]),
    "job_key": st.none() | names | st.text(min_size=510, max_size=514),
    "priority": st.none() | small_ints | st.sampled_from([False, 2**70]),
    "flags": st.none()
    | st.lists(st.text(max_size=4), max_size=3)
    | st.tuples(st.text(min_size=1, max_size=3))
    | st.sampled_from([["a", 1], "vip", {"a"}, ["x\0"]]),
}

job_key_modes = st.none() | st.sampled_from(["replace", "preserve_run_at", "unsafe_dedupe", "x", 1])


@st.composite
def spec_recipes(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(shape, fields): built into a JobSpec or a dict per twin."""
    valid_only = draw(st.integers(0, 3)) > 0
    fields: dict[str, Any] = {}
    for name, strategy in field_values.items():
        if valid_only:
            strategy = {
                "identifier": st.sampled_from(["task", "send_email", "é漢"]),
                "payload": json_values.filter(lambda v: "NaN" not in repr(v)),
                "queue_name": st.none() | st.sampled_from(["q", "mail"]),
                "run_at": field_values["run_at"].filter(lambda v: not isinstance(v, str)),
                "max_attempts": st.none() | st.integers(1, 32767),
                "job_key": st.none()
                | st.text(min_size=1, max_size=8).filter(lambda t: "\0" not in t),
                "priority": st.none() | st.integers(-32768, 32767),
                "flags": st.none() | st.lists(st.sampled_from(["a", "vip"]), max_size=2),
            }[name]
        if name == "identifier" or draw(st.booleans()):
            fields[name] = draw(strategy)
    shape = draw(st.sampled_from(["spec", "spec", "dict", "other"]))
    if shape == "dict" and draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(["queue", "job_key_mode"]))] = 1
    return shape, fields


def build(twin: Twin, recipe: tuple[str, dict[str, Any]]) -> Any:
    shape, fields = recipe
    if shape == "spec":
        return twin.payload.JobSpec(**fields)
    if shape == "dict":
        return dict(fields)
    return tuple(fields.values())


@SETTINGS
@given(recipes=st.lists(spec_recipes(), max_size=6))
def test_encode_specs_agrees(both: tuple[Twin, Twin], recipes: list) -> None:
    pure, compiled = both
    expected = outcome(lambda: pure.payload.encode_specs([build(pure, r) for r in recipes]))
    got = outcome(lambda: compiled.payload.encode_specs([build(compiled, r) for r in recipes]))
    assert got == expected
    if expected[0] == "ok":
        items = json.loads(pure.payload.encode_specs([build(pure, r) for r in recipes]))
        assert len(items) == len(recipes)
        assert all(set(item) <= set(field_values) for item in items)


@SETTINGS
@given(
    identifier=field_values["identifier"],
    queue_name=field_values["queue_name"],
    run_at=field_values["run_at"],
    max_attempts=field_values["max_attempts"],
    job_key=field_values["job_key"],
    job_key_mode=job_key_modes,
    priority=field_values["priority"],
    flags=field_values["flags"],
)
def test_validate_job_agrees(both: tuple[Twin, Twin], **kwargs: Any) -> None:
    pure, compiled = both
    expected = outcome(lambda: pure.payload.validate_job(**kwargs))
    assert outcome(lambda: compiled.payload.validate_job(**kwargs)) == expected


# validate_field's names, in its order, with the kind of value each takes (field_cases
# also hands each name the values of the others).
validated_values = {
    "identifier": field_values["identifier"],
    "queue_name": field_values["queue_name"],
    "run_at": field_values["run_at"],
    "max_attempts": field_values["max_attempts"],
    "job_key": field_values["job_key"],
    "job_key_mode": job_key_modes,
    "priority": field_values["priority"],
    "flags": field_values["flags"],
    "attempts": st.none() | small_ints | st.sampled_from([-1, True, 1.5, "0", 2**70]),
}
FIELD_NAMES = tuple(validated_values)  # in validate_field's order


@st.composite
def field_cases(draw: st.DrawFn) -> tuple[Any, Any]:
    """(name, value): mostly a known field with its own kind of value, sometimes not."""
    name = draw(st.sampled_from((*FIELD_NAMES, *FIELD_NAMES, "nope", "", "Flags", None, 1)))
    if name in validated_values and draw(st.integers(0, 3)):
        return name, draw(validated_values[name])
    return name, draw(st.sampled_from(list(validated_values.values())).flatmap(lambda s: s))


@SETTINGS
@given(case=field_cases(), field=st.none() | st.text(max_size=8) | st.sampled_from([None, 3]))
def test_validate_field_agrees(both: tuple[Twin, Twin], case: tuple[Any, Any], field: Any) -> None:
    pure, compiled = both
    name, value = case
    assert pure.payload.FIELD_NAMES == compiled.payload.FIELD_NAMES == FIELD_NAMES
    expected = outcome(lambda: pure.payload.validate_field(name, value, field=field))
    assert outcome(lambda: compiled.payload.validate_field(name, value, field=field)) == expected


@SETTINGS
@given(case=field_cases())
def test_validate_field_judges_as_validate_job_does(
    both: tuple[Twin, Twin], case: tuple[Any, Any]
) -> None:
    """One field through validate_field, or alone (with a good identifier) through validate_job."""
    name, value = case
    assume(name in FIELD_NAMES and name != "attempts")
    args = {"identifier": "task", name: value}
    for twin in both:
        assert outcome(lambda t=twin: t.payload.validate_field(name, value)) == outcome(
            lambda t=twin: t.payload.validate_job(**args)
        )


@SETTINGS
@given(payload=field_values["payload"], run_at=field_values["run_at"] | st.integers())
def test_encode_payload_and_run_at_agree(
    both: tuple[Twin, Twin], payload: Any, run_at: Any
) -> None:
    pure, compiled = both
    assert outcome(lambda: compiled.payload.encode_payload(payload)) == outcome(
        lambda: pure.payload.encode_payload(payload)
    )
    assert outcome(lambda: compiled.payload.encode_run_at(run_at)) == outcome(
        lambda: pure.payload.encode_run_at(run_at)
    )


# --- cron -------------------------------------------------------------------------------------

LIMITS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


@st.composite
def cron_items(draw: st.DrawFn, low: int, high: int) -> str:
    number = st.integers(low, high)
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return "*"
    step = st.integers(1, 8) | st.integers(1, high + 2)
    if choice == 1:
        return f"*/{draw(step)}"
    if choice == 2:
        return str(draw(number))
    if choice == 3:
        a = draw(number)
        return f"{a}-{draw(st.integers(a, high))}"
    if choice == 4:
        a = draw(number)
        return f"{a}-{draw(st.integers(a, high))}/{draw(step)}"
    return f"{draw(number)}/{draw(step)}"


@st.composite
def valid_expressions(draw: st.DrawFn) -> str:
    fields = []
    for low, high in LIMITS:
        items = draw(st.lists(cron_items(low, high), min_size=1, max_size=3))
        fields.append(",".join(items))
    return " ".join(fields)


@st.composite
def mangled_expressions(draw: st.DrawFn) -> str:
    text = draw(valid_expressions())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        junk = draw(st.text(alphabet="0123456789*/,- \tx99", min_size=0, max_size=3))
        text = text[:at] + junk + text[at + draw(st.integers(0, 2)) :]
    return text


@SETTINGS
@given(expression=valid_expressions() | mangled_expressions())
def test_parse_cron_agrees(both: tuple[Twin, Twin], expression: str) -> None:
    pure, compiled = both

    def summary(twin: Twin) -> Callable[[], Any]:
        def run() -> Any:
            s = twin.schedule.parse_cron(expression)
            return (s.minutes, s.hours, s.days, s.months, s.weekdays, s.source, s.never)

        return run

    assert outcome(summary(compiled)) == outcome(summary(pure))


@st.composite
def field_texts(draw: st.DrawFn) -> tuple[str, int]:
    kind = draw(st.integers(0, 4))
    if draw(st.booleans()):
        low, high = LIMITS[kind]
        items = draw(
            st.lists(
                cron_items(low, high + draw(st.sampled_from([0, 0, 1]))), min_size=1, max_size=3
            )
        )
        return ",".join(items), kind
    return draw(st.text(alphabet="0123456789*/,-x", max_size=12)), kind


@SETTINGS
@given(case=field_texts())
def test_parse_field_agrees(both: tuple[Twin, Twin], case: tuple[str, int]) -> None:
    pure, compiled = both
    text, kind = case
    assert outcome(lambda: compiled.schedule.parse_field(text, kind)) == outcome(
        lambda: pure.schedule.parse_field(text, kind)
    )


EDGE_DAYS = [(2, 28), (2, 29), (3, 1), (1, 31), (4, 30), (12, 31), (1, 1), (6, 15)]


@st.composite
def edge_moments(draw: st.DrawFn) -> datetime:
    """Timestamps around month ends, leap days and year ends."""
    year = draw(st.sampled_from([1900, 1999, 2000, 2023, 2024, 2025, 2096, 2100, 2104, 2400, 9990]))
    month, day = draw(st.sampled_from(EDGE_DAYS))
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 or year % 400 == 0)):
        day = 28
    hour = draw(st.sampled_from([0, 12, 23]))
    minute = draw(st.sampled_from([0, 1, 30, 58, 59]))
    second = draw(st.sampled_from([0, 0, 59]))
    tz = draw(st.sampled_from([None, timezone.utc, ZoneInfo("Australia/Lord_Howe")]))
    return datetime(year, month, day, hour, minute, second, tzinfo=tz)


@SETTINGS
@given(
    expression=valid_expressions()
    | st.sampled_from(["0 0 29 2 *", "0 0 31 * *", "0 0 30 2 *", "59 23 31 12 *", "0 0 13 * 5"]),
    moment=edge_moments(),
    span=st.sampled_from([0, 1, 59, 60, 61, 60 * 24, 60 * 24 * 3 + 7]),
)
def test_schedule_math_agrees(
    both: tuple[Twin, Twin], expression: str, moment: datetime, span: int
) -> None:
    pure, compiled = both
    results = []
    for twin in (pure, compiled):
        schedule = twin.schedule.parse_cron(expression)
        end = moment + timedelta(minutes=span)
        results.append(
            (
                outcome(lambda s=schedule: s.matches(moment)),
                outcome(lambda s=schedule: s.next_fire(moment)),
                outcome(lambda s=schedule, e=end: s.fire_times(moment, e)),
            )
        )
    assert results[0] == results[1]
    schedule = pure.schedule.parse_cron(expression)
    if results[0][1][0] == "ok":
        fired = schedule.next_fire(moment)
        assert fired > moment.replace(second=0)
        assert schedule.matches(fired)
        assert fired.tzinfo is moment.tzinfo
        # nothing fires in between
        between = schedule.fire_times(moment.replace(second=0) + timedelta(minutes=1), fired)
        assert between == []


@SETTINGS
@given(attempts=st.integers() | st.booleans())
def test_backoff_agrees(both: tuple[Twin, Twin], attempts: int) -> None:
    pure, compiled = both
    assert outcome(lambda: compiled.schedule.backoff_seconds(attempts)) == outcome(
        lambda: pure.schedule.backoff_seconds(attempts)
    )


def test_both_fixture_yields_both_twins(both: tuple[Twin, Twin]) -> None:
    pure, compiled = both
    assert (pure.name, compiled.name) == ("python", "cython")
    assert pure.decode.__name__.endswith("_py")
    assert not compiled.decode.__name__.endswith("_py")


# --- leased rows, id lists, timestamps ------------------------------------------------------

leased_rows = st.tuples(
    st.integers(1, 10**12),
    st.sampled_from([1, 2]),
    payload_texts(),
    st.integers(-32768, 32767),
    st.integers(-(2**62), 2**62) | st.datetimes(),
    st.integers(1, 30),
    st.integers(1, 30),
    st.none() | st.text(max_size=10),
    st.none() | st.integers(0, 2**52),
    st.none() | st.integers(0, 2**52),
    st.integers(0, 5),
    flag_texts,
    st.sampled_from(["(0,1)", "(4294967295,65535)"]),
)


@SETTINGS
@given(batch=st.lists(leased_rows | st.tuples(st.integers()), max_size=5))
def test_decode_leased_agrees(both: tuple[Twin, Twin], batch: list[Any]) -> None:
    names = {1: "one", 2: "two"}

    def jobs(twin: Twin) -> list[dict[str, Any]]:
        decoded = twin.decode.decode_leased(batch, None, names, "w", 10**15)
        return [job.as_dict() for job in decoded]

    pure, compiled = both
    assert outcome(lambda: jobs(compiled)) == outcome(lambda: jobs(pure))


id_values = st.integers(-(2**63), 2**63 - 1) | st.sampled_from(
    [2**63, -(2**63) - 1, True, 1.0, "1", None]
)


@SETTINGS
@given(ids=st.lists(id_values, max_size=8))
def test_ids_literal_agrees(both: tuple[Twin, Twin], ids: list[Any]) -> None:
    pure, compiled = both
    expected = outcome(lambda: pure.dispatch.ids_literal(ids))
    assert outcome(lambda: compiled.dispatch.ids_literal(ids)) == expected
    if expected[0] == "ok":
        assert expected[1] == repr("{" + ",".join(str(i) for i in ids) + "}")


@SETTINGS
@given(micros=st.integers(-(2**63), 2**63 - 1))
def test_pg_timestamp_agrees(both: tuple[Twin, Twin], micros: int) -> None:
    pure, compiled = both
    assert outcome(lambda: compiled.decode.pg_timestamp(micros)) == outcome(
        lambda: pure.decode.pg_timestamp(micros)
    )


def _stored_row(parts: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as add_jobs returns it: ids for queue and task, created_at/updated_at
    null when equal to the previous column."""
    id_, queue_id, task_id, row, null_created, null_updated = parts
    out = [id_, queue_id, task_id, *row[3:]]
    if null_created:
        out[9] = None
    if null_updated:
        out[10] = None
    return tuple(out)


stored_rows = st.tuples(
    st.integers(1, 10**12),
    st.none() | st.sampled_from([7, 8]),
    st.sampled_from([1, 2]),
    rows,
    st.booleans(),
    st.booleans(),
).map(_stored_row)


@SETTINGS
@given(batch=st.lists(stored_rows | st.tuples(st.integers()), max_size=5))
def test_decode_stored_agrees(both: tuple[Twin, Twin], batch: list[Any]) -> None:
    tasks, queues = {1: "one", 2: "two"}, {7: "q7"}

    def jobs(twin: Twin) -> list[dict[str, Any]]:
        return [job.as_dict() for job in twin.decode.decode_stored(batch, tasks, queues)]

    pure, compiled = both
    assert outcome(lambda: jobs(compiled)) == outcome(lambda: jobs(pure))
