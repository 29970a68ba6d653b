"""decode: fetched rows -> Job objects, against each twin."""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest

from .conftest import Twin

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc)
COLUMNS = (
    "id",
    "queue_name",
    "task_identifier",
    "payload",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
    "key",
    "locked_at",
    "locked_by",
    "revision",
    "flags",
)


def make_row(payload: Any = '{"to": "a@b.c"}', flags: Any = None, **overrides: Any) -> tuple:
    values = {
        "id": 42,
        "queue_name": "mail",
        "task_identifier": "send_email",
        "payload": payload,
        "priority": 0,
        "run_at": NOW,
        "attempts": 1,
        "max_attempts": 25,
        "last_error": None,
        "created_at": NOW,
        "updated_at": NOW,
        "key": None,
        "locked_at": NOW,
        "locked_by": "worker-1",
        "revision": 0,
        "flags": flags,
    }
    values.update(overrides)
    return tuple(values[name] for name in COLUMNS)


class RecordLike(Sequence):
    """Indexable like an asyncpg Record, but neither a tuple nor a list."""

    def __init__(self, values: tuple) -> None:
        self._values = values

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)


def test_job_columns(twin: Twin) -> None:
    assert twin.decode.JOB_COLUMNS == COLUMNS


def test_leased_and_stored_columns_are_the_same_in_both_twins(both: tuple[Twin, Twin]) -> None:
    """The fetcher and the client index rows by these names; the twins must agree."""
    pure, compiled = both
    assert compiled.decode.LEASED_COLUMNS == pure.decode.LEASED_COLUMNS
    assert compiled.decode.STORED_COLUMNS == pure.decode.STORED_COLUMNS
    assert pure.decode.STORED_COLUMNS[3:] == COLUMNS[3:]


def test_decodes_every_column(twin: Twin) -> None:
    run_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = make_row(
        '{"to": "a@b.c", "n": [1, 2.5, null, true]}',
        '{"vip": true, "beta": true}',
        run_at=run_at,
        key="k1",
        last_error="boom",
        priority=-5,
    )
    (job,) = twin.decode.decode_jobs([row])
    assert job.id == 42
    assert job.queue_name == "mail"
    assert job.task_identifier == "send_email"
    assert job.payload == {"to": "a@b.c", "n": [1, 2.5, None, True]}
    assert job.priority == -5
    assert job.run_at is run_at
    assert job.attempts == 1
    assert job.max_attempts == 25
    assert job.last_error == "boom"
    assert job.created_at is NOW
    assert job.updated_at is NOW
    assert job.key == "k1"
    assert job.locked_at is NOW
    assert job.locked_by == "worker-1"
    assert job.revision == 0
    assert job.flags == ["vip", "beta"]
    assert job.payload_error is None


def test_flags_keep_object_order(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row(flags='{"z": true, "a": true, "m": true}')])
    assert job.flags == ["z", "a", "m"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(None, None), ("{}", []), ({"x": True}, ["x"]), (["a", "b"], ["a", "b"])],
)
def test_flags_shapes(twin: Twin, flags: Any, expected: Any) -> None:
    (job,) = twin.decode.decode_jobs([make_row(flags=flags)])
    assert job.flags == expected
    assert job.payload_error is None


@pytest.mark.parametrize("flags", ["{not json", "42", 7])
def test_bad_flags_are_reported_not_raised(twin: Twin, flags: Any) -> None:
    (job,) = twin.decode.decode_jobs([make_row(flags=flags)])
    assert job.flags is None
    assert job.payload == {"to": "a@b.c"}
    assert job.payload_error.startswith("flags is not a JSON object: ")


def test_payload_error_wins_over_flags_error(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row("{", flags="[")])
    assert job.payload_error.startswith("payload is not valid JSON: ")


def test_none_payload(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row(None)])
    assert job.payload is None
    assert job.payload_error is None


