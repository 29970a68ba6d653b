"""Pure-Python twin of ``kongtask._core.decode``: fetched rows -> :class:`Job` objects.

The worker fetches jobs in batches and hands the whole batch to
:func:`decode_jobs` in one call (docs/architecture.md), so this module is on the
per-job path. asyncpg returns ``json``/``jsonb`` columns as text; parsing it
here, in one loop, is cheaper than a per-row codec callback.

Payload parsing rules, shared with the compiled twin:

* ``orjson.loads`` first: it is several times faster than the stdlib.
* Text holding a run of 19 or more ASCII digits goes straight to ``json.loads``:
  orjson silently turns integers outside ``[-2**63, 2**64)`` into floats, which
  would corrupt ids written by SQL or other producers. 19 digits is the shortest
  run that can hold such an integer (``-9223372036854775809``); a run inside a
  string or a float only costs the slower parser, never a wrong value.
* Text orjson rejects (NaN, ``1e400``, nesting deeper than 1024, lone
  surrogates) gets a second chance with ``json.loads``, unless it nests deeper
  than 512 (``MAX_FALLBACK_DEPTH``): the stdlib recurses per level, and its
  limit would otherwise depend on the caller's stack depth.
* Text both reject gives ``payload=None`` and a ``payload_error`` message; one
  bad row never fails the batch.

``flags`` (jsonb ``{"a": true, ...}``) becomes the list of its keys in object
order. A flags value that is not a JSON object cannot come from PostgreSQL; if
one turns up anyway it gives ``flags=None`` and, unless the payload already
failed, a ``payload_error`` naming flags, so the job fails visibly rather than
running without its flags.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from .common import BAD_FLAGS as _BAD_FLAGS
from .common import BAD_JSON as _BAD_JSON
from .common import JOB_COLUMNS, LEASED_COLUMNS, MAX_FALLBACK_DEPTH, STORED_COLUMNS
from .common import TOO_DEEP as _TOO_DEEP

__all__ = [
    "JOB_COLUMNS",
    "LEASED_COLUMNS",
    "STORED_COLUMNS",
    "Job",
    "decode_job",
    "decode_jobs",
    "decode_leased",
    "decode_stored",
    "loads_payload",
    "pg_timestamp",
]

_NCOLUMNS = len(JOB_COLUMNS)

_orjson_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_json_loads = json.loads

# Maps ASCII digits to b"0" and every other byte to b" ", so that a run of 19
# digits becomes a substring search (C speed) instead of a regex (5x slower).
_DIGIT_MAP = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19

# Deepest nesting the stdlib fallback is asked to parse (orjson itself takes 1024):
# leaves room for ~480 frames of caller stack under the default recursion limit.
# A string token (closed or running to the end) or a bracket: the same state
# machine as the compiled twin's loop, in one regex.
_STR_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)
_BYTES_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)

# asyncpg's own mapping of timestamptz values, so a lazily converted timestamp
# equals what asyncpg would have returned: PostgreSQL counts microseconds from
# 2000-01-01 UTC, and its infinities become naive datetime.max / datetime.min.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_INFINITY = datetime(9999, 12, 31, 23, 59, 59, 999999)
_NEGATIVE_INFINITY = datetime(1, 1, 1)
_PG_INFINITY = 0x7FFFFFFFFFFFFFFF
_PG_NEGATIVE_INFINITY = -0x8000000000000000


def pg_timestamp(micros: int) -> datetime:
    """PostgreSQL's timestamptz microseconds -> the datetime asyncpg would return."""
    if micros == _PG_INFINITY:
        return _INFINITY
    if micros == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _PG_EPOCH + timedelta(0, micros // 1000000, micros % 1000000)


def _timestamp_property(slot: str) -> property:
    """A timestamp column that may hold PostgreSQL microseconds until first read.

    The fetch connections decode timestamptz that way: building four datetimes
    per row was a fifth of the worker's CPU, and most handlers never look.
    """

    def get(self: Job) -> Any:
        value = getattr(self, slot)
        if value.__class__ is int:
            value = pg_timestamp(value)
            setattr(self, slot, value)
        return value

    def set_(self: Job, value: Any) -> None:
        setattr(self, slot, value)

    return property(get, set_)


def _has_long_digit_run(text: Any) -> bool:
    """True when ``text`` may hold an integer orjson would turn into a float."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    return _LONG_RUN in data.translate(_DIGIT_MAP)


def _nested_deeper_than(text: Any, limit: int) -> bool:
    """Whether ``text`` nests arrays/objects more than ``limit`` deep (strings skipped).

    Counting brackets first keeps the common case to two C-level scans; the
    token loop runs only for texts with more than ``limit`` opening brackets.
    """
    tokens: re.Pattern[Any]
    opening: tuple[Any, Any]
    closing: tuple[Any, Any]
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= limit:
            return False
        tokens, opening, closing = _STR_TOKENS, ("[", "{"), ("]", "}")
    else:
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        tokens, opening, closing = _BYTES_TOKENS, (b"[", b"{"), (b"]", b"}")
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in opening:
            depth += 1
            if depth > limit:
                return True
        elif token in closing:
            depth -= 1
    return False


def _stdlib_loads(text: Any) -> tuple[Any, str | None]:
    """The fallback parser, made deterministic about depth.

    ``json.loads`` recurses once per nesting level, so whether it fails on a
    deep text would depend on how deep the caller's stack already is (and so
    differ between the twins). Texts nested deeper than MAX_FALLBACK_DEPTH are
    refused up front instead.
    """
    if isinstance(text, memoryview):
        text = text.tobytes()  # the stdlib takes str, bytes and bytearray only
    if _nested_deeper_than(text, MAX_FALLBACK_DEPTH):
        return None, _TOO_DEEP
    try:
        return _json_loads(text), None
    except RecursionError:  # only if the caller's own stack is already very deep
        return None, _TOO_DEEP
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        return None, _BAD_JSON + str(exc)


def loads_payload(text: Any) -> tuple[Any, str | None]:
    """Parses one payload column value; returns ``(value, error)`` and never raises.

    ``None`` gives ``(None, None)``. Values that are not text (a ``dict`` from a
    custom asyncpg codec, say) are passed through unchanged: they are decoded
    already.
    """
    if text is None:
        return None, None
    if not isinstance(text, (str, bytes, bytearray, memoryview)):
        return text, None
    if len(text) >= 19 and _has_long_digit_run(text):
        return _stdlib_loads(text)
    try:
        return _orjson_loads(text), None
    except _JSONDecodeError:
        return _stdlib_loads(text)


def _flags_list(flags: Any) -> tuple[list[str] | None, str | None]:
    """jsonb ``{"a": true, ...}`` text (or an already decoded dict) -> its keys."""
    if isinstance(flags, str):
        try:
            flags = _orjson_loads(flags)
        except _JSONDecodeError as exc:
            return None, _BAD_FLAGS + str(exc)
    if isinstance(flags, dict):
        return list(flags), None
    if isinstance(flags, list):
        return flags, None
    return None, _BAD_FLAGS + f"got {type(flags).__name__}"


class Job:
    """One fetched job: the columns of ``JOB_COLUMNS`` plus ``payload_error``.

    ``payload_error`` is ``None`` unless the row's payload (or flags) could not be
    decoded; the worker then fails the job with that message instead of running
    the task with a wrong payload.

    The payload text is parsed when ``payload`` or ``payload_error`` is first
    read (the slot does so just before the handler runs), not when the batch is
    decoded: a parsed payload is dozens of GC-tracked containers, and a batch
    of them waiting in the local queue was walked by the collector again and
    again (see docs/performance.md). Parsed just in time, they live only while
    the handler runs.
    """

    __slots__ = (
        *(name for name in JOB_COLUMNS if not name.endswith("_at") and name != "payload"),
        "_raw",
        "_payload",
        "_payload_error",
        "_created_at",
        "_locked_at",
        "_run_at",
        "_updated_at",
        "ctid",
        "lease",
    )

    id: Any
    queue_name: str | None
    task_identifier: str
    priority: int
    run_at: Any
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: Any
    updated_at: Any
    key: str | None
    locked_at: Any
    locked_by: str | None
    revision: int
    flags: list[str] | None
    #: The payload text as fetched, until the payload is first read (then None).
    _raw: Any
    _payload: Any
    _payload_error: str | None
    #: The Lease of the fetch transaction that still holds this job's row, if any.
    lease: Any
    #: The address (``ctid`` as text) of the row version this worker locked or
    #: claimed, when the fetch returned it: a success is deleted by it.
    ctid: str | None

    run_at = _timestamp_property("_run_at")
    created_at = _timestamp_property("_created_at")
    updated_at = _timestamp_property("_updated_at")
    locked_at = _timestamp_property("_locked_at")

    def __init__(
        self,
        id: Any,
        queue_name: str | None,
        task_identifier: str,
        payload: Any,
        priority: int,
        run_at: Any,
        attempts: int,
        max_attempts: int,
        last_error: str | None,
        created_at: Any,
        updated_at: Any,
        key: str | None,
        locked_at: Any,
        locked_by: str | None,
        revision: int,
        flags: list[str] | None,
        payload_error: str | None = None,
    ) -> None:
        self.id = id
        self.queue_name = queue_name
        self.task_identifier = task_identifier
        self._raw = None
        self._payload = payload
        self.priority = priority
        self.run_at = run_at
        self.attempts = attempts
        self.max_attempts = max_attempts
        self.last_error = last_error
        self.created_at = created_at
        self.updated_at = updated_at
        self.key = key
        self.locked_at = locked_at
        self.locked_by = locked_by
        self.revision = revision
        self.flags = flags
        self._payload_error = payload_error
        self.lease = None
        self.ctid = None

    def _ensure_payload(self) -> None:
        text = self._raw
        if text is not None:
            self._raw = None
            value, error = _parse_text(text)
            self._payload = value
            if error is not None:  # a payload error wins over a flags error
                self._payload_error = error

    @property
    def payload(self) -> Any:
        if self._raw is not None:
            self._ensure_payload()
        return self._payload

    @payload.setter
    def payload(self, value: Any) -> None:
        self._raw = None
        self._payload = value

    @property
    def payload_error(self) -> str | None:
        if self._raw is not None:
            self._ensure_payload()
        return self._payload_error

    @payload_error.setter
    def payload_error(self, value: str | None) -> None:
        if self._raw is not None:
            self._ensure_payload()
        self._payload_error = value

    def __repr__(self) -> str:
        # Never the payload: it may hold personal data and this ends up in logs.
        return (
            f"<Job id={self.id!r} task_identifier={self.task_identifier!r} "
            f"queue_name={self.queue_name!r} attempts={self.attempts!r}/{self.max_attempts!r}>"
        )

    def _astuple(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.queue_name,
            self.task_identifier,
            self.payload,
            self.priority,
            self.run_at,
            self.attempts,
            self.max_attempts,
            self.last_error,
            self.created_at,
            self.updated_at,
            self.key,
            self.locked_at,
            self.locked_by,
            self.revision,
            self.flags,
            self.payload_error,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return self._astuple() == other._astuple()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def as_dict(self) -> dict[str, Any]:
        """Every attribute by name, for logging/serialising a job (payload included)."""
        return dict(zip((*JOB_COLUMNS, "payload_error"), self._astuple(), strict=True))


def _parse_text(payload: Any) -> tuple[Any, str | None]:
    """A payload text -> (value, error).

    The common case (text orjson accepts) costs one ``orjson.loads``; anything
    unusual goes through :func:`loads_payload`.
    """
    if payload.__class__ is str and (
        len(payload) < 19
        or _LONG_RUN not in payload.encode("utf-8", "surrogatepass").translate(_DIGIT_MAP)
    ):
        try:
            return _orjson_loads(payload), None
        except _JSONDecodeError:
            return _stdlib_loads(payload)
    if payload.__class__ is bytes and (
        len(payload) < 19 or _LONG_RUN not in payload.translate(_DIGIT_MAP)
    ):
        try:
            return _orjson_loads(payload), None
        except _JSONDecodeError:
            return _stdlib_loads(payload)
    return loads_payload(payload)


_TEXT_TYPES = (str, bytes, bytearray, memoryview)


def _parse(payload: Any, flags: Any) -> tuple[Any, Any, list[str] | None, str | None]:
    """A row's raw payload and flags -> (raw text, payload, flags, error).

    The flags are parsed now; a text payload comes back as the raw text, to be
    parsed when first read (see :class:`Job`), anything else as the payload.
    """
    error = None
    raw = None
    if isinstance(payload, _TEXT_TYPES):
        raw, payload = payload, None
    if flags is not None:
        flags, error = _flags_list(flags)
    return raw, payload, flags, error


def _job(raw: Any, *args: Any) -> Job:
    """``Job(*args)`` with its payload text ``raw`` set aside to be parsed when first read."""
    job = Job(*args)
    job._raw = raw
    return job


def _bad_row(index: int, row: Any) -> ValueError:
    try:
        size: object = len(row)
    except TypeError:
        size = "?"
    return ValueError(
        f"row {index} has {size} columns, expected {_NCOLUMNS} ({', '.join(JOB_COLUMNS)})"
    )


def decode_jobs(rows: Any) -> list[Job]:
    """Decodes a fetched batch (rows in ``JOB_COLUMNS`` order) in one pass."""
    out: list[Job] = []
    append = out.append
    for index, row in enumerate(rows):
        try:
            (id_, queue_name, task_identifier, payload, *rest, flags) = row
        except (TypeError, ValueError):
            raise _bad_row(index, row) from None
        if len(rest) != _NCOLUMNS - 5:
            raise _bad_row(index, row)
        raw, payload, flags, error = _parse(payload, flags)
        # The row's middle columns, in JOB_COLUMNS order, are Job's own arguments.
        append(_job(raw, id_, queue_name, task_identifier, payload, *rest, flags, error))
    return out


def decode_job(row: Any) -> Job:
    """Decodes one row; see :func:`decode_jobs`."""
    return decode_jobs((row,))[0]


_NLEASED = len(LEASED_COLUMNS)


def decode_leased(
    rows: Any, lease: Any, task_names: dict[int, str], locked_by: str, locked_at: Any
) -> list[Job]:
    """Decodes a leased batch (rows in ``LEASED_COLUMNS`` order) into jobs of ``lease``.

    ``task_names`` maps task ids to identifiers; every job gets ``locked_by``
    and ``locked_at`` (what the row will say once claimed). A null
    ``created_at`` means "as ``run_at``", a null ``updated_at`` "as ``created_at``".
    """
    out: list[Job] = []
    append = out.append
    for index, row in enumerate(rows):
        try:
            if len(row) != _NLEASED:
                raise ValueError
            (
                id_,
                task_id,
                payload,
                priority,
                run_at,
                attempts,
                max_attempts,
                last_error,
                created_at,
                updated_at,
                revision,
                flags,
                ctid,
            ) = row
        except (TypeError, ValueError):
            raise ValueError(f"row {index} is not a leased row of {_NLEASED} columns") from None
        raw, payload, flags, error = _parse(payload, flags)
        if created_at is None:
            created_at = run_at
        if updated_at is None:
            updated_at = created_at
        job = _job(
            raw,
            id_,
            None,
            task_names[task_id],
            payload,
            priority,
            run_at,
            attempts,
            max_attempts,
            last_error,
            created_at,
            updated_at,
            None,
            locked_at,
            locked_by,
            revision,
            flags,
            error,
        )
        job.lease = lease
        job.ctid = ctid
        append(job)
    return out


def decode_stored(rows: Any, task_names: dict[int, str], queue_names: dict[int, str]) -> list[Job]:
    """Decodes rows in ``STORED_COLUMNS`` order; ids are named from the two maps.

    A null ``created_at`` means "as ``run_at``", a null ``updated_at`` "as
    ``created_at``" (both columns are not null in the table).
    """
    out: list[Job] = []
    append = out.append
    for index, row in enumerate(rows):
        try:
            if len(row) != _NCOLUMNS:
                raise ValueError
            (
                id_,
                queue_id,
                task_id,
                payload,
                priority,
                run_at,
                attempts,
                max_attempts,
                last_error,
                created_at,
                updated_at,
                *rest,
                flags,
            ) = row
        except (TypeError, ValueError):
            raise ValueError(
                f"row {index} is not a stored job row of {_NCOLUMNS} columns"
            ) from None
        queue_name = None if queue_id is None else queue_names[queue_id]
        task_identifier = task_names[task_id]
        raw, payload, flags, error = _parse(payload, flags)
        if created_at is None:
            created_at = run_at
        if updated_at is None:
            updated_at = created_at
        key, locked_at, locked_by, revision = rest
        append(
            _job(
                raw,
                id_,
                queue_name,
                task_identifier,
                payload,
                priority,
                run_at,
                attempts,
                max_attempts,
                last_error,
                created_at,
                updated_at,
                key,
                locked_at,
                locked_by,
                revision,
                flags,
                error,
            )
        )
    return out
