"""Compiled twin of ``kongtask._core.decode_py``: fetched rows -> :class:`Job` objects.

Same behaviour, same messages; see the pure twin's module docstring for the
payload parsing rules. What the compiler buys here: ``Job`` is a C struct whose
fields are set directly (no ``__init__`` argument parsing per row), columns
are read with ``PyTuple_GET_ITEM`` or a Record's own ``sq_item`` slot, and the "19-digit run" guard is a C loop
that reads every 19th character of the string's own buffer instead of an
encode + translate. What it cannot buy: ``orjson.loads`` itself and allocating
the decoded objects, the same in both twins, are most of the remaining time.
"""

import json
from datetime import datetime, timedelta, timezone

import orjson

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH

cdef extern from "Python.h":
    ctypedef struct PyTypeObject
    PyTypeObject* Py_TYPE(object o)
    bint PyType_HasFeature(PyTypeObject* t, unsigned long feature)
    unsigned long Py_TPFLAGS_IMMUTABLETYPE
    bint PySequence_Check(object o)
    Py_ssize_t PySequence_Size(object o) except -1
    object PySequence_ITEM(object o, Py_ssize_t i)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    int PyUnicode_1BYTE_KIND
    int PyUnicode_2BYTE_KIND

__all__ = [
    "JOB_COLUMNS", "LEASED_COLUMNS", "STORED_COLUMNS", "Job", "decode_job", "decode_jobs",
    "decode_leased", "decode_stored", "loads_payload", "pg_timestamp",
]

from kongtask._core.common import (
    JOB_COLUMNS, LEASED_COLUMNS, MAX_FALLBACK_DEPTH, STORED_COLUMNS, BAD_FLAGS, BAD_JSON, TOO_DEEP,
)

_ALL_FIELDS = JOB_COLUMNS + ("payload_error",)

cdef enum:
    NCOLUMNS = 16
    LONG_RUN = 19  # shortest digit run that can hold an integer orjson would make a float

cdef object _orjson_loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _json_loads = json.loads

cdef str _BAD_JSON = BAD_JSON
cdef str _TOO_DEEP = TOO_DEEP
cdef str _BAD_FLAGS = BAD_FLAGS


# asyncpg's own mapping of timestamptz values, so a lazily converted timestamp
# equals what asyncpg would have returned: PostgreSQL counts microseconds from
# 2000-01-01 UTC, and its infinities become naive datetime.max / datetime.min.
cdef object _PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
cdef object _INFINITY = datetime(9999, 12, 31, 23, 59, 59, 999999)
cdef object _NEGATIVE_INFINITY = datetime(1, 1, 1)
cdef object _PG_INFINITY = 0x7FFFFFFFFFFFFFFF
cdef object _PG_NEGATIVE_INFINITY = -0x8000000000000000


