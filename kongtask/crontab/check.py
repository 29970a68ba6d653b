"""``kongtask cron check FILE``: each item and its next fire times, on its own clock."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ..errors import CronSyntaxError
from .model import CronItem
from .parser import parse_crontab
from .timing import UTC, as_utc


def describe_next(
    items: Sequence[CronItem], count: int = 5, now: datetime | None = None
) -> list[tuple[CronItem, list[datetime]]]:
    """Each item with its next ``count`` fire times after ``now`` (default: the present).

    Times are aware datetimes in the item's zone (UTC when it has none), i.e.
    the instants the scheduler will enqueue, shown on the clock the user wrote.
    """
    moment = as_utc(now) if now is not None else datetime.now(UTC)
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
    ``FILE:LINE:COLUMN: message``, the format editors jump to) or when the
    file cannot be read: both are bad input, which every command exits 2 for.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read crontab: {exc}", file=sys.stderr)
        return 2
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