@pytest.mark.parametrize("text", ["{", "", "   ", "{'a': 1}", "[1,]", "nul", '{"a" 1}', "1 2"])
def test_bad_payload_does_not_break_the_batch(twin: Twin, text: str) -> None:
    rows = [make_row('{"n": 1}', id=1), make_row(text, id=2), make_row('{"n": 3}', id=3)]
    jobs = twin.decode.decode_jobs(rows)
    assert [job.id for job in jobs] == [1, 2, 3]
    assert jobs[0].payload == {"n": 1}
    assert jobs[2].payload == {"n": 3}
    assert jobs[1].payload is None
    assert jobs[1].payload_error.startswith("payload is not valid JSON: ")
    assert jobs[0].payload_error is None and jobs[2].payload_error is None


def test_bad_payload_message_names_the_problem(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row('{"a": }')])
    assert (
        job.payload_error == "payload is not valid JSON: Expecting value: line 1 column 7 (char 6)"
    )


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        2**64 - 1,
        -(2**63) - 1,
        -(2**63),
        10**30,
        -(10**40),
        123456789012345678901234567890,
        -9999999999999999999,
    ],
)
def test_integers_beyond_64_bits_stay_exact(twin: Twin, value: int) -> None:
    text = json.dumps({"id": value, "note": "x" * 30, "list": [1, value, 3]})
    (job,) = twin.decode.decode_jobs([make_row(text)])
    assert job.payload == {"id": value, "note": "x" * 30, "list": [1, value, 3]}
    assert type(job.payload["id"]) is int
    assert job.payload_error is None
    assert twin.decode.loads_payload(text) == (job.payload, None)


def test_long_digit_runs_inside_strings_are_harmless(twin: Twin) -> None:
    text = json.dumps({"card": "4111111111111111111111", "n": 1.5, "big": 1e300})
    value, error = twin.decode.loads_payload(text)
    assert error is None
    assert value == {"card": "4111111111111111111111", "n": 1.5, "big": 1e300}


def test_floats_with_many_digits(twin: Twin) -> None:
    text = "[0.12345678901234567890123, -1.0000000000000000000001e-5, 12345678901234567890.5]"
    value, error = twin.decode.loads_payload(text)
    assert error is None
    assert value == json.loads(text)


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("NaN", math.isnan),
        ("[Infinity, -Infinity]", lambda v: v == [math.inf, -math.inf]),
        ("1e400", lambda v: v == math.inf),
        ('"\\ud800"', lambda v: v == "\ud800"),
        ('{"a": "\\udfff\\ud83d"}', lambda v: v == {"a": "\udfff\ud83d"}),
    ],
)
def test_stdlib_fallback_for_what_orjson_rejects(twin: Twin, text: str, check: Any) -> None:
    value, error = twin.decode.loads_payload(text)
    assert error is None
    assert check(value)


def test_nesting_orjson_accepts(twin: Twin) -> None:
    text = "[" * 1000 + "]" * 1000
    value, error = twin.decode.loads_payload(text)
    assert error is None
    depth = 0
    while value:
        value = value[0]
        depth += 1
    assert depth == 999


@pytest.mark.parametrize(("depth", "ok"), [(512, True), (513, False), (1000, False)])
def test_fallback_depth_limit_is_deterministic(twin: Twin, depth: int, ok: bool) -> None:
    # NaN sends the text to the stdlib, which is only trusted to 512 levels.
    text = "[" * depth + "NaN" + "]" * depth
    value, error = twin.decode.loads_payload(text)
    assert (error is None) is ok
    if not ok:
        assert (value, error) == (None, "payload JSON is nested too deeply to decode")
    # Brackets inside strings do not count.
    quoted = '["' + "[" * 2000 + '", NaN]'
    assert twin.decode.loads_payload(quoted)[1] is None


@pytest.mark.parametrize("depth", [1100, 50_000])
def test_nesting_too_deep_is_an_error_not_a_crash(twin: Twin, depth: int) -> None:
    text = '{"a":' * depth + "1" + "}" * depth
    rows = [make_row(text, id=1), make_row('{"ok": true}', id=2)]
    jobs = twin.decode.decode_jobs(rows)
    assert jobs[0].payload is None
    assert jobs[0].payload_error == "payload JSON is nested too deeply to decode"
    assert jobs[1].payload == {"ok": True}