cdef object _pg_timestamp(object micros):
    if micros == _PG_INFINITY:
        return _INFINITY
    if micros == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _PG_EPOCH + timedelta(0, micros // 1000000, micros % 1000000)


def pg_timestamp(micros):
    """PostgreSQL's timestamptz microseconds -> the datetime asyncpg would return."""
    return _pg_timestamp(micros)


ctypedef fused char_t:
    uint8_t
    uint16_t
    uint32_t


cdef inline bint _is_digit(uint32_t c) noexcept nogil:
    return c - 48 < 10


cdef bint _long_digit_run(const char_t* data, Py_ssize_t n) noexcept nogil:
    """True if ``data`` holds LONG_RUN consecutive ASCII digits.

    Looks at every LONG_RUN-th character only: a run that long must cover one
    of them. On a digit it measures the run around it, then jumps LONG_RUN past
    the run's end. Typical payloads cost n/19 reads instead of n.
    """
    cdef Py_ssize_t i = LONG_RUN - 1, start, end
    while i < n:
        if not _is_digit(data[i]):
            i += LONG_RUN
            continue
        start = i
        while start > 0 and i - start < LONG_RUN - 1 and _is_digit(data[start - 1]):
            start -= 1
        end = i + 1
        while end < n and end - start < LONG_RUN and _is_digit(data[end]):
            end += 1
        if end - start >= LONG_RUN:
            return True
        i = end + LONG_RUN
    return False


cpdef bint _has_long_digit_run(object text) except -1:
    """True when ``text`` may hold an integer orjson would turn into a float."""
    cdef Py_ssize_t n
    cdef int kind
    cdef bytes data
    if isinstance(text, str):
        n = PyUnicode_GET_LENGTH(text)
        if n < LONG_RUN:
            return False
        kind = PyUnicode_KIND(text)
        if kind == PyUnicode_1BYTE_KIND:
            return _long_digit_run(<const uint8_t*>PyUnicode_DATA(text), n)
        if kind == PyUnicode_2BYTE_KIND:
            return _long_digit_run(<const uint16_t*>PyUnicode_DATA(text), n)
        return _long_digit_run(<const uint32_t*>PyUnicode_DATA(text), n)
    data = text if type(text) is bytes else bytes(text)
    return _long_digit_run(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef bint _deeper_than(const char_t* data, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """Whether arrays/objects nest more than ``limit`` deep, skipping string contents.

    The same state machine as the pure twin's token regex: a string runs to
    the next unescaped quote (or the end), a backslash escapes one character.
    """
    cdef Py_ssize_t i = 0, depth = 0
    cdef bint in_string = False
    cdef uint32_t c
    while i < n:
        c = data[i]
        if in_string:
            if c == 92:  # backslash
                i += 1
            elif c == 34:  # quote
                in_string = False
        elif c == 34:
            in_string = True
        elif c == 91 or c == 123:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c == 93 or c == 125:  # ] }
            depth -= 1
        i += 1
    return False


cdef bint _nested_deeper_than(object text, Py_ssize_t limit) except -1:
    cdef int kind
    cdef bytes data
    if isinstance(text, str):
        kind = PyUnicode_KIND(text)
        if kind == PyUnicode_1BYTE_KIND:
            return _deeper_than(<const uint8_t*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), limit)
        if kind == PyUnicode_2BYTE_KIND:
            return _deeper_than(<const uint16_t*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), limit)
        return _deeper_than(<const uint32_t*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), limit)
    data = text if type(text) is bytes else bytes(text)
    return _deeper_than(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), limit)


cdef class _Decoded:
    """Where the helpers below leave a value and its error (a Job is one too).

    Fields are declared in decode.pxd, so that ``dispatch`` reads them in C."""


cdef void _stdlib_loads(_Decoded into, object text) except *:
    """The fallback parser; refuses texts nested deeper than MAX_FALLBACK_DEPTH (see
    the pure twin) so that the outcome never depends on the caller's stack depth."""
    if isinstance(text, memoryview):
        text = text.tobytes()  # the stdlib takes str, bytes and bytearray only
    if _nested_deeper_than(text, MAX_FALLBACK_DEPTH):
        into._value = None
        into._error = _TOO_DEEP
        return
    try:
        into._value = _json_loads(text)
    except RecursionError:  # only if the caller's own stack is already very deep
        into._value = None
        into._error = _TOO_DEEP
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        into._value = None
        into._error = _BAD_JSON + str(exc)


cdef inline void _loads(_Decoded into, object text) except *:
    """Parses payload text into ``into._value``; failures go to ``into._error``."""
    if text is None or not isinstance(text, (str, bytes, bytearray, memoryview)):
        into._value = text
    elif _has_long_digit_run(text):
        _stdlib_loads(into, text)
    else:
        try:
            into._value = _orjson_loads(text)
        except _JSONDecodeError:
            _stdlib_loads(into, text)


cdef inline object _flags_list(object flags):
    """jsonb ``{"a": true, ...}`` text (or an already decoded dict) -> its keys.

    Returns a str (the error message) instead when the value is not an object.
    """
    if isinstance(flags, str):
        try:
            flags = _orjson_loads(flags)
        except _JSONDecodeError as exc:
            return _BAD_FLAGS + str(exc)
    if isinstance(flags, dict):
        return list(<dict>flags)
    if isinstance(flags, list):
        return flags
    return _BAD_FLAGS + f"got {type(flags).__name__}"


