"""What the crontab model and its parser share: macros, time phrases, zone names."""

from __future__ import annotations

import functools
import re
from datetime import tzinfo

from ..errors import CronSyntaxError

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

_PHRASE_PART = r"([0-9]+)([smhdw])"
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@functools.cache
def compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled on its first use: compiling the crontab's patterns at
    import cost every worker's start-up 0.7 ms, and most pools have no crontab."""
    return re.compile(pattern)


def format_seconds(seconds: float) -> str:
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
        match = compiled(_PHRASE_PART).match(text, position)
        if not match:
            raise CronSyntaxError(
                f"invalid time phrase {text!r}: did not understand {text[position:]!r}; "
                "expected a number followed by s, m, h, d or w (e.g. 1w2d3h4m5s)",
                column=position + 1,
            )
        seconds += int(match.group(1)) * _PERIODS[match.group(2)]
        position = match.end()
    return float(seconds)


def zone_named(name: str) -> tzinfo | None:
    # Imported here: zoneinfo pulls in sysconfig, a few ms of every worker's
    # start-up, and only crontabs that name a time zone need it.
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def unknown_macro(text: str) -> str:
    return f"unknown macro {text!r}: expected one of {', '.join(MACROS)} or five time fields"
