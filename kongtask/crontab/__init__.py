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

The package has four rooms: :mod:`.model` (:class:`CronItem`), :mod:`.parser`
(the text format), :mod:`.timing` (UTC minutes and the time zone rules above)
and :mod:`.check` (``kongtask cron check``); :mod:`.fields` holds what the
model and the parser share (macros, time phrases, zone names).
"""

from __future__ import annotations

from .check import cron_check_main, describe_next
from .fields import MACROS, parse_time_phrase
from .model import CronItem
from .parser import as_cron_items, load_crontab, parse_crontab

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