@pytest.mark.parametrize(
    "value",
    [
        {"name": "Zoë", "city": "Zürich", "cjk": "漢字", "emoji": "🎉👩‍💻", "rtl": "שלום"},
        ["\u2028\u2029", "tab\tnew\nline", "nul\u0000byte", 'quote"back\\slash'],
        "just a string",
        12,
        None,
        [],
    ],
)
def test_unicode_and_scalars_roundtrip(twin: Twin, value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    (job,) = twin.decode.decode_jobs([make_row(text)])
    assert job.payload == value
    assert job.payload_error is None
    escaped = json.dumps(value, ensure_ascii=True)
    assert twin.decode.loads_payload(escaped) == (value, None)


def test_json_null_payload_is_none_without_error(twin: Twin) -> None:
    assert twin.decode.loads_payload("null") == (None, None)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_payloads(twin: Twin, kind: Any) -> None:
    text = '{"a": "é", "b": 18446744073709551616}'.encode()
    assert twin.decode.loads_payload(kind(text)) == ({"a": "é", "b": 2**64}, None)
    value, error = twin.decode.loads_payload(kind(b"\xff\xfe"))
    assert value is None
    assert error.startswith("payload is not valid JSON: ")


def test_already_decoded_payloads_pass_through(twin: Twin) -> None:
    payload = {"already": "decoded"}
    (job,) = twin.decode.decode_jobs([make_row(payload)])
    assert job.payload is payload
    assert twin.decode.loads_payload(payload) == (payload, None)
    assert twin.decode.loads_payload(None) == (None, None)
    assert twin.decode.loads_payload(5) == (5, None)


def test_row_containers(twin: Twin) -> None:
    base = make_row('{"x": 1}', '{"f": true}')
    expected = twin.decode.decode_jobs([base])
    assert twin.decode.decode_jobs([list(base)]) == expected
    assert twin.decode.decode_jobs([RecordLike(base)]) == expected
    assert twin.decode.decode_jobs(iter([base])) == expected
    assert twin.decode.decode_jobs((base,)) == expected
    assert twin.decode.decode_job(base) == expected[0]
    assert twin.decode.decode_jobs([]) == []


def test_asyncpg_records(twin: Twin) -> None:
    record_module = pytest.importorskip("asyncpg.protocol.protocol")
    create = getattr(record_module, "_create_record", None)
    if create is None:
        pytest.skip("this asyncpg cannot build a Record outside a query")
    mapping = {name: index for index, name in enumerate(COLUMNS)}
    row = make_row('{"n": 18446744073709551616}', '{"f": true}')
    record = create(mapping, row)
    assert twin.decode.decode_jobs([record]) == twin.decode.decode_jobs([row])
    assert twin.decode.decode_job(record).payload == {"n": 2**64}
    short = create({"id": 0}, (1,))
    with pytest.raises(ValueError, match=r"row 0 has 1 columns, expected 16"):
        twin.decode.decode_jobs([short])


@pytest.mark.parametrize(
    "row", [(1, 2, 3), (*make_row(), None), (), 5, None, iter(range(3)), "x" * 15]
)
def test_wrong_rows_raise_value_error(twin: Twin, row: Any) -> None:
    with pytest.raises(ValueError, match=r"row 1 has .* columns, expected 16"):
        twin.decode.decode_jobs([make_row(), row])


def test_large_batch(twin: Twin) -> None:
    rows = [make_row(json.dumps({"i": i, "s": "é" * (i % 5)}), id=i) for i in range(2000)]
    jobs = twin.decode.decode_jobs(rows)
    assert [job.id for job in jobs] == list(range(2000))
    assert jobs[1999].payload == {"i": 1999, "s": "éééé"}


# --- Job ------------------------------------------------------------------------------------


def test_job_constructor_and_defaults(twin: Twin) -> None:
    values = dict(zip(COLUMNS, make_row({"p": 1}), strict=True))
    job = twin.decode.Job(**values)
    assert job.payload_error is None
    for name, value in values.items():
        assert getattr(job, name) is value
    positional = twin.decode.Job(*make_row({"p": 1}), "err")
    assert positional.payload_error == "err"


def test_job_attributes_are_writable(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row()])
    job.attempts = 5
    job.payload_error = "x"
    assert (job.attempts, job.payload_error) == (5, "x")
    with pytest.raises(AttributeError):
        job.not_a_column = 1


