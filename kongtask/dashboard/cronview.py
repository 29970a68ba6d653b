"""The cron page: each item's last tick (from the database) beside its next one (from the crontab).

The database knows only which cron identifiers pools have registered and the
last minute each was scheduled for (``_private_known_crontabs``); when an item
fires next is in the crontab, which lives with the workers. Given the same
crontab (``--crontab``), the page says for each item when it fires next and
whether it is *behind*: a fire time more than :data:`GRACE` in the past that
no pool recorded, the sign that no worker with this crontab is running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..crontab import CronItem

#: How late a tick may be recorded before the item counts as behind; pools
#: tick on the minute, so anything past a minute or two means none is running.
GRACE = timedelta(minutes=2)
ONE_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class CronRow:
    identifier: str
    item: CronItem | None
    known_since: datetime | None
    last_execution: datetime | None
    next_tick: datetime | None
    #: The first fire time that should have been recorded and was not.
    missed: datetime | None
    #: ``ok``, ``behind``, ``unregistered`` (in the crontab, no pool has run it yet),
    #: ``not in crontab`` (registered, but the crontab given here lacks it) or
    #: ``unknown`` (no crontab given).
    status: str


def build(
    known: Iterable[Mapping[str, Any]], items: Sequence[CronItem] | None, now: datetime
) -> list[CronRow]:
    """One row per identifier found in the database or the crontab, sorted by identifier."""
    by_id = {item.identifier: item for item in items or ()}
    rows: list[CronRow] = []
    seen: set[str] = set()
    for record in known:
        identifier = record["identifier"]
        seen.add(identifier)
        item = by_id.get(identifier)
        since = record["known_since"]
        last = record["last_execution"]
        if item is None:
            status = "unknown" if items is None else "not in crontab"
            rows.append(CronRow(identifier, None, since, last, None, None, status))
            continue
        missed = _first_missed(item, since, last, now)
        rows.append(
            CronRow(
                identifier,
                item,
                since,
                last,
                item.next_fire(now),
                missed,
                "behind" if missed else "ok",
            )
        )
    for identifier, item in by_id.items():
        if identifier not in seen:
            rows.append(
                CronRow(identifier, item, None, None, item.next_fire(now), None, "unregistered")
            )
    return sorted(rows, key=lambda row: row.identifier)


def _first_missed(
    item: CronItem, known_since: datetime, last: datetime | None, now: datetime
) -> datetime | None:
    """The first fire time after the last recorded one (or registration) that is overdue."""
    start = (last + ONE_MINUTE) if last is not None else known_since
    # next_fire is strictly after its argument's minute: step back one to include start.
    first = item.next_fire(start - ONE_MINUTE)
    return first if first < now - GRACE else None