def loads_payload(text):
    """Parses one payload column value; returns ``(value, error)`` and never raises.

    ``None`` gives ``(None, None)``. Values that are not text (a ``dict`` from a
    custom asyncpg codec, say) are passed through unchanged: they are decoded
    already.
    """
    cdef _Decoded result = _Decoded.__new__(_Decoded)
    _loads(result, text)
    return result._value, result._error


cdef class Job(_Decoded):
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

    def __init__(self, id, queue_name, task_identifier, payload, priority, run_at, attempts,
                 max_attempts, last_error, created_at, updated_at, key, locked_at, locked_by,
                 revision, flags, payload_error=None):
        self.id = id
        self.queue_name = queue_name
        self.task_identifier = task_identifier
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
        self._value = payload
        self._error = payload_error
        self.lease = None
        self.ctid = None

    cdef int ensure_payload(self) except -1:
        cdef object text = self._raw
        if text is not None:
            self._raw = None
            _parse_text(self, text)
        return 0

    @property
    def payload(self):
        self.ensure_payload()
        return self._value

    @payload.setter
    def payload(self, value):
        self._raw = None
        self._value = value

    @property
    def payload_error(self):
        self.ensure_payload()
        return self._error

    @payload_error.setter
    def payload_error(self, value):
        self.ensure_payload()
        self._error = value

    # Timestamps may arrive as PostgreSQL's own microseconds (the fetch
    # connections decode timestamptz that way: building four datetimes per row
    # was a fifth of the worker's CPU); they become datetimes on first read.
    @property
    def run_at(self):
        if type(self._run_at) is int:
            self._run_at = _pg_timestamp(self._run_at)
        return self._run_at

    @run_at.setter
    def run_at(self, value):
        self._run_at = value

    @property
    def created_at(self):
        if type(self._created_at) is int:
            self._created_at = _pg_timestamp(self._created_at)
        return self._created_at

    @created_at.setter
    def created_at(self, value):
        self._created_at = value

    @property
    def updated_at(self):
        if type(self._updated_at) is int:
            self._updated_at = _pg_timestamp(self._updated_at)
        return self._updated_at

    @updated_at.setter
    def updated_at(self, value):
        self._updated_at = value

    @property
    def locked_at(self):
        if type(self._locked_at) is int:
            self._locked_at = _pg_timestamp(self._locked_at)
        return self._locked_at

    @locked_at.setter
    def locked_at(self, value):
        self._locked_at = value

    def __repr__(self):
        # Never the payload: it may hold personal data and this ends up in logs.
        return (
            f"<Job id={self.id!r} task_identifier={self.task_identifier!r} "
            f"queue_name={self.queue_name!r} attempts={self.attempts!r}/{self.max_attempts!r}>"
        )

    cdef tuple _astuple(self):
        self.ensure_payload()
        return (
            self.id, self.queue_name, self.task_identifier, self._value, self.priority,
            self.run_at, self.attempts, self.max_attempts, self.last_error, self.created_at,
            self.updated_at, self.key, self.locked_at, self.locked_by, self.revision,
            self.flags, self._error,
        )

    def __eq__(self, other):
        if not isinstance(other, Job):
            return NotImplemented
        return self._astuple() == (<Job>other)._astuple()

    __hash__ = None  # mutable, compared by value

    def as_dict(self):
        """Every attribute by name, for logging/serialising a job (payload included)."""
        return dict(zip(_ALL_FIELDS, self._astuple()))


cdef object _bad_row(Py_ssize_t index, object row):
    try:
        size = len(row)
    except TypeError:
        size = "?"
    return ValueError(
        f"row {index} has {size} columns, expected {NCOLUMNS} ({', '.join(JOB_COLUMNS)})"
    )


