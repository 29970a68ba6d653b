"""Start-up warnings for work this worker will never do.

A job whose task no running worker has a handler for is accepted and then
waits silently; so do the jobs of a crontab item naming such a task. A
worker cannot know other workers' task lists, so it says only what it knows:
which tasks with waiting jobs *it* has no handler for, and which of *its*
crontab items schedule a task it lacks. One line each, at start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from .queries import Queries

if TYPE_CHECKING:
    from .crontab import CronItem  # loaded only by pools with a crontab

#: The most task identifiers one warning names.
MAX_LISTED = 20


async def warn_unhandled_jobs(
    conn: asyncpg.Connection,
    queries: Queries,
    task_names: Sequence[str],
    log: logging.Logger,
) -> list[str]:
    """Warn once, naming the tasks with waiting jobs this worker has no handler for;
    returns those identifiers (at most :data:`MAX_LISTED` + 1)."""
    rows = await conn.fetch(queries.unhandled_waiting_tasks, list(task_names), MAX_LISTED + 1)
    return report_unhandled_jobs([row[0] for row in rows], queries.schema, log)


def report_unhandled_jobs(names: list[str], schema: str, log: logging.Logger) -> list[str]:
    """The warning of :func:`warn_unhandled_jobs`, for identifiers already read
    (the start-up statement reads them with everything else)."""
    if names:
        listed = ", ".join(names[:MAX_LISTED])
        more = ", and more" if len(names) > MAX_LISTED else ""
        log.warning(
            "jobs are waiting in schema %r for task(s) this worker has no handler for: %s%s "
            "(they run only on a worker that has one)",
            schema,
            listed,
            more,
        )
    return names


def warn_unhandled_cron(
    items: Sequence[CronItem], task_names: Sequence[str], log: logging.Logger
) -> list[CronItem]:
    """Warn once per crontab item whose task this worker has no handler for; returns them.

    The item still schedules its jobs (another worker may run them), so this
    is a warning, not an error.
    """
    known = set(task_names)
    missing = [item for item in items if item.task not in known]
    for item in missing:
        log.warning(
            "crontab item %r schedules task %r, which this worker has no handler for "
            "(its jobs wait for a worker that has one)",
            item.identifier,
            item.task,
        )
    return missing
