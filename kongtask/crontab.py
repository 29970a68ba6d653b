"""Cron items: the crontab text format, the programmatic form, and when an item is due.

A :class:`CronItem` says *what* to enqueue (task, payload, job options) and
*when* (a :class:`~kongtask._core.schedule.CronSchedule`, optionally read in a
time zone). :func:`parse_crontab` turns graphile-worker's crontab text into
items; :meth:`CronItem.create` builds one from Python. The scheduler in
:mod:`kongtask.cron` only ever asks an item three questions, all answered here
so that the tick, the backfill and ``kongtask cron check`` cannot disagree:
:meth:`CronItem.is_due`, :meth:`CronItem.next_fire` and :meth:`CronItem.due_times`.

The text format is graphile-worker 0.17's (so one file serves Node and Python
workers), plus three extensions Node would reject: ``@hourly``-style macros,
the ``tz`` option, and the ``N/S``/``A-B/S`` step forms of ``_core``. Every
error is a :class:`~kongtask.errors.CronSyntaxError` carrying the 1-based line
and column of the offending text and saying what was expected there.

Time zones (``tz``): cron fields are matched against the zone's wall clock,
while the scheduler ticks on UTC minutes. Where the wall clock is not a simple
function of UTC we decide explicitly:

* **gap** (spring forward): a wall-clock fire time that never happens fires
  once, at the first minute after the gap (the instant of the shift), so a
  daily 02:30 job still runs on the day the clock jumps from 02:00 to 03:00.
  Several skipped fire times, and a fire time at the shift itself, collapse
  into that one job;
* **overlap** (fall back): a repeated wall-clock minute fires once, at its
  first occurrence; the second pass through the hour fires nothing.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

from ._core import payload as _payload
from ._core import schedule as _schedule
from .errors import CronSyntaxError, InvalidJobSpec

__all__ = [
    "MACROS",
    "CronItem",
    "as_cron_items",
    "cron_check_main",
    "describe_next",
    "load_crontab",
    "parse_crontab",
    "parse_time_phrase",
]

CronSchedule = _schedule.CronSchedule
UTC = timezone.utc
ONE_MINUTE = timedelta(minutes=1)

#: Vixie-cron shorthands accepted in place of the five time fields (an extension).
MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# graphile-worker's accepted shapes (cronConstants), so a crontab that works
# in Node works here and vice versa. Compiled on first use (_re): compiling
# them all cost every worker's start-up 0.7 ms, and most pools have no crontab.
_TASK = r"[_a-zA-Z][_a-zA-Z0-9:/_-]*"
_ID = r"[_a-zA-Z][-_a-zA-Z0-9]*"
_QUEUE = r"[-a-zA-Z0-9_:]+"
_UNSIGNED = r"[0-9]+"
_SIGNED = r"-?[0-9]+"
_PHRASE_PART = r"([0-9]+)([smhdw])"
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TEXT_JOB_KEY_MODES = ("replace", "preserve_run_at")
_OPTION_KEYS = ("id", "fill", "max", "queue", "jobKey", "jobKeyMode", "priority", "tz")
_JSON5_ERROR = r"^<string>:(\d+) (.*) at column (\d+)$"


@functools.cache
def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# --------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class CronItem:
    """One scheduled task: what to enqueue, and when.

    ``backfill_period`` is in seconds (graphile-worker's ``backfillPeriod`` is
    in milliseconds). ``tz`` None means UTC, as in graphile-worker. The job is
    added with ``payload`` plus ``_cron: {ts, backfilled}``; the other fields
    become the job's options. Construction validates every field, so an item
    that exists can always be scheduled.
    """

    task: str
    schedule: CronSchedule
    identifier: str
    payload: dict[str, Any] | None = field(default=None, hash=False)
    queue_name: str | None = None
    job_key: str | None = None
    job_key_mode: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    backfill_period: float = 0
    tz: ZoneInfo | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, CronSchedule):
            raise InvalidJobSpec(
                "schedule",
                f"must be a CronSchedule (kongtask._core.schedule.parse_cron), "
                f"got {type(self.schedule).__name__}",
            )
        if self.schedule.never:
            raise InvalidJobSpec("schedule", f"{self.schedule.source!r} can never fire")
        # The task is the job's identifier; errors name it as this item's ``task``
        # (the item's own ``identifier`` is its crontab id, checked below).
        _payload.validate_field("identifier", self.task, field="task")
        for name in ("queue_name", "max_attempts", "job_key", "job_key_mode", "priority"):
            _payload.validate_field(name, getattr(self, name))
        if not isinstance(self.identifier, str) or not self.identifier:
            raise InvalidJobSpec("identifier", "must be a non-empty string")
        if "\0" in self.identifier:
            raise InvalidJobSpec("identifier", "must not contain NUL characters")
        if self.payload is not None:
            if not isinstance(self.payload, Mapping):
                raise InvalidJobSpec(
                    "payload", f"must be a dict or None, got {type(self.payload).__name__}"
                )
            try:
                orjson.dumps(self.payload)
            except (TypeError, orjson.JSONEncodeError) as exc:
                raise InvalidJobSpec("payload", f"is not JSON-serialisable: {exc}") from None
            # A private copy: the scheduler serialises it at every tick, and a
            # caller mutating their dict afterwards must not change the item.
            object.__setattr__(self, "payload", dict(self.payload))
        period = self.backfill_period
        if (
            isinstance(period, bool)
            or not isinstance(period, int | float)
            or not math.isfinite(period)
            or period < 0
        ):
            raise InvalidJobSpec(
                "backfill_period", f"must be a finite number of seconds >= 0, got {period!r}"
            )
        object.__setattr__(self, "backfill_period", float(period))
        if self.tz is not None and not isinstance(self.tz, tzinfo):
            raise InvalidJobSpec(
                "tz", f"must be a ZoneInfo (or None for UTC), got {type(self.tz).__name__}"
            )

    @classmethod
    def create(
        cls,
        task: str,
        pattern: str | CronSchedule,
        *,
        identifier: str | None = None,
        payload: Mapping[str, Any] | None = None,
        queue_name: str | None = None,
        job_key: str | None = None,
        job_key_mode: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backfill_period: float | timedelta | str = 0,
        tz: str | tzinfo | None = None,
    ) -> CronItem:
        """The programmatic form: ``CronItem.create("report", "0 4 * * *", tz="Europe/Paris")``.

        ``pattern`` is five cron fields or a macro (``@daily`` ...);
        ``backfill_period`` takes seconds, a ``timedelta`` or a time phrase
        (``"1d12h"``); ``tz`` an IANA name or a ``ZoneInfo``. The identifier
        defaults to the task name, and a job key without a mode means
        ``replace``, both as in graphile-worker. Pattern errors raise
        :class:`CronSyntaxError` (column within the pattern), other fields
        :class:`InvalidJobSpec`.
        """
        if isinstance(pattern, str):
            stripped = pattern.strip()
            if stripped.startswith("@"):
                expression = MACROS.get(stripped)
                if expression is None:
                    raise CronSyntaxError(_unknown_macro(stripped), column=1)
                parsed = _schedule.parse_cron(expression)
            else:
                parsed = _schedule.parse_cron(pattern)
        else:
            parsed = pattern
        if isinstance(backfill_period, timedelta):
            period: float = backfill_period.total_seconds()
        elif isinstance(backfill_period, str):
            try:
                period = parse_time_phrase(backfill_period)
            except CronSyntaxError as exc:
                raise InvalidJobSpec("backfill_period", exc.message) from None
        else:
            period = backfill_period
        if isinstance(tz, str):
            zone: tzinfo | None = _zone(tz)
            if zone is None:
                raise InvalidJobSpec("tz", f"unknown time zone {tz!r}: expected an IANA name")
        else:
            zone = tz
        return cls(
            task=task,
            schedule=parsed,
            identifier=task if identifier is None else identifier,
            payload=payload,  # type: ignore[arg-type]  # checked and copied by __post_init__
            queue_name=queue_name,
            job_key=job_key,
            job_key_mode=job_key_mode or ("replace" if job_key else None),
            priority=priority,
            max_attempts=max_attempts,
            backfill_period=period,
            tz=zone,  # type: ignore[arg-type]  # any tzinfo works; ZoneInfo is the intent
        )

    # ------------------------------------------------------------- timing
    def is_due(self, at: datetime) -> bool:
        """Whether the scheduler should enqueue this item at the UTC minute of ``at``.

        For UTC items this is plain cron matching. For zoned items it is
        defined as "the next fire after the previous minute is this minute",
        so ticking, backfilling and ``next_fire`` share one definition of the
        gap and overlap rules.
        """
        at = _utc(at)
        if self.tz is None:
            return self.schedule.matches(at)
        minute = _floor_minute(at)
        return self.next_fire(minute - ONE_MINUTE) == minute

    def next_fire(self, after: datetime) -> datetime:
        """The first UTC minute strictly after ``after``'s minute at which this item is due.

        Returns an aware UTC datetime. Raises ``ValueError`` past year 9999.
        """
        after = _utc(after)
        zone = self.tz
        if zone is None:
            return self.schedule.next_fire(after)
        after = _floor_minute(after)
        wall = _wall(after, zone)
        while True:
            wall = self.schedule.next_fire(wall)
            due = _due_instant(wall, zone)
            if due > after:
                return due

    def due_times(self, start: datetime, end: datetime) -> list[datetime]:
        """Every UTC minute ``m`` with ``start <= m < end`` at which this item is due."""
        start = _utc(start)
        end = _utc(end)
        if self.tz is None:
            return self.schedule.fire_times(start, end)
        out: list[datetime] = []
        first = _floor_minute(start)
        if first < start:
            first += ONE_MINUTE
        moment = first - ONE_MINUTE
        while True:
            moment = self.next_fire(moment)
            if moment >= end:
                return out
            out.append(moment)

    def describe(self) -> str:
        """One line for humans: identifier, task, schedule and the non-default options."""
        parts = [f"{self.identifier}: {self.schedule.source} {self.task}"]
        options = {
            "tz": getattr(self.tz, "key", None) or (str(self.tz) if self.tz else None),
            "fill": _format_seconds(self.backfill_period) if self.backfill_period else None,
            "queue": self.queue_name,
            "max": self.max_attempts,
            "priority": self.priority,
            "jobKey": self.job_key,
            "jobKeyMode": self.job_key_mode if self.job_key else None,
        }
        shown = [f"{key}={value}" for key, value in options.items() if value is not None]
        if shown:
            parts.append("?" + "&".join(shown))
        if self.payload:
            parts.append(orjson.dumps(self.payload).decode())
        return " ".join(parts)


# ------------------------------------------------------------------ time helpers


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (as in the rest of kongtask)."""
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + ONE_MINUTE


