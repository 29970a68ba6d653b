"""UTC minutes, and where a zone's wall clock is not a simple function of UTC.

The gap and overlap rules described in :mod:`kongtask.crontab` are decided
here, once, for the tick, the backfill and ``kongtask cron check`` alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

UTC = timezone.utc
ONE_MINUTE = timedelta(minutes=1)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (as in the rest of kongtask)."""
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + ONE_MINUTE


def wall_minute(moment: datetime, zone: tzinfo) -> datetime:
    """The zone's wall-clock minute at a UTC instant, naive."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0, second=0, microsecond=0)


def due_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC minute at which a wall-clock fire time ``wall`` (naive) is due in ``zone``.

    Existing times map to their first occurrence; a time inside a gap maps to
    the first UTC minute whose wall clock is past it (the shift).
    """
    early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if late < early:
        early, late = late, early
    if wall_minute(early, zone) == wall:
        return ceil_minute(early)
    if wall_minute(late, zone) == wall:
        return ceil_minute(late)
    # In a gap the two folds straddle the transition; bisect for its minute.
    low = floor_minute(early)
    high = ceil_minute(late)
    while wall_minute(high, zone) <= wall:  # defensive: never loops for real zone data
        high += ONE_MINUTE
    while high - low > ONE_MINUTE:
        middle = low + ONE_MINUTE * ((high - low) // ONE_MINUTE // 2)
        if wall_minute(middle, zone) > wall:
            high = middle
        else:
            low = middle
    return high