cdef inline void _fill_from_tuple(Job job, tuple row) noexcept:
    """Copies the 16 columns; payload and flags land raw, for _decode_row to parse."""
    job.id = <object>PyTuple_GET_ITEM(row, 0)
    job.queue_name = <object>PyTuple_GET_ITEM(row, 1)
    job.task_identifier = <object>PyTuple_GET_ITEM(row, 2)
    job._raw = <object>PyTuple_GET_ITEM(row, 3)
    job.priority = <object>PyTuple_GET_ITEM(row, 4)
    job._run_at = <object>PyTuple_GET_ITEM(row, 5)
    job.attempts = <object>PyTuple_GET_ITEM(row, 6)
    job.max_attempts = <object>PyTuple_GET_ITEM(row, 7)
    job.last_error = <object>PyTuple_GET_ITEM(row, 8)
    job._created_at = <object>PyTuple_GET_ITEM(row, 9)
    job._updated_at = <object>PyTuple_GET_ITEM(row, 10)
    job.key = <object>PyTuple_GET_ITEM(row, 11)
    job._locked_at = <object>PyTuple_GET_ITEM(row, 12)
    job.locked_by = <object>PyTuple_GET_ITEM(row, 13)
    job.revision = <object>PyTuple_GET_ITEM(row, 14)
    job.flags = <object>PyTuple_GET_ITEM(row, 15)


cdef void _fill_from_sequence(Job job, object row) except *:
    """The same through the type's C ``sq_item`` slot (asyncpg Records): no
    iterator, no intermediate tuple, 4-5x cheaper than ``tuple(row)``."""
    job.id = PySequence_ITEM(row, 0)
    job.queue_name = PySequence_ITEM(row, 1)
    job.task_identifier = PySequence_ITEM(row, 2)
    job._raw = PySequence_ITEM(row, 3)
    job.priority = PySequence_ITEM(row, 4)
    job._run_at = PySequence_ITEM(row, 5)
    job.attempts = PySequence_ITEM(row, 6)
    job.max_attempts = PySequence_ITEM(row, 7)
    job.last_error = PySequence_ITEM(row, 8)
    job._created_at = PySequence_ITEM(row, 9)
    job._updated_at = PySequence_ITEM(row, 10)
    job.key = PySequence_ITEM(row, 11)
    job._locked_at = PySequence_ITEM(row, 12)
    job.locked_by = PySequence_ITEM(row, 13)
    job.revision = PySequence_ITEM(row, 14)
    job.flags = PySequence_ITEM(row, 15)


cdef Job _decode_row(object row, Py_ssize_t index):
    cdef object values
    cdef Py_ssize_t size
    cdef Job job = Job.__new__(Job)
    if type(row) is tuple:
        if PyTuple_GET_SIZE(row) != NCOLUMNS:
            raise _bad_row(index, row)
        _fill_from_tuple(job, <tuple>row)
    elif PyType_HasFeature(Py_TYPE(row), Py_TPFLAGS_IMMUTABLETYPE) and PySequence_Check(row):
        # A sequence type implemented in C (asyncpg's Record, list; Python classes
        # never carry the immutable-type flag): its items are its iteration order,
        # so this reads exactly what the pure twin's tuple unpacking reads.
        try:
            size = PySequence_Size(row)
        except TypeError:
            raise _bad_row(index, row) from None
        if size != NCOLUMNS:
            raise _bad_row(index, row)
        _fill_from_sequence(job, row)
    else:
        # Anything written in Python is iterated, exactly like the pure twin.
        try:
            values = tuple(row)
        except TypeError:
            raise _bad_row(index, row) from None
        if PyTuple_GET_SIZE(values) != NCOLUMNS:
            raise _bad_row(index, row)
        _fill_from_tuple(job, <tuple>values)
    _parse_payload_and_flags(job)
    return job


cdef void _parse_payload_and_flags(Job job) except *:
    """Parses the flags a row left in ``job`` and sets its payload text aside.

    A text payload stays in ``job._raw`` until first read (see :class:`Job`);
    anything else (None, a value a custom codec decoded already) is final now.
    """
    cdef object text = job._raw
    cdef object flags = job.flags
    job.flags = None
    if text is not None and not isinstance(text, (str, bytes, bytearray, memoryview)):
        job._raw = None
        job._value = text
    if flags is not None:
        flags = _flags_list(flags)
        if type(flags) is str:  # an error message; a payload error will win over it
            job._error = flags
            flags = None
        job.flags = flags


cdef void _parse_text(_Decoded into, object text) except *:
    """A payload text -> ``into._value``; a failure replaces ``into._error``."""
    cdef object error = into._error
    into._error = None
    if type(text) is bytes or type(text) is str:
        if _has_long_digit_run(text):
            _stdlib_loads(into, text)
        else:
            try:
                into._value = _orjson_loads(text)
            except _JSONDecodeError:
                _stdlib_loads(into, text)
    else:
        _loads(into, text)
    if into._error is None:
        into._error = error