def _wall(moment: datetime, zone: tzinfo) -> datetime:
    """The zone's wall-clock minute at a UTC instant, naive."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0, second=0, microsecond=0)


def _due_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC minute at which a wall-clock fire time ``wall`` (naive) is due in ``zone``.

    Existing times map to their first occurrence; a time inside a gap maps to
    the first UTC minute whose wall clock is past it (the shift).
    """
    early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if late < early:
        early, late = late, early
    if _wall(early, zone) == wall:
        return _ceil_minute(early)
    if _wall(late, zone) == wall:
        return _ceil_minute(late)
    # In a gap the two folds straddle the transition; bisect for its minute.
    low = _floor_minute(early)
    high = _ceil_minute(late)
    while _wall(high, zone) <= wall:  # defensive: never loops for real zone data
        high += ONE_MINUTE
    while high - low > ONE_MINUTE:
        middle = low + ONE_MINUTE * ((high - low) // ONE_MINUTE // 2)
        if _wall(middle, zone) > wall:
            high = middle
        else:
            low = middle
    return high


def _format_seconds(seconds: float) -> str:
    """A time phrase for a number of seconds (``90061`` -> ``1d1h1m1s``)."""
    remaining = int(seconds)
    parts = []
    for letter in "wdhms":
        size = _PERIODS[letter]
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{letter}")
    return "".join(parts) or "0s"


def parse_time_phrase(text: str) -> float:
    """Seconds in a time phrase such as ``1w2d3h4m5s`` (graphile-worker's ``fill`` values).

    Raises :class:`CronSyntaxError` whose ``column`` is 1-based within ``text``.
    """
    position = 0
    seconds = 0
    if not text:
        raise CronSyntaxError("empty time phrase: expected e.g. 1h or 1w2d3h4m5s", column=1)
    while position < len(text):
        match = _re(_PHRASE_PART).match(text, position)
        if not match:
            raise CronSyntaxError(
                f"invalid time phrase {text!r}: did not understand {text[position:]!r}; "
                "expected a number followed by s, m, h, d or w (e.g. 1w2d3h4m5s)",
                column=position + 1,
            )
        seconds += int(match.group(1)) * _PERIODS[match.group(2)]
        position = match.end()
    return float(seconds)


def _zone(name: str) -> tzinfo | None:
    # Imported here: zoneinfo pulls in sysconfig, a few ms of every worker's
    # start-up, and only crontabs that name a time zone need it.
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _unknown_macro(text: str) -> str:
    return f"unknown macro {text!r}: expected one of {', '.join(MACROS)} or five time fields"


# -------------------------------------------------------------------- the parser


def _tokens(line: str) -> list[tuple[int, str]]:
    """(0-based start, text) of each whitespace-separated token."""
    return [(m.start(), m.group()) for m in re.finditer(r"\S+", line)]


class _Line:
    """Parses one crontab line; every error names this line and a column."""

    def __init__(self, text: str, number: int) -> None:
        self.text = text
        self.number = number

    def error(self, message: str, index: int) -> CronSyntaxError:
        """``index`` is 0-based in the line; reported 1-based."""
        return CronSyntaxError(message, line=self.number, column=index + 1)

    def parse(self) -> tuple[CronItem, int]:
        """The item and the 0-based column its identifier came from."""
        text = self.text
        tokens = _tokens(text)
        start, first = tokens[0]
        if first.startswith("@"):
            expression = MACROS.get(first)
            if expression is None:
                raise self.error(_unknown_macro(first), start)
            parsed = _schedule.parse_cron(expression)
            if len(tokens) < 2:
                raise self.error(f"expected a task name after {first}", len(text.rstrip()))
            command_at = tokens[1][0]
        else:
            for kind, (offset, field_text) in enumerate(tokens[:5]):
                try:
                    _schedule.parse_field(field_text, kind)
                except CronSyntaxError as exc:
                    column = offset + (exc.column - 1 if exc.column else 0)
                    raise self.error(exc.message, column) from None
            end = len(text.rstrip())
            if len(tokens) < 5:
                raise self.error(
                    "expected 5 time fields (minute hour day-of-month month day-of-week) "
                    f"then a task name, got only {len(tokens)} field(s)",
                    end,
                )
            if len(tokens) == 5:
                raise self.error("expected a task name after the 5 time fields", end)
            last_offset, last_text = tokens[4]
            parsed = _schedule.parse_cron(text[start : last_offset + len(last_text)])
            if parsed.never:
                raise self.error(
                    f"the time fields {parsed.source!r} match no date at all, so this line "
                    "would never fire: expected a day of month that exists in the month(s)",
                    tokens[2][0],
                )
            command_at = tokens[5][0]
        return self._command(parsed, command_at)

    def _command(self, parsed: CronSchedule, at: int) -> tuple[CronItem, int]:
        text = self.text
        match = _re(_TASK).match(text, at)
        if not match:
            raise self.error(
                f"invalid task name starting {text[at:].split()[0]!r}: expected a letter or '_' "
                "followed by letters, digits, '_', ':', '/' or '-'",
                at,
            )
        task = match.group()
        position = match.end()
        if position < len(text) and not text[position].isspace():
            char = text[position]
            if char in "?{":
                raise self.error(f"expected a space between the task name and {char!r}", position)
            raise self.error(
                f"unexpected {char!r} in task name {task + char!r}: expected letters, digits, "
                "'_', ':', '/' or '-', then a space before '?options' or a '{payload}'",
                position,
            )
        options: dict[str, tuple[str, int]] = {}
        payload: dict[str, Any] | None = None
        position = self._skip_space(position)
        if position < len(text) and text[position] == "?":
            options_end = position + 1
            while options_end < len(text) and not text[options_end].isspace():
                options_end += 1
            if options_end == position + 1:
                raise self.error("expected options after '?', such as ?id=name&fill=1h", position)
            options = self._options(position + 1, options_end)
            position = self._skip_space(options_end)
        if position < len(text):
            if text[position] != "{":
                after = "after the options" if options else "after the task name"
                raise self.error(
                    f"unexpected {text[position:].split()[0]!r} {after}: expected "
                    + ("a '{...}' payload" if options else "'?options' or a '{...}' payload"),
                    position,
                )
            payload = self._payload(position)
        return self._item(task, at, parsed, options, payload)

    def _skip_space(self, position: int) -> int:
        text = self.text
        while position < len(text) and text[position].isspace():
            position += 1
        return position

    def _options(self, begin: int, end: int) -> dict[str, tuple[str, int]]:
        """``key=value&...`` (URL-decoded like Node's querystring) -> {key: (value, column)}."""
        found: dict[str, tuple[str, int]] = {}
        position = begin
        for piece in self.text[begin:end].split("&"):
            here = position
            position += len(piece) + 1
            if not piece:
                continue
            raw_key, equals, raw_value = piece.partition("=")
            key = unquote_plus(raw_key)
            if key not in _OPTION_KEYS:
                raise self.error(
                    f"unknown option {key!r}: expected one of {', '.join(_OPTION_KEYS)}", here
                )
            if key in found:
                raise self.error(f"option {key!r} is given more than once", here)
            value = unquote_plus(raw_value)
            value_at = here + len(raw_key) + len(equals)
            if not value:
                raise self.error(f"option {key!r} needs a value: expected {key}=...", value_at)
            found[key] = (value, value_at)
        return found

    def _payload(self, at: int) -> dict[str, Any]:
        source = self.text[at:].rstrip()
        if not source.endswith("}"):
            raise self.error(
                "expected the payload to end with '}' at the end of the line", len(source) + at
            )
        try:
            value = orjson.loads(source)
        except orjson.JSONDecodeError:
            value = self._json5(source, at)
        if not isinstance(value, dict):  # pragma: no cover - braces always give an object
            raise self.error("expected the payload to be a {...} object", at)
        try:
            orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise self.error(f"payload cannot be stored as JSON: {exc}", at) from None
        return value

    def _json5(self, source: str, at: int) -> Any:
        try:
            import json5
        except ImportError:
            raise self.error(
                "payload is not strict JSON, and reading JSON5 needs the json5 package: "
                "pip install 'kongtask[cron]'",
                at,
            ) from None
        try:
            return json5.loads(source)
        except ValueError as exc:
            message = str(exc)
            match = _re(_JSON5_ERROR).match(message)
            if match and match.group(1) == "1":
                raise self.error(
                    f"invalid JSON5 payload: {match.group(2)}; expected a JSON5 object",
                    at + int(match.group(3)) - 1,
                ) from None
            raise self.error(f"invalid JSON5 payload: {message}", at) from None

    def _item(
        self,
        task: str,
        task_at: int,
        parsed: CronSchedule,
        options: dict[str, tuple[str, int]],
        payload: dict[str, Any] | None,
    ) -> tuple[CronItem, int]:
        values: dict[str, Any] = {}
        identifier_at = task_at
        for key, (value, at) in options.items():
            if key == "id":
                if not _re(_ID).fullmatch(value):
                    raise self.error(
                        f"invalid id {value!r}: expected a letter or '_' followed by letters, "
                        "digits, '_' or '-'",
                        at,
                    )
                values["identifier"] = value
                identifier_at = at - len("id=")
            elif key == "fill":
                try:
                    values["backfill_period"] = parse_time_phrase(value)
                except CronSyntaxError as exc:
                    raise self.error(f"fill: {exc.message}", at + (exc.column or 1) - 1) from None
            elif key == "max":
                if not _re(_UNSIGNED).fullmatch(value) or not 1 <= int(value) <= 32767:
                    raise self.error(
                        f"invalid max {value!r}: expected a whole number of attempts, 1 to 32767",
                        at,
                    )
                values["max_attempts"] = int(value)
            elif key == "queue":
                if not _re(_QUEUE).fullmatch(value) or len(value) > 128:
                    raise self.error(
                        f"invalid queue {value!r}: expected up to 128 letters, digits, "
                        "'-', '_' or ':'",
                        at,
                    )
                values["queue_name"] = value
            elif key == "jobKey":
                if len(value) > 512 or "\0" in value:
                    raise self.error("invalid jobKey: expected 1 to 512 characters without NUL", at)
                values["job_key"] = value
            elif key == "jobKeyMode":
                if value not in _TEXT_JOB_KEY_MODES:
                    raise self.error(
                        f"invalid jobKeyMode {value!r}: expected replace or preserve_run_at", at
                    )
                values["job_key_mode"] = value
            elif key == "priority":
                if not _re(_SIGNED).fullmatch(value) or not -32768 <= int(value) <= 32767:
                    raise self.error(
                        f"invalid priority {value!r}: expected a whole number, -32768 to 32767",
                        at,
                    )
                values["priority"] = int(value)
            else:  # tz
                zone = _zone(value)
                if zone is None:
                    raise self.error(
                        f"unknown time zone {value!r}: expected an IANA name such as "
                        "Europe/Paris or UTC",
                        at,
                    )
                values["tz"] = zone
        if values.get("job_key") and not values.get("job_key_mode"):
            values["job_key_mode"] = "replace"
        values.setdefault("identifier", task)
        try:
            item = CronItem(task=task, schedule=parsed, payload=payload, **values)
        except InvalidJobSpec as exc:  # pragma: no cover - the checks above come first
            raise self.error(str(exc), task_at) from None
        return item, identifier_at


def parse_crontab(text: str) -> list[CronItem]:
    """Parse crontab text (graphile-worker's format plus macros and ``tz``) into items.

    Lines are ``MIN HOUR DOM MON DOW task ?opts {payload}``; blank lines and
    lines starting with ``#`` are skipped (there are no trailing comments,
    since ``#`` may occur in a payload). Identifiers must be unique: a
    duplicate is an error on its second line that names the first.
    """
    if not isinstance(text, str):
        raise TypeError(f"crontab must be text, got {type(text).__name__}")
    items: list[CronItem] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if number == 1 and line.startswith("\ufeff"):
            line = " " + line[1:]  # a BOM; keep the columns where an editor shows them
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        item, identifier_at = _Line(line, number).parse()
        earlier = first_seen.get(item.identifier)
        if earlier is not None:
            raise CronSyntaxError(
                f"duplicate identifier {item.identifier!r}, already used on line {earlier}: "
                "expected a unique identifier per line (add ?id=... to tell them apart)",
                line=number,
                column=identifier_at + 1,
            )
        first_seen[item.identifier] = number
        items.append(item)
    return items


def load_crontab(path: str | Path) -> list[CronItem]:
    """Read and parse a crontab file (UTF-8)."""
    return parse_crontab(Path(path).read_text(encoding="utf-8"))


def as_cron_items(crontab: str | Sequence[CronItem] | None) -> list[CronItem]:
    """Whatever the ``crontab`` option holds, as a list of items: text is parsed,
    items are checked for unique identifiers, None is no cron at all."""
    if crontab is None:
        return []
    if isinstance(crontab, str):
        return parse_crontab(crontab)
    if isinstance(crontab, CronItem):
        crontab = [crontab]
    items = list(crontab)
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, CronItem):
            raise TypeError(
                f"crontab item {index} must be a CronItem (CronItem.create(...)), "
                f"got {type(item).__name__}"
            )
        earlier = first_seen.setdefault(item.identifier, index)
        if earlier != index:
            raise CronSyntaxError(
                f"duplicate identifier {item.identifier!r} in crontab items {earlier} and "
                f"{index}: expected unique identifiers (pass identifier=... to tell them apart)"
            )
    return items