def test_job_repr_never_shows_the_payload(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row('{"secret": "hunter2"}')])
    text = repr(job)
    assert "hunter2" not in text
    assert text == "<Job id=42 task_identifier='send_email' queue_name='mail' attempts=1/25>"


def test_job_equality_covers_every_attribute(twin: Twin) -> None:
    row = make_row('{"a": 1}', '{"f": true}')
    first, second = twin.decode.decode_jobs([row, row])
    assert first == second
    assert first != "not a job"
    for name in (*COLUMNS, "payload_error"):
        other = twin.decode.decode_job(row)
        setattr(other, name, "changed")
        assert first != other, name
    with pytest.raises(TypeError):
        hash(first)


def test_job_pickles(twin: Twin) -> None:
    job = twin.decode.decode_job(make_row('{"a": [1, "é"]}', '{"f": true}'))
    assert pickle.loads(pickle.dumps(job)) == job
    assert copy.copy(job) == job


def test_as_dict(twin: Twin) -> None:
    job = twin.decode.decode_job(make_row('{"a": 1}', '{"f": true}'))
    data = job.as_dict()
    assert list(data) == [*COLUMNS, "payload_error"]
    assert data["payload"] == {"a": 1}
    assert data["flags"] == ["f"]
    assert data["payload_error"] is None


# --- the payload is parsed when first read ----------------------------------------------------


def _container_ids(value: Any) -> set[int]:
    """ids of every dict/list in ``value`` (the objects a parsed payload adds to the GC)."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.add(id(item))
            stack.extend(item.values())
        elif isinstance(item, list):
            found.add(id(item))
            stack.extend(item)
    return found


def test_decoded_batch_holds_no_parsed_payload(twin: Twin) -> None:
    """A queued job keeps its text: no payload containers exist until one is read."""
    import gc

    text = '{"marker_lazy_payload": [{"a": 1}, {"b": 2}]}'
    (job,) = twin.decode.decode_leased(
        [(1, 7, text, 0, NOW, 0, 25, None, None, None, 0, None, "(0,1)")],
        None,
        {7: "t"},
        "w",
        NOW,
    )
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, dict) and "marker_lazy_payload" in o]
    payload = job.payload
    assert payload == {"marker_lazy_payload": [{"a": 1}, {"b": 2}]}
    assert job.payload is payload  # parsed once


@pytest.mark.parametrize(
    "text", ['{"x": "Zürich 東京", "n": [1, 2]}', "{", '{"n": 12345678901234567890}']
)
def test_bytes_and_str_payloads_decode_alike(twin: Twin, text: str) -> None:
    """The fetch connections hand over json as UTF-8 bytes; the outcome is the str one's."""
    (as_str,) = twin.decode.decode_jobs([make_row(text)])
    (as_bytes,) = twin.decode.decode_jobs([make_row(text.encode())])
    assert (as_bytes.payload, as_bytes.payload_error) == (as_str.payload, as_str.payload_error)


def test_error_read_first_parses_the_payload(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row("{", flags="[")])
    assert job.payload_error.startswith("payload is not valid JSON: ")
    assert job.payload is None
    (job,) = twin.decode.decode_jobs([make_row('{"ok": 1}', flags="[")])
    assert job.payload_error.startswith("flags is not a JSON object: ")
    assert job.payload == {"ok": 1}


def test_setting_before_reading_replaces_the_pending_text(twin: Twin) -> None:
    (job,) = twin.decode.decode_jobs([make_row("{")])
    job.payload = {"set": True}
    assert job.payload == {"set": True}
    assert job.payload_error is None  # the bad text was never parsed
    (job,) = twin.decode.decode_jobs([make_row("{")])
    job.payload_error = None  # parses first, then overrides the error
    assert job.payload is None and job.payload_error is None


def test_equality_and_as_dict_see_the_parsed_payload(twin: Twin) -> None:
    (a,) = twin.decode.decode_jobs([make_row('{"n": 1}')])
    (b,) = twin.decode.decode_jobs([make_row(b'{"n": 1}')])
    assert a == b
    assert a.as_dict()["payload"] == {"n": 1}
