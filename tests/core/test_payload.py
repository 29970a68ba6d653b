"""payload: JobSpec validation and the add_jobs JSON, against each twin."""

from __future__ import annotations

import json
import pickle
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kongtask.errors import InvalidJobSpec

from .conftest import Twin

UTC = timezone.utc
JOB_SPEC_COLUMNS = {
    "identifier",
    "payload",
    "queue_name",
    "run_at",
    "max_attempts",
    "job_key",
    "priority",
    "flags",
}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_job_key_modes(twin: Twin) -> None:
    assert twin.payload.JOB_KEY_MODES == ("replace", "preserve_run_at", "unsafe_dedupe")


# --- validate_job -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"queue_name": "q", "run_at": datetime(2026, 1, 1), "max_attempts": 1, "priority": 0},
        {"job_key": "k" * 512, "job_key_mode": "preserve_run_at", "flags": ["a", "b"]},
        {"max_attempts": 32767, "priority": -32768, "flags": ()},
        {"priority": 32767, "job_key_mode": "unsafe_dedupe", "queue_name": "q" * 128},
        {
            "run_at": datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/Paris")),
            "job_key_mode": "replace",
        },
    ],
)
def test_valid_jobs(twin: Twin, kwargs: dict[str, Any]) -> None:
    assert twin.payload.validate_job("task", **kwargs) is None
    assert twin.payload.validate_job("t" * 128, **kwargs) is None
    assert twin.payload.validate_job("tâche_é🎉", **kwargs) is None


class Weird:
    pass


INVALID = [
    ({"identifier": None}, "identifier", "must be a string, got NoneType"),
    ({"identifier": 5}, "identifier", "must be a string, got int"),
    ({"identifier": b"x"}, "identifier", "must be a string, got bytes"),
    ({"identifier": ""}, "identifier", "must not be empty"),
    ({"identifier": "x" * 129}, "identifier", "must be at most 128 characters, got 129"),
    ({"identifier": "é" * 129}, "identifier", "must be at most 128 characters, got 129"),
    ({"identifier": "a\0b"}, "identifier", "must not contain NUL characters"),
    ({"identifier": "a\ud800"}, "identifier", "must not contain lone surrogates"),
    ({"queue_name": ""}, "queue_name", "must not be empty"),
    ({"queue_name": 3}, "queue_name", "must be a string or None, got int"),
    ({"queue_name": "q" * 129}, "queue_name", "must be at most 128 characters, got 129"),
    ({"queue_name": "q\0"}, "queue_name", "must not contain NUL characters"),
    ({"queue_name": "🎉\udfff"}, "queue_name", "must not contain lone surrogates"),
    ({"job_key": ""}, "job_key", "must not be empty"),
    ({"job_key": "k" * 513}, "job_key", "must be at most 512 characters, got 513"),
    ({"job_key": "\0"}, "job_key", "must not contain NUL characters"),
    ({"job_key": ["k"]}, "job_key", "must be a string or None, got list"),
    (
        {"job_key_mode": "REPLACE"},
        "job_key_mode",
        "must be one of 'replace', 'preserve_run_at', 'unsafe_dedupe', got 'REPLACE'",
    ),
    (
        {"job_key_mode": 1},
        "job_key_mode",
        "must be one of 'replace', 'preserve_run_at', 'unsafe_dedupe', got 1",
    ),
    ({"max_attempts": 0}, "max_attempts", "must be between 1 and 32767, got 0"),
    ({"max_attempts": -1}, "max_attempts", "must be between 1 and 32767, got -1"),
    ({"max_attempts": 32768}, "max_attempts", "must be between 1 and 32767, got 32768"),
    ({"max_attempts": 2**80}, "max_attempts", f"must be between 1 and 32767, got {2**80}"),
    ({"max_attempts": True}, "max_attempts", "must be an integer, got bool"),
    ({"max_attempts": 3.0}, "max_attempts", "must be an integer, got float"),
    ({"max_attempts": "3"}, "max_attempts", "must be an integer, got str"),
    ({"priority": -32769}, "priority", "must be between -32768 and 32767, got -32769"),
    ({"priority": 32768}, "priority", "must be between -32768 and 32767, got 32768"),
    ({"priority": -(2**70)}, "priority", f"must be between -32768 and 32767, got {-(2**70)}"),
    ({"priority": False}, "priority", "must be an integer, got bool"),
    ({"priority": Weird()}, "priority", "must be an integer, got Weird"),
    ({"run_at": "2026-01-01"}, "run_at", "must be a datetime, got str"),
    ({"run_at": date(2026, 1, 1)}, "run_at", "must be a datetime, got date"),
    ({"run_at": 1767225600}, "run_at", "must be a datetime, got int"),
    ({"flags": "vip"}, "flags", "must be a list of strings, got str"),
    ({"flags": {"vip"}}, "flags", "must be a list of strings, got set"),
    ({"flags": ["a", 1]}, "flags", "item 1 must be a string, got int"),
    ({"flags": ["a", ""]}, "flags", "item 1 must not be empty"),
    ({"flags": ("a\0",)}, "flags", "item 0 must not contain NUL characters"),
    ({"flags": ["ok", "x\ud800"]}, "flags", "item 1 must not contain lone surrogates"),
]