def describe_next(
    items: Sequence[CronItem], count: int = 5, now: datetime | None = None
) -> list[tuple[CronItem, list[datetime]]]:
    """Each item with its next ``count`` fire times after ``now`` (default: the present).

    Times are aware datetimes in the item's zone (UTC when it has none), i.e.
    the instants the scheduler will enqueue, shown on the clock the user wrote.
    """
    moment = _utc(now) if now is not None else datetime.now(UTC)
    out: list[tuple[CronItem, list[datetime]]] = []
    for item in items:
        times: list[datetime] = []
        cursor = moment
        for _ in range(count):
            try:
                cursor = item.next_fire(cursor)
            except ValueError:
                break
            times.append(cursor.astimezone(item.tz) if item.tz is not None else cursor)
        out.append((item, times))
    return out


def cron_check_main(path: str) -> int:
    """``kongtask cron check FILE``: print each item and its next five fire times.

    Returns 0 when the file parses, 2 on a syntax error (printed as
    ``FILE:LINE:COLUMN: message``, the format editors jump to), 1 when the
    file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read crontab: {exc}", file=sys.stderr)
        return 1
    try:
        items = parse_crontab(text)
    except CronSyntaxError as exc:
        print(f"{path}:{exc.line}:{exc.column}: {exc.message}", file=sys.stderr)
        return 2
    if not items:
        print(f"{path}: no cron items")
        return 0
    for item, times in describe_next(items):
        print(item.describe())
        for moment in times:
            utc = moment.astimezone(UTC)
            suffix = "" if item.tz is None else f"  ({utc:%Y-%m-%d %H:%M} UTC)"
            print(f"  {moment.isoformat()}{suffix}")
    return 0
