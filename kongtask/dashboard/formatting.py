"""Numbers, times and payloads as the pages show them (Jinja filters).

Times are shown in UTC with the offset written out, next to a relative age:
an operator comparing the page with logs from several hosts wants one clock,
and "12 min ago" answers the question they usually have.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import orjson

#: What a page shows for no value (an en dash, which reads as "none" in a table).
NOTHING = "\u2013"


#: Units of a duration, largest first.
_UNITS = ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s"))


def duration(seconds: float | None) -> str:
    """A rounded human duration in its two largest units: ``4.2 s``, ``12 min 5 s``,
    ``3 h 4 min``, ``2 d 7 h`` (a zero second unit is left out: ``3 h``)."""
    if seconds is None or math.isnan(seconds):
        return NOTHING
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    left = int(seconds)
    parts: list[str] = []
    for size, unit in _UNITS:
        if parts or left >= size:
            amount, left = divmod(left, size)
            parts.append(f"{amount} {unit}" if amount or not parts else "")
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if part)


def relative(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago`` or ``in 5 min`` (``now`` when within a second)."""
    if moment is None:
        return NOTHING
    now = now or datetime.now(timezone.utc)
    delta = (moment - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {duration(delta)}" if delta > 0 else f"{duration(delta)} ago"


def utc(moment: datetime | None) -> str:
    """``2026-12-03 04:12:33 UTC``."""
    if moment is None:
        return NOTHING
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: float | None) -> str:
    """Thousands separated; a dash for nothing."""
    if value is None:
        return NOTHING
    return f"{round(value):,}"


def estimate(value: float, estimated: bool) -> str:
    """An exact count as is; an estimate rounded to two significant digits, with ``≈``.

    Two digits say what a sample of a few tens of thousands of rows can say;
    more would pretend to a precision the page does not have.
    """
    if not estimated:
        return number(value)
    if value == 0:
        return "≈ 0"
    digits = max(math.floor(math.log10(abs(value))) - 1, 0)
    return f"≈ {round(value, -digits):,.0f}"


def span(seconds: float) -> str:
    """A chart's time span in words: ``30 seconds``, ``10 minutes``."""
    if seconds < 120:
        return f"{round(seconds)} seconds"
    return f"{round(seconds / 60)} minutes"


def pretty_json(text: str | None) -> str:
    """JSON text indented for reading, keys in their stored order; as is if it does not parse."""
    if text is None:
        return "null"
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text)  # NaN, huge numbers: what orjson refuses
        except ValueError:
            return text
        return json.dumps(value, indent=2, ensure_ascii=False)
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        return json.dumps(value, indent=2, ensure_ascii=False)


def flag_names(text: str | None) -> list[str]:
    """The flags of a job (stored as a jsonb object of ``name: true``)."""
    if not text:
        return []
    value = orjson.loads(text)
    return list(value) if isinstance(value, dict) else [str(value)]


FILTERS = {
    "duration": duration,
    "relative": relative,
    "utc": utc,
    "number": number,
    "estimate": estimate,
    "pretty_json": pretty_json,
    "span": span,
}