@pytest.mark.parametrize(("kwargs", "field", "message"), INVALID)
def test_validate_job_errors(twin: Twin, kwargs: dict[str, Any], field: str, message: str) -> None:
    args = {"identifier": "task", **kwargs}
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_job(**args)
    assert info.value.field == field
    assert info.value.message == message
    assert str(info.value) == f"{field}: {message}"
    assert isinstance(info.value, ValueError)


def test_validate_job_reports_the_first_bad_field_in_signature_order(twin: Twin) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_job("", queue_name="", max_attempts=0, priority=10**6, flags=[1])
    assert info.value.field == "identifier"
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_job("ok", run_at="x", max_attempts=0, flags=[1])
    assert info.value.field == "run_at"
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_job("ok", job_key_mode="nope", priority=10**6)
    assert info.value.field == "job_key_mode"


def test_subclasses_of_str_and_int_are_accepted(twin: Twin) -> None:
    class Name(str):
        pass

    class Count(int):
        pass

    twin.payload.validate_job(Name("task"), queue_name=Name("q"), max_attempts=Count(3))
    text = twin.payload.encode_specs(
        [twin.payload.JobSpec(Name("task"), queue_name=Name("q"), max_attempts=Count(3))]
    )
    assert text == '[{"identifier":"task","payload":{},"queue_name":"q","max_attempts":3}]'


# --- validate_field -----------------------------------------------------------------------


def test_field_names_are_add_job_arguments_in_order_then_attempts(twin: Twin) -> None:
    assert twin.payload.FIELD_NAMES == (
        "identifier",
        "queue_name",
        "run_at",
        "max_attempts",
        "job_key",
        "job_key_mode",
        "priority",
        "flags",
        "attempts",
    )


@pytest.mark.parametrize(("kwargs", "field", "message"), INVALID)
def test_validate_field_says_what_validate_job_says(
    twin: Twin, kwargs: dict[str, Any], field: str, message: str
) -> None:
    [(name, value)] = kwargs.items()
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_field(name, value)
    assert (info.value.field, info.value.message) == (field, message)
    assert str(info.value) == f"{field}: {message}"


