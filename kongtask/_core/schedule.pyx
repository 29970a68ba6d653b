"""Compiled twin of ``kongtask._core.schedule_py``: retry backoff and cron arithmetic.

Same behaviour and messages; the day-of-month/day-of-week rule and the syntax
are documented in the pure twin's module docstring. Here the five fields are
``unsigned long long`` bit sets, "lowest allowed value at or above x" is
``__builtin_ctzll`` of a shifted mask, the per-weekday day sets live in a C
array inside the object, and the search runs without touching a Python object
until it builds the resulting datetime.
"""

from libc.math cimport exp

from cpython.datetime cimport (
    datetime,
    datetime_day,
    datetime_hour,
    datetime_microsecond,
    datetime_minute,
    datetime_month,
    datetime_new,
    datetime_second,
    datetime_tzinfo,
    datetime_year,
    import_datetime,
)
from cpython.number cimport PyNumber_Index

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define KT_CTZ(x) __builtin_ctzll(x)
    #else
    static int KT_CTZ(unsigned long long x) { int n = 0; while (!(x & 1ULL)) { x >>= 1; ++n; } return n; }
    #endif
    """
    int KT_CTZ(unsigned long long x) nogil

from kongtask._core.common import CRON_EXPECTED, CRON_FIELD_NAMES, HORIZON_YEARS
from kongtask.errors import CronSyntaxError

import_datetime()

__all__ = ["CronSchedule", "backoff_seconds", "parse_cron", "parse_field"]

cdef int _HORIZON = HORIZON_YEARS
cdef int _MAX_YEAR = 9999

_FIELD_NAMES = CRON_FIELD_NAMES
cdef int[5] _FIELD_LOW = [0, 0, 1, 1, 0]
cdef int[5] _FIELD_HIGH = [59, 23, 31, 12, 7]  # 7 = Sunday again, folded onto 0
cdef int[5] _STEP_HIGH = [59, 23, 31, 12, 6]  # where '*' and 'N/S' stop
_EXPECTED = CRON_EXPECTED

cdef unsigned long long _ALL_MINUTES = (1ULL << 60) - 1
cdef unsigned long long _ALL_HOURS = (1ULL << 24) - 1
cdef unsigned long long _ALL_DAYS = ((1ULL << 32) - 1) & ~1ULL
cdef unsigned long long _ALL_MONTHS = ((1ULL << 13) - 1) & ~1ULL
cdef unsigned long long _ALL_WEEKDAYS = (1ULL << 7) - 1
_FULL = ((1 << 60) - 1, (1 << 24) - 1, ((1 << 32) - 1) & ~1, ((1 << 13) - 1) & ~1, (1 << 7) - 1)

cdef int[13] _MONTH_DAYS = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
cdef int[12] _SAKAMOTO = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4]
cdef double _E10 = exp(10.0)


def backoff_seconds(attempts):
    """graphile-worker's retry delay: ``exp(least(attempts, 10))`` seconds.

    The same formula its SQL uses, so a job failed by either worker is retried
    at the same time. Accepts anything ``operator.index`` does; very negative
    counts give 0.0 instead of overflowing.
    """
    cdef long long n
    if type(attempts) is not int:
        attempts = PyNumber_Index(attempts)
    if attempts >= 10:
        return _E10
    if attempts < -1000:
        return 0.0
    n = attempts
    return exp(<double>n)


cdef inline unsigned long long _month_length_mask(int n) noexcept nogil:
    """Bits 1..n."""
    return ((1ULL << (n + 1)) - 1) & ~1ULL


cdef inline bint _is_leap(int year) noexcept nogil:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


cdef inline int _days_in_month(int year, int month) noexcept nogil:
    if month == 2 and _is_leap(year):
        return 29
    return _MONTH_DAYS[month]


cdef inline int _weekday(int year, int month, int day) noexcept nogil:
    """Day of week with Sunday = 0 (Sakamoto's method)."""
    if month < 3:
        year -= 1
    return (year + year // 4 - year // 100 + year // 400 + _SAKAMOTO[month - 1] + day) % 7


cdef inline bint _is_digits(str text):
    return text.isascii() and text.isdigit()


cdef unsigned long long _parse_field(str text, int kind, Py_ssize_t offset) except? 0:
    """Bit set for one field; ``offset`` is the field's 0-based column in the expression."""
    cdef str name = _FIELD_NAMES[kind]
    cdef int low = _FIELD_LOW[kind]
    cdef int high = _FIELD_HIGH[kind]
    cdef int step_high = _STEP_HIGH[kind]
    cdef unsigned long long mask = 0
    cdef Py_ssize_t position = offset, column
    cdef int start, stop, step, value
    cdef str item, base, slash, step_text, first, dash, last
    for item in text.split(","):
        column = position + 1
        position += len(item) + 1
        if not item:
            raise CronSyntaxError(
                f"empty item in {name} field {text!r}: expected a number, range or '*'",
                column=column,
            )
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _is_digits(step_text):
                raise CronSyntaxError(f"invalid {name} {item!r}: {_EXPECTED}", column=column)
            big_step = int(step_text)
            if big_step == 0:
                raise CronSyntaxError(f"{name} step in {item!r} must be at least 1", column=column)
            step = 64 if big_step > 64 else big_step  # a step past the range keeps only the start
        if base == "*":
            start = low
            stop = step_high
        else:
            first, dash, last = base.partition("-")
            if not _is_digits(first) or (dash and not _is_digits(last)):
                raise CronSyntaxError(f"invalid {name} {item!r}: {_EXPECTED}", column=column)
            for number in ((first, last) if dash else (first,)):
                if not low <= int(number) <= high:
                    raise CronSyntaxError(
                        f"{name} value {number} in {item!r} is out of range: expected {low}-{high}",
                        column=column,
                    )
            start = int(first)
            if dash:
                stop = int(last)
                if stop < start:
                    raise CronSyntaxError(
                        f"{name} range {item!r} is reversed: expected start <= end", column=column
                    )
            elif slash:
                stop = step_high if step_high > start else start
            else:
                stop = start
        value = start
        while value <= stop:
            mask |= 1ULL << value
            value += step
    if kind == 4 and mask & 0x80ULL:  # 7 is Sunday
        mask = (mask & 0x7FULL) | 1ULL
    return mask


def parse_field(text, kind):
    """Bit set of one cron field (kind 0 minute, 1 hour, 2 day of month, 3 month, 4 day of week).

    Errors carry ``column``, 1-based within ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"cron field must be a string, got {type(text).__name__}")
    if type(kind) is not int or not 0 <= kind <= 4:
        raise ValueError(f"kind must be 0 (minute) .. 4 (day of week), got {kind!r}")
    return _parse_field(text, kind, 0)


cdef list _split_fields(str expression):
    """(0-based column, text) of each whitespace-separated field."""
    cdef list fields = []
    cdef Py_ssize_t n = len(expression), i = 0, j
    while i < n:
        if expression[i].isspace():
            i += 1
            continue
        j = i
        while j < n and not expression[j].isspace():
            j += 1
        fields.append((i, expression[i:j]))
        i = j
    return fields


def parse_cron(expression):
    """Parses ``"MIN HOUR DOM MON DOW"``; errors carry the 1-based ``column`` of the bad item."""
    cdef list fields
    cdef int kind
    if not isinstance(expression, str):
        raise TypeError(f"cron expression must be a string, got {type(expression).__name__}")
    fields = _split_fields(expression)
    if len(fields) != 5:
        raise CronSyntaxError(
            "expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}",
            column=fields[5][0] + 1 if len(fields) > 5 else None,
        )
    masks = [_parse_field(text, kind, offset) for kind, (offset, text) in enumerate(fields)]
    return CronSchedule(*masks, source=" ".join([text for _, text in fields]))


cdef class CronSchedule:
    """A parsed 5-field cron expression; immutable and hashable.

    Equality is on the five bit sets, not the text, so ``0 0 * * 7`` equals
    ``0 0 * * 0``. ``never`` is true for expressions no date satisfies (such as
    ``0 0 30 2 *``); :meth:`next_fire` raises ``ValueError`` for them at once.
    """

    cdef readonly unsigned long long minutes
    cdef readonly unsigned long long hours
    cdef readonly unsigned long long days
    cdef readonly unsigned long long months
    cdef readonly unsigned long long weekdays
    cdef readonly str source
    cdef readonly bint never
    # daysets[w]: days of a month (bits 1..31) that match when the 1st is weekday w.
    cdef unsigned long long daysets[7]

    def __init__(self, minutes, hours, days, months, weekdays, source=""):
        masks = (PyNumber_Index(minutes), PyNumber_Index(hours), PyNumber_Index(days),
                 PyNumber_Index(months), PyNumber_Index(weekdays))
        for kind, mask in enumerate(masks):
            if mask <= 0 or mask & ~_FULL[kind]:
                raise ValueError(
                    f"{_FIELD_NAMES[kind]} bit set {mask:#x} is empty or out of range "
                    f"(allowed bits {_FULL[kind]:#x})"
                )
        if not isinstance(source, str):
            raise TypeError(f"source must be a string, got {type(source).__name__}")
        self.minutes, self.hours, self.days, self.months, self.weekdays = masks
        self.source = source
        self._precompute()

    cdef void _precompute(self) noexcept:
        cdef bint days_restricted = self.days != _ALL_DAYS
        cdef bint weekdays_restricted = self.weekdays != _ALL_WEEKDAYS
        cdef unsigned long long by_weekday, longest = 0, any_day = 0
        cdef int first, day, month
        for first in range(7):
            by_weekday = 0
            for day in range(1, 32):
                if (self.weekdays >> ((first + day - 1) % 7)) & 1ULL:
                    by_weekday |= 1ULL << day
            if days_restricted and weekdays_restricted:
                self.daysets[first] = self.days | by_weekday
            elif days_restricted:
                self.daysets[first] = self.days
            elif weekdays_restricted:
                self.daysets[first] = by_weekday
            else:
                self.daysets[first] = _ALL_DAYS
        for month in range(1, 13):
            if (self.months >> month) & 1ULL:
                longest |= _month_length_mask(29 if month == 2 else _MONTH_DAYS[month])
        for first in range(7):
            any_day |= self.daysets[first] & longest
        self.never = any_day == 0

    def __repr__(self):
        return f"CronSchedule({self.source!r})"

    def __eq__(self, other):
        cdef CronSchedule that
        if not isinstance(other, CronSchedule):
            return NotImplemented
        that = <CronSchedule>other
        return (self.minutes == that.minutes and self.hours == that.hours
                and self.days == that.days and self.months == that.months
                and self.weekdays == that.weekdays)

    def __hash__(self):
        return hash((self.minutes, self.hours, self.days, self.months, self.weekdays))

    def __reduce__(self):
        return (CronSchedule, (self.minutes, self.hours, self.days, self.months, self.weekdays,
                               self.source))

    def matches(self, dt):
        """Whether ``dt``'s wall-clock minute is a fire time (seconds ignored)."""
        cdef int day, year, month
        if not isinstance(dt, datetime):
            raise TypeError(f"expected a datetime, got {type(dt).__name__}")
        month = datetime_month(dt)
        if not ((self.minutes >> datetime_minute(dt)) & 1ULL
                and (self.hours >> datetime_hour(dt)) & 1ULL
                and (self.months >> month) & 1ULL):
            return False
        day = datetime_day(dt)
        year = datetime_year(dt)
        return bool((self.daysets[_weekday(year, month, 1)] >> day) & 1ULL)

    cdef bint _search(self, int* fields, int last_year) noexcept nogil:
        """First fire time at or after ``fields`` (year, month, day, hour, minute),
        written back in place; the fields may overflow by one (minute 60, hour 24,
        day 32, month 13). False past the end of ``last_year``.
        """
        cdef int year = fields[0], month = fields[1], day = fields[2]
        cdef int hour = fields[3], minute = fields[4], found
        cdef unsigned long long mask
        while True:
            if year > last_year:
                return False
            mask = (self.months >> month) << month
            if not mask:
                year += 1
                month = 1
                day = 1
                hour = 0
                minute = 0
                continue
            found = KT_CTZ(mask)
            if found != month:
                month = found
                day = 1
                hour = 0
                minute = 0
            mask = ((self.daysets[_weekday(year, month, 1)]
                     & _month_length_mask(_days_in_month(year, month))) >> day) << day
            if not mask:
                month += 1
                day = 1
                hour = 0
                minute = 0
                continue
            found = KT_CTZ(mask)
            if found != day:
                day = found
                hour = 0
                minute = 0
            mask = (self.hours >> hour) << hour
            if not mask:
                day += 1
                hour = 0
                minute = 0
                continue
            found = KT_CTZ(mask)
            if found != hour:
                hour = found
                minute = 0
            mask = (self.minutes >> minute) << minute
            if not mask:
                hour += 1
                minute = 0
                continue
            fields[0] = year
            fields[1] = month
            fields[2] = day
            fields[3] = hour
            fields[4] = KT_CTZ(mask)
            return True

    def next_fire(self, after):
        """First fire time strictly after ``after``'s minute, with ``after``'s tzinfo.

        Raises ``ValueError`` if the expression can never fire, or if the next
        fire would be after year 9999.
        """
        cdef int fields[5]
        cdef int year, last_year
        if not isinstance(after, datetime):
            raise TypeError(f"expected a datetime, got {type(after).__name__}")
        if self.never:
            raise ValueError(f"cron schedule {self.source!r} can never fire")
        year = datetime_year(after)
        fields[0] = year
        fields[1] = datetime_month(after)
        fields[2] = datetime_day(after)
        fields[3] = datetime_hour(after)
        fields[4] = datetime_minute(after) + 1
        last_year = year + _HORIZON
        if last_year > _MAX_YEAR:
            last_year = _MAX_YEAR
        if not self._search(fields, last_year):
            raise ValueError(f"cron schedule {self.source!r} has no fire time before year 10000")
        return datetime_new(fields[0], fields[1], fields[2], fields[3], fields[4], 0, 0,
                            datetime_tzinfo(after))

    def fire_times(self, start, end):
        """Every fire time ``m`` with ``start <= m < end`` (``start`` rounded up to a minute).

        For backfill after downtime. Times carry ``start``'s tzinfo; an aware
        ``end`` in another zone is converted to it first.
        """
        cdef int fields[5]
        cdef int end_fields[5]
        cdef bint end_inclusive, before, start_naive, end_naive
        cdef int i
        cdef list out = []
        if not isinstance(start, datetime):
            raise TypeError(f"expected a datetime, got {type(start).__name__}")
        if not isinstance(end, datetime):
            raise TypeError(f"expected a datetime, got {type(end).__name__}")
        tz = datetime_tzinfo(start)
        if datetime_tzinfo(end) is not tz:
            start_naive = tz is None or start.utcoffset() is None
            end_naive = datetime_tzinfo(end) is None or end.utcoffset() is None
            if start_naive != end_naive:
                raise TypeError("can't compare offset-naive and offset-aware datetimes")
            if not start_naive:
                end = end.astimezone(tz)
        if self.never:
            return out
        fields[0] = datetime_year(start)
        fields[1] = datetime_month(start)
        fields[2] = datetime_day(start)
        fields[3] = datetime_hour(start)
        fields[4] = datetime_minute(start)
        if datetime_second(start) or datetime_microsecond(start):
            fields[4] += 1
        # A whole minute m is before end iff its fields sort before end's, or
        # equal them while end has seconds left over.
        end_fields[0] = datetime_year(end)
        end_fields[1] = datetime_month(end)
        end_fields[2] = datetime_day(end)
        end_fields[3] = datetime_hour(end)
        end_fields[4] = datetime_minute(end)
        end_inclusive = datetime_second(end) != 0 or datetime_microsecond(end) != 0
        while self._search(fields, end_fields[0]):
            before = end_inclusive
            for i in range(5):
                if fields[i] != end_fields[i]:
                    before = fields[i] < end_fields[i]
                    break
            if not before:
                break
            out.append(datetime_new(fields[0], fields[1], fields[2], fields[3], fields[4], 0, 0, tz))
            fields[4] += 1
        return out
