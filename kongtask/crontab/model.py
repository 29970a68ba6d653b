"""A cron item: what to enqueue (task, payload, job options) and when.

:meth:`CronItem.is_due`, :meth:`CronItem.next_fire` and
:meth:`CronItem.due_times` are the only questions the scheduler asks, so the
tick, the backfill and ``kongtask cron check`` cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

from .._core import payload as _payload
from .._core import schedule as _schedule
from ..errors import CronSyntaxError, InvalidJobSpec
from .fields import MACROS, format_seconds, parse_time_phrase, unknown_macro, zone_named
from .timing import ONE_MINUTE, as_utc, due_instant, floor_minute, wall_minute

CronSchedule = _schedule.CronSchedule


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
                    raise CronSyntaxError(unknown_macro(stripped), column=1)
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
            zone: tzinfo | None = zone_named(tz)
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
        at = as_utc(at)
        if self.tz is None:
            return self.schedule.matches(at)
        minute = floor_minute(at)
        return self.next_fire(minute - ONE_MINUTE) == minute

    def next_fire(self, after: datetime) -> datetime:
        """The first UTC minute strictly after ``after``'s minute at which this item is due.

        Returns an aware UTC datetime. Raises ``ValueError`` past year 9999.
        """
        after = as_utc(after)
        zone = self.tz
        if zone is None:
            return self.schedule.next_fire(after)
        after = floor_minute(after)
        wall = wall_minute(after, zone)
        while True:
            wall = self.schedule.next_fire(wall)
            due = due_instant(wall, zone)
            if due > after:
                return due

    def due_times(self, start: datetime, end: datetime) -> list[datetime]:
        """Every UTC minute ``m`` with ``start <= m < end`` at which this item is due."""
        start = as_utc(start)
        end = as_utc(end)
        if self.tz is None:
            return self.schedule.fire_times(start, end)
        out: list[datetime] = []
        first = floor_minute(start)
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
            "fill": format_seconds(self.backfill_period) if self.backfill_period else None,
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