def test_validate_field_accepts_what_validate_job_accepts(twin: Twin) -> None:
    valid = {
        "identifier": ["task", "t" * 128, "tâche_é🎉"],
        "queue_name": [None, "q", "q" * 128],
        "run_at": [None, datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)],
        "max_attempts": [None, 1, 32767],
        "job_key": [None, "k", "k" * 512],
        "job_key_mode": [None, "replace", "preserve_run_at", "unsafe_dedupe"],
        "priority": [None, -32768, 0, 32767],
        "flags": [None, [], ("a",), ["a", "b"]],
        "attempts": [None, 0, 32767],
    }
    assert tuple(valid) == twin.payload.FIELD_NAMES
    for name, values in valid.items():
        for value in values:
            assert twin.payload.validate_field(name, value) is None, (name, value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must be between 0 and 32767, got -1"),
        (32768, "must be between 0 and 32767, got 32768"),
        (2**70, f"must be between 0 and 32767, got {2**70}"),
        (True, "must be an integer, got bool"),
        (1.5, "must be an integer, got float"),
        ("3", "must be an integer, got str"),
    ],
)
def test_attempts_is_a_smallint_from_zero(twin: Twin, value: Any, message: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_field("attempts", value)
    assert (info.value.field, info.value.message) == ("attempts", message)


def test_validate_field_names_the_callers_argument(twin: Twin) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_field("identifier", "", field="task")
    assert (info.value.field, str(info.value)) == ("task", "task: must not be empty")
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.validate_field("priority", 10**6, field="specs[2].priority")
    assert info.value.field == "specs[2].priority"
    with pytest.raises(TypeError, match="field must be a string, got int"):
        twin.payload.validate_field("priority", 10**6, field=2)


@pytest.mark.parametrize("name", ["nope", "", "Identifier", "payload", 1, None])
def test_validate_field_refuses_unknown_names(twin: Twin, name: Any) -> None:
    expected = (
        f"unknown job field {name!r}; expected one of identifier, queue_name, run_at, "
        "max_attempts, job_key, job_key_mode, priority, flags, attempts"
    )
    with pytest.raises(ValueError) as info:
        twin.payload.validate_field(name, "x")
    assert str(info.value) == expected
    assert not isinstance(info.value, InvalidJobSpec)  # a caller's bug, not a bad value


# --- JobSpec ------------------------------------------------------------------------------


def test_jobspec_fields(twin: Twin) -> None:
    spec = twin.payload.JobSpec("task")
    assert (spec.identifier, spec.payload, spec.queue_name, spec.run_at) == (
        "task",
        None,
        None,
        None,
    )
    assert (spec.max_attempts, spec.job_key, spec.priority, spec.flags) == (None, None, None, None)
    full = twin.payload.JobSpec(
        identifier="t",
        payload={"a": 1},
        queue_name="q",
        run_at=datetime(2026, 1, 1),
        max_attempts=3,
        job_key="k",
        priority=2,
        flags=["f"],
    )
    assert full.payload == {"a": 1} and full.flags == ["f"] and full.priority == 2
    full.priority = 7
    assert full.priority == 7
    with pytest.raises(AttributeError):
        full.job_key_mode = "replace"


def test_jobspec_does_not_validate_on_construction(twin: Twin) -> None:
    spec = twin.payload.JobSpec(None, priority="high")
    with pytest.raises(InvalidJobSpec, match=r"specs\[0\]\.identifier"):
        twin.payload.encode_specs([spec])


def test_jobspec_repr_leaves_out_the_payload(twin: Twin) -> None:
    spec = twin.payload.JobSpec("send", {"password": "hunter2"}, queue_name="mail", priority=1)
    assert repr(spec) == "JobSpec('send', queue_name='mail', priority=1)"


def test_jobspec_pickles(twin: Twin) -> None:
    spec = twin.payload.JobSpec("a", {"x": [1]}, run_at=datetime(2026, 1, 1), flags=["f"])
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_jobspec_equality(twin: Twin) -> None:
    make = twin.payload.JobSpec
    assert make("a", {"x": 1}, queue_name="q") == make("a", {"x": 1}, queue_name="q")
    assert make("a", {"x": 1}) != make("a", {"x": 2})
    assert make("a", flags=["f"]) != make("a")
    assert make("a") != ("a",)
    with pytest.raises(TypeError):
        hash(make("a"))


# --- encode_payload / encode_run_at ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (None, "{}"),
        ({}, "{}"),
        ({"a": 1, "b": [True, None, 1.5]}, '{"a":1,"b":[true,null,1.5]}'),
        ("nul\0inside", '"nul\\u0000inside"'),
        ({"é": "漢字🎉"}, '{"é":"漢字🎉"}'),
        ([1, "two"], '[1,"two"]'),
        (2**64 - 1, "18446744073709551615"),
        (datetime(2026, 1, 1, tzinfo=UTC), '"2026-01-01T00:00:00+00:00"'),
    ],
)
def test_encode_payload(twin: Twin, payload: Any, text: str) -> None:
    assert twin.payload.encode_payload(payload) == text


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({1: "int key"}, "Dict key must be str"),
        ({"s": {1, 2}}, "Type is not JSON serializable: set"),
        (b"bytes", "Type is not JSON serializable: bytes"),
        ({"n": 2**64}, "Integer exceeds 64-bit range"),
        ({"n": -(2**63) - 1}, "Integer exceeds 64-bit range"),
        ("\ud800", "str is not valid UTF-8: surrogates not allowed"),
        (nested(255), "Recursion limit reached"),
        (Weird(), "Type is not JSON serializable: Weird"),
    ],
)
def test_encode_payload_errors(twin: Twin, payload: Any, reason: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_payload(payload)
    assert info.value.field == "payload"
    assert info.value.message == f"is not JSON-serialisable: {reason}"


def test_encode_run_at(twin: Twin) -> None:
    encode = twin.payload.encode_run_at
    assert encode(None) is None
    naive = datetime(2026, 5, 1, 8, 30, 15, 123)
    assert encode(naive) == naive.replace(tzinfo=UTC)
    assert encode(naive).tzinfo is UTC
    paris = datetime(2026, 5, 1, 8, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert encode(paris) is paris
    for bad in ("2026-01-01", date(2026, 1, 1), 0):
        with pytest.raises(InvalidJobSpec) as info:
            encode(bad)
        assert info.value.field == "run_at"


# --- encode_specs ---------------------------------------------------------------------------


def test_encode_specs_format(twin: Twin) -> None:
    spec = twin.payload.JobSpec(
        "send_email",
        {"to": "a@b.c"},
        queue_name="mail",
        run_at=datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))),
        max_attempts=25,
        job_key="welcome-1",
        priority=-3,
        flags=("vip", "beta"),
    )
    text = twin.payload.encode_specs([spec, twin.payload.JobSpec("cleanup")])
    assert text == (
        '[{"identifier":"send_email","payload":{"to":"a@b.c"},"queue_name":"mail",'
        '"run_at":"2026-01-01T00:00:00+00:00","max_attempts":25,"job_key":"welcome-1",'
        '"priority":-3,"flags":["vip","beta"]},'
        '{"identifier":"cleanup","payload":{}}]'
    )
    for item in json.loads(text):
        assert set(item) <= JOB_SPEC_COLUMNS


