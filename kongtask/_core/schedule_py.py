"""Pure-Python twin of ``kongtask._core.schedule``: retry backoff and cron arithmetic.

Cron fields are bit sets (bit *n* set = value *n* allowed), so matching is a
shift and a mask, and finding the next fire time is "lowest set bit at or above
*x*" on each field in turn: a search that skips whole months, days and hours
that cannot match instead of stepping minute by minute.

Day of month and day of week follow graphile-worker 0.17.3 (its ``cronMatcher``):

* a field is *restricted* when its set of values is not the whole range: day
  of month other than all of 1-31, day of week other than all of 0-6. The test
  is on the parsed set, not the text, so ``1-31``, ``*/1`` and ``0-7`` are as
  unrestricted as ``*``, while ``*/2`` restricts;
* when both are restricted a day matches if *either* matches (classic cron's
  OR rule), e.g. ``0 0 13 * 5`` fires on every 13th and on every Friday;
* when only one is restricted, only that one decides;
* when neither is, every day matches.

Syntax is a superset of graphile-worker's: ``*``, ``N``, ``A-B``, ``*/S``, plus
``A-B/S`` and ``N/S`` (N up to the field's maximum, step S), in comma lists.
Unlike graphile-worker, a one-value range ``A-A`` is accepted. Day of week
accepts 7 for Sunday (stored as 0).

All matching is on a datetime's own wall-clock fields, whatever its tzinfo
(kongtask feeds UTC); results keep the caller's tzinfo (``fold=0``).
"""

from __future__ import annotations

import math
from datetime import datetime
from operator import index as _index

from kongtask._core.common import CRON_EXPECTED, CRON_FIELD_NAMES, HORIZON_YEARS
from kongtask.errors import CronSyntaxError

__all__ = ["CronSchedule", "backoff_seconds", "parse_cron", "parse_field"]

_MAX_YEAR = 9999

_FIELD_NAMES = CRON_FIELD_NAMES
_FIELD_LOW = (0, 0, 1, 1, 0)
_FIELD_HIGH = (59, 23, 31, 12, 7)  # 7 = Sunday again, folded onto 0
_STEP_HIGH = (59, 23, 31, 12, 6)  # where '*' and 'N/S' stop
_EXPECTED = CRON_EXPECTED

_ALL_MINUTES = (1 << 60) - 1
_ALL_HOURS = (1 << 24) - 1
_ALL_DAYS = ((1 << 32) - 1) & ~1  # bits 1..31
_ALL_MONTHS = ((1 << 13) - 1) & ~1  # bits 1..12
_ALL_WEEKDAYS = (1 << 7) - 1  # bits 0..6
_FULL = (_ALL_MINUTES, _ALL_HOURS, _ALL_DAYS, _ALL_MONTHS, _ALL_WEEKDAYS)

# Bits 1..n, for the length n of a month.
_MONTH_LENGTH_MASK = tuple(((1 << (n + 1)) - 1) & ~1 for n in range(32))
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SAKAMOTO = (0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4)
_E10 = math.exp(10)
_EXP = tuple(math.exp(n) for n in range(11))


def backoff_seconds(attempts: int) -> float:
    """graphile-worker's retry delay: ``exp(least(attempts, 10))`` seconds.

    The same formula its SQL uses, so a job failed by either worker is retried
    at the same time. Accepts anything ``operator.index`` does; very negative
    counts give 0.0 instead of overflowing ``float()``.
    """
    n = _index(attempts)
    if n >= 10:
        return _E10
    if n >= 0:
        return _EXP[n]
    if n < -1000:
        return 0.0
    return math.exp(n)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _MONTH_DAYS[month]