def decode_jobs(rows):
    """Decodes a fetched batch (rows in ``JOB_COLUMNS`` order) in one pass."""
    # A tuple snapshot: a Record-like row's __getitem__ is Python code that could
    # mutate a caller's list while the loop below reads it without bounds checks.
    cdef tuple seq = rows if type(rows) is tuple else tuple(rows)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(seq)
    cdef list out = [None] * n
    for i in range(n):
        out[i] = _decode_row(<object>PyTuple_GET_ITEM(seq, i), i)
    return out


cdef Py_ssize_t _NLEASED = len(LEASED_COLUMNS)


def decode_leased(rows, lease, dict task_names, locked_by, locked_at):
    """Decodes a leased batch (rows in ``LEASED_COLUMNS`` order) into jobs of ``lease``.

    ``task_names`` maps task ids to identifiers; every job gets ``locked_by``
    and ``locked_at`` (what the row will say once claimed). A null
    ``created_at`` means "as ``run_at``", a null ``updated_at`` "as ``created_at``".
    """
    cdef tuple seq = rows if type(rows) is tuple else tuple(rows)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(seq)
    cdef list out = [None] * n
    cdef Job job
    cdef object row
    for i in range(n):
        row = <object>PyTuple_GET_ITEM(seq, i)
        if not PySequence_Check(row) or PySequence_Size(row) != _NLEASED:
            raise ValueError(f"row {i} is not a leased row of {_NLEASED} columns")
        job = Job.__new__(Job)
        job.id = PySequence_ITEM(row, 0)
        job.task_identifier = task_names[PySequence_ITEM(row, 1)]
        job._raw = PySequence_ITEM(row, 2)
        job.priority = PySequence_ITEM(row, 3)
        job._run_at = PySequence_ITEM(row, 4)
        job.attempts = PySequence_ITEM(row, 5)
        job.max_attempts = PySequence_ITEM(row, 6)
        job.last_error = PySequence_ITEM(row, 7)
        job._created_at = PySequence_ITEM(row, 8)
        if job._created_at is None:  # sent as null when equal to run_at
            job._created_at = job._run_at
        job._updated_at = PySequence_ITEM(row, 9)
        if job._updated_at is None:  # sent as null when equal to created_at
            job._updated_at = job._created_at
        job.revision = PySequence_ITEM(row, 10)
        job.flags = PySequence_ITEM(row, 11)
        job._locked_at = locked_at
        job.locked_by = locked_by
        job.lease = lease
        job.ctid = PySequence_ITEM(row, 12)
        _parse_payload_and_flags(job)
        out[i] = job
    return out




def decode_stored(rows, dict task_names, dict queue_names):
    """Decodes rows in ``STORED_COLUMNS`` order; ids are named from the two maps.

    A null ``created_at`` means "as ``run_at``", a null ``updated_at`` "as
    ``created_at``" (both columns are not null in the table).
    """
    cdef tuple seq = rows if type(rows) is tuple else tuple(rows)
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(seq)
    cdef list out = [None] * n
    cdef Job job
    cdef object row, queue_id
    for i in range(n):
        row = <object>PyTuple_GET_ITEM(seq, i)
        if not PySequence_Check(row) or PySequence_Size(row) != NCOLUMNS:
            raise ValueError(f"row {i} is not a stored job row of {NCOLUMNS} columns")
        job = Job.__new__(Job)
        _fill_from_sequence(job, row)
        # _fill_from_sequence reads JOB_COLUMNS order: columns 1 and 2 hold ids here.
        queue_id = job.queue_name
        job.queue_name = None if queue_id is None else queue_names[queue_id]
        job.task_identifier = task_names[job.task_identifier]
        if job._created_at is None:  # sent as null when equal to run_at
            job._created_at = job._run_at
        if job._updated_at is None:  # sent as null when equal to created_at
            job._updated_at = job._created_at
        _parse_payload_and_flags(job)
        out[i] = job
    return out


def decode_job(row):
    """Decodes one row; see :func:`decode_jobs`."""
    return _decode_row(row, 0)