def test_encode_specs_empty(twin: Twin) -> None:
    assert twin.payload.encode_specs([]) == "[]"
    assert twin.payload.encode_specs(()) == "[]"


def test_encode_specs_accepts_dicts_and_iterables(twin: Twin) -> None:
    make = twin.payload.JobSpec
    as_specs = twin.payload.encode_specs(
        [make("a", {"n": 1}, priority=2), make("b", max_attempts=1)]
    )
    as_dicts = twin.payload.encode_specs(
        [
            {"identifier": "a", "payload": {"n": 1}, "priority": 2},
            {"identifier": "b", "max_attempts": 1},
        ]
    )
    mixed = twin.payload.encode_specs(
        iter([make("a", {"n": 1}, priority=2), {"identifier": "b", "max_attempts": 1}])
    )
    assert as_specs == as_dicts == mixed
    assert twin.payload.encode_specs(({"identifier": "a", "payload": None, "flags": None},)) == (
        '[{"identifier":"a","payload":{}}]'
    )


@pytest.mark.parametrize(
    ("run_at", "text"),
    [
        (datetime(2026, 1, 1), "2026-01-01T00:00:00+00:00"),
        (datetime(2026, 1, 1, 0, 0, 0, 5), "2026-01-01T00:00:00.000005+00:00"),
        (datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC), "2026-01-01T23:59:59.999999+00:00"),
        (
            datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2026-01-01T00:00:00+00:00",
        ),
        (datetime(2026, 7, 1, 2, 0, tzinfo=ZoneInfo("Europe/Paris")), "2026-07-01T00:00:00+00:00"),
        (
            datetime(2026, 12, 31, 20, 0, tzinfo=ZoneInfo("America/New_York")),
            "2027-01-01T01:00:00+00:00",
        ),
        # A historic offset with seconds (Amsterdam LMT, +00:19:32) is converted, not truncated.
        (
            datetime(1900, 1, 1, 0, 19, 32, tzinfo=ZoneInfo("Europe/Amsterdam")),
            "1900-01-01T00:00:00+00:00",
        ),
        (datetime(1, 1, 1, 0, 0), "0001-01-01T00:00:00+00:00"),
        (datetime(9999, 12, 31, 23, 59, 59, 999999), "9999-12-31T23:59:59.999999+00:00"),
    ],
)
def test_encode_specs_run_at_is_utc_rfc3339(twin: Twin, run_at: datetime, text: str) -> None:
    out = json.loads(twin.payload.encode_specs([twin.payload.JobSpec("t", run_at=run_at)]))
    assert out[0]["run_at"] == text
    assert datetime.fromisoformat(text) == (run_at if run_at.tzinfo else run_at.replace(tzinfo=UTC))


def test_encode_specs_run_at_out_of_range(twin: Twin) -> None:
    early = datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs(
            [twin.payload.JobSpec("t"), twin.payload.JobSpec("t", run_at=early)]
        )
    assert info.value.field == "specs[1].run_at"
    assert info.value.message == "is out of range when converted to UTC"


# job_key_mode is a per-call option of add_jobs, not a job_spec column.
SPEC_INVALID = [case for case in INVALID if "job_key_mode" not in case[0]]