def _weekday(year: int, month: int, day: int) -> int:
    """Day of week with Sunday = 0 (Sakamoto's method: no date object needed)."""
    if month < 3:
        year -= 1
    return (year + year // 4 - year // 100 + year // 400 + _SAKAMOTO[month - 1] + day) % 7


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_field(text: str, kind: int, offset: int) -> int:
    """Bit set for one field; ``offset`` is the field's 0-based column in the expression."""
    name = _FIELD_NAMES[kind]
    low = _FIELD_LOW[kind]
    high = _FIELD_HIGH[kind]
    step_high = _STEP_HIGH[kind]
    mask = 0
    position = offset
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
            step = int(step_text)
            if step == 0:
                raise CronSyntaxError(f"{name} step in {item!r} must be at least 1", column=column)
        if base == "*":
            start, stop = low, step_high
        else:
            first, dash, last = base.partition("-")
            if not _is_digits(first) or (dash and not _is_digits(last)):
                raise CronSyntaxError(f"invalid {name} {item!r}: {_EXPECTED}", column=column)
            for number in (first, last) if dash else (first,):
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
                stop = max(step_high, start)
            else:
                stop = start
        for value in range(start, stop + 1, step):
            mask |= 1 << value
    if kind == 4 and mask & 0x80:  # 7 is Sunday
        mask = (mask & 0x7F) | 1
    return mask


def parse_field(text: str, kind: int) -> int:
    """Bit set of one cron field (kind 0 minute, 1 hour, 2 day of month, 3 month, 4 day of week).

    Errors carry ``column``, 1-based within ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"cron field must be a string, got {type(text).__name__}")
    if type(kind) is not int or not 0 <= kind <= 4:
        raise ValueError(f"kind must be 0 (minute) .. 4 (day of week), got {kind!r}")
    return _parse_field(text, kind, 0)


def _split_fields(expression: str) -> list[tuple[int, str]]:
    """(0-based column, text) of each whitespace-separated field."""
    fields: list[tuple[int, str]] = []
    n = len(expression)
    i = 0
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


def parse_cron(expression: str) -> CronSchedule:
    """Parses ``"MIN HOUR DOM MON DOW"``; errors carry the 1-based ``column`` of the bad item."""
    if not isinstance(expression, str):
        raise TypeError(f"cron expression must be a string, got {type(expression).__name__}")
    fields = _split_fields(expression)
    if len(fields) != 5:
        raise CronSyntaxError(
            "expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}",
            column=fields[5][0] + 1 if len(fields) > 5 else None,
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, kind, offset) for kind, (offset, text) in enumerate(fields)
    )
    return CronSchedule(
        minutes, hours, days, months, weekdays, source=" ".join(text for _, text in fields)
    )


class CronSchedule:
    """A parsed 5-field cron expression; immutable and hashable.

    Equality is on the five bit sets, not the text, so ``0 0 * * 7`` equals
    ``0 0 * * 0``. ``never`` is true for expressions no date satisfies (such as
    ``0 0 30 2 *``); :meth:`next_fire` raises ``ValueError`` for them at once.
    """

    __slots__ = (
        "_days",
        "_daysets",
        "_hours",
        "_minutes",
        "_months",
        "_never",
        "_source",
        "_weekdays",
    )

    _minutes: int
    _hours: int
    _days: int
    _months: int
    _weekdays: int
    _source: str
    _daysets: tuple[int, ...]
    _never: bool

    def __init__(
        self, minutes: int, hours: int, days: int, months: int, weekdays: int, source: str = ""
    ) -> None:
        masks = (_index(minutes), _index(hours), _index(days), _index(months), _index(weekdays))
        for kind, mask in enumerate(masks):
            if mask <= 0 or mask & ~_FULL[kind]:
                raise ValueError(
                    f"{_FIELD_NAMES[kind]} bit set {mask:#x} is empty or out of range "
                    f"(allowed bits {_FULL[kind]:#x})"
                )
        if not isinstance(source, str):
            raise TypeError(f"source must be a string, got {type(source).__name__}")
        self._minutes, self._hours, self._days, self._months, self._weekdays = masks
        self._source = source
        # _daysets[w]: days of a month (bits 1..31) that match when the 1st is weekday w.
        days_restricted = masks[2] != _ALL_DAYS
        weekdays_restricted = masks[4] != _ALL_WEEKDAYS
        daysets = []
        for first in range(7):
            by_weekday = 0
            for day in range(1, 32):
                if masks[4] >> ((first + day - 1) % 7) & 1:
                    by_weekday |= 1 << day
            if days_restricted and weekdays_restricted:
                daysets.append(masks[2] | by_weekday)
            elif days_restricted:
                daysets.append(masks[2])
            elif weekdays_restricted:
                daysets.append(by_weekday)
            else:
                daysets.append(_ALL_DAYS)
        self._daysets = tuple(daysets)
        longest = 0
        for month in range(1, 13):
            if masks[3] >> month & 1:
                longest |= _MONTH_LENGTH_MASK[29 if month == 2 else _MONTH_DAYS[month]]
        self._never = not any(dayset & longest for dayset in daysets)

    minutes = property(lambda self: self._minutes, doc="Bit set of allowed minutes (0-59).")
    hours = property(lambda self: self._hours, doc="Bit set of allowed hours (0-23).")
    days = property(lambda self: self._days, doc="Bit set of allowed days of month (1-31).")
    months = property(lambda self: self._months, doc="Bit set of allowed months (1-12).")
    weekdays = property(
        lambda self: self._weekdays, doc="Bit set of allowed weekdays (0-6, Sunday 0)."
    )
    source = property(lambda self: self._source, doc="The expression, fields joined by one space.")
    never = property(lambda self: self._never, doc="True when no date can ever match.")

    def __repr__(self) -> str:
        return f"CronSchedule({self._source!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronSchedule):
            return NotImplemented
        return (
            self._minutes == other._minutes
            and self._hours == other._hours
            and self._days == other._days
            and self._months == other._months
            and self._weekdays == other._weekdays
        )

    def __hash__(self) -> int:
        return hash((self._minutes, self._hours, self._days, self._months, self._weekdays))

    def matches(self, dt: datetime) -> bool:
        """Whether ``dt``'s wall-clock minute is a fire time (seconds ignored)."""
        if not isinstance(dt, datetime):
            raise TypeError(f"expected a datetime, got {type(dt).__name__}")
        if not (
            self._minutes >> dt.minute & 1
            and self._hours >> dt.hour & 1
            and self._months >> dt.month & 1
        ):
            return False
        day = dt.day
        first = (dt.isoweekday() - day + 1) % 7  # weekday of the 1st, Sunday = 0
        return bool(self._daysets[first] >> day & 1)

    def _search(
        self, year: int, month: int, day: int, hour: int, minute: int, last_year: int
    ) -> tuple[int, int, int, int, int] | None:
        """First fire time at or after the given fields (which may overflow by one:
        minute 60, hour 24, day 32, month 13); None past the end of ``last_year``.
        """
        months = self._months
        hours = self._hours
        minutes = self._minutes
        daysets = self._daysets
        while True:
            if year > last_year:
                return None
            mask = months >> month << month
            if not mask:
                year += 1
                month, day, hour, minute = 1, 1, 0, 0
                continue
            found = _lowest_bit(mask)
            if found != month:
                month, day, hour, minute = found, 1, 0, 0
            mask = (
                (
                    daysets[_weekday(year, month, 1)]
                    & _MONTH_LENGTH_MASK[_days_in_month(year, month)]
                )
                >> day
                << day
            )
            if not mask:
                month += 1
                day, hour, minute = 1, 0, 0
                continue
            found = _lowest_bit(mask)
            if found != day:
                day, hour, minute = found, 0, 0
            mask = hours >> hour << hour
            if not mask:
                day += 1
                hour, minute = 0, 0
                continue
            found = _lowest_bit(mask)
            if found != hour:
                hour, minute = found, 0
            mask = minutes >> minute << minute
            if not mask:
                hour += 1
                minute = 0
                continue
            return year, month, day, hour, _lowest_bit(mask)

    def next_fire(self, after: datetime) -> datetime:
        """First fire time strictly after ``after``'s minute, with ``after``'s tzinfo.

        Raises ``ValueError`` if the expression can never fire, or if the next
        fire would be after year 9999.
        """
        if not isinstance(after, datetime):
            raise TypeError(f"expected a datetime, got {type(after).__name__}")
        if self._never:
            raise ValueError(f"cron schedule {self._source!r} can never fire")
        year = after.year
        found = self._search(
            year,
            after.month,
            after.day,
            after.hour,
            after.minute + 1,
            min(year + HORIZON_YEARS, _MAX_YEAR),
        )
        if found is None:
            raise ValueError(f"cron schedule {self._source!r} has no fire time before year 10000")
        return datetime(*found, tzinfo=after.tzinfo)

    def fire_times(self, start: datetime, end: datetime) -> list[datetime]:
        """Every fire time ``m`` with ``start <= m < end`` (``start`` rounded up to a minute).

        For backfill after downtime. Times carry ``start``'s tzinfo; an aware
        ``end`` in another zone is converted to it first.
        """
        if not isinstance(start, datetime):
            raise TypeError(f"expected a datetime, got {type(start).__name__}")
        if not isinstance(end, datetime):
            raise TypeError(f"expected a datetime, got {type(end).__name__}")
        tz = start.tzinfo
        if end.tzinfo is not tz:
            start_naive = tz is None or start.utcoffset() is None
            end_naive = end.tzinfo is None or end.utcoffset() is None
            if start_naive != end_naive:
                raise TypeError("can't compare offset-naive and offset-aware datetimes")
            if not start_naive:
                end = end.astimezone(tz)
        out: list[datetime] = []
        if self._never:
            return out
        minute = start.minute
        if start.second or start.microsecond:
            minute += 1
        # A whole minute m is before end iff its fields sort before end's, or
        # equal them while end has seconds left over.
        end_fields = (end.year, end.month, end.day, end.hour, end.minute)
        end_inclusive = bool(end.second or end.microsecond)
        end_year = end.year
        append = out.append
        search = self._search
        found = search(start.year, start.month, start.day, start.hour, minute, end_year)
        while found is not None and (found < end_fields or (end_inclusive and found == end_fields)):
            append(datetime(*found, tzinfo=tz))
            year, month, day, hour, minute = found
            found = search(year, month, day, hour, minute + 1, end_year)
        return out