@pytest.mark.parametrize(("kwargs", "field", "message"), SPEC_INVALID)
def test_encode_specs_errors_name_the_spec(
    twin: Twin, kwargs: dict[str, Any], field: str, message: str
) -> None:
    args = {"identifier": "task", **kwargs}
    good = twin.payload.JobSpec("fine", {"n": 1})
    for spec in (twin.payload.JobSpec(**args), args):
        with pytest.raises(InvalidJobSpec) as info:
            twin.payload.encode_specs([good, good, spec, good])
        assert info.value.field == f"specs[2].{field}"
        assert info.value.message == message


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ("task", "specs[1]", "expected a JobSpec or a dict, got str"),
        (None, "specs[1]", "expected a JobSpec or a dict, got NoneType"),
        (("task",), "specs[1]", "expected a JobSpec or a dict, got tuple"),
        (
            {"identifier": "t", "queue": "q"},
            "specs[1]",
            "unknown key 'queue'; expected identifier, payload, queue_name, run_at, max_attempts, "
            "job_key, priority, flags",
        ),
        (
            {"identifier": "t", "job_key_mode": "replace"},
            "specs[1]",
            "unknown key 'job_key_mode'; expected identifier, payload, queue_name, run_at, "
            "max_attempts, job_key, priority, flags",
        ),
        ({"payload": {}}, "specs[1].identifier", "is required"),
        ({}, "specs[1].identifier", "is required"),
        (
            {"identifier": "t", "payload": {2: 1}},
            "specs[1].payload",
            "is not JSON-serialisable: Dict key must be str",
        ),
    ],
)
def test_encode_specs_bad_items(twin: Twin, spec: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([{"identifier": "ok"}, spec])
    assert (info.value.field, info.value.message) == (field, message)


@pytest.mark.parametrize("specs", ["task", b"x", {"identifier": "t"}, 5, None])
def test_encode_specs_needs_a_list(twin: Twin, specs: Any) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs(specs)
    assert info.value.field == "specs"
    assert info.value.message.startswith("must be a list of JobSpec or dicts, got ")


def test_encode_specs_error_order_is_spec_by_spec(twin: Twin) -> None:
    make = twin.payload.JobSpec
    # An earlier bad payload is reported before a later bad field ...
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([make("a"), make("b", {1: 2}), make("c", priority=10**6)])
    assert info.value.field == "specs[1].payload"
    # ... a later bad payload after an earlier bad field ...
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([make("a", priority=10**6), make("b", {1: 2})])
    assert info.value.field == "specs[0].priority"
    # ... within one spec, fields before the payload ...
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([make("a", {1: 2}, max_attempts=0)])
    assert info.value.field == "specs[0].max_attempts"
    # ... and a lone surrogate in an earlier identifier before a later bad payload.
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([make("ok"), make("x\udc00"), make("c", {1: 2})])
    assert info.value.field == "specs[1].identifier"
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs([make("ok", {3: 4}), make("x\udc00")])
    assert info.value.field == "specs[0].payload"


def test_encode_specs_escapes_strings_like_orjson(twin: Twin) -> None:
    names = ['quote"', "back\\slash", "tab\there", "ctl\x01\x1f", "del\x7f", "é漢🎉", "\u2028"]
    specs = [
        twin.payload.JobSpec(name, queue_name=name, job_key=name, flags=[name]) for name in names
    ]
    out = json.loads(twin.payload.encode_specs(specs))
    assert [item["identifier"] for item in out] == names
    assert [item["flags"] for item in out] == [[name] for name in names]


def test_encode_specs_payload_near_orjson_depth_limit(twin: Twin) -> None:
    deep = nested(254)  # fine alone, too deep once wrapped in the array and the object
    text = twin.payload.encode_specs([twin.payload.JobSpec("a", deep), twin.payload.JobSpec("b")])
    assert text == '[{"identifier":"a","payload":' + json.dumps(deep, separators=(",", ":")) + (
        '},{"identifier":"b","payload":{}}]'
    )
    with pytest.raises(InvalidJobSpec) as info:
        twin.payload.encode_specs(
            [twin.payload.JobSpec("a"), twin.payload.JobSpec("b", nested(255))]
        )
    assert info.value.field == "specs[1].payload"


def test_encode_specs_nul_in_payload_is_fine(twin: Twin) -> None:
    text = twin.payload.encode_specs([twin.payload.JobSpec("a", {"k\0": "v\0"})])
    assert json.loads(text)[0]["payload"] == {"k\0": "v\0"}


def test_encode_specs_hundred_thousand(twin: Twin) -> None:
    make = twin.payload.JobSpec
    specs = [make("task", {"i": i}, priority=i % 5 - 2) for i in range(100_000)]
    out = json.loads(twin.payload.encode_specs(specs))
    assert len(out) == 100_000
    assert out[99_999] == {"identifier": "task", "payload": {"i": 99_999}, "priority": 2}
