"""The four commands: read (``jobs``) or repair (``retry``, ``remove``, ``unlock``).

Reads run the statements of :mod:`kongtask.queries.inspect`; writes go
through :class:`WorkerUtils`, so through the schema's own admin functions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import asyncpg
import orjson

from ..client import WorkerUtils
from ..db import connect, quote_ident
from ..errors import ConfigError
from ..queries import inspect as q
from .args import COMMAND_NAMES
from .render import JobsReport, Row, jobs_json, jobs_text

EXIT_OK = 0
EXIT_SKIPPED = 5

Command = Callable[[argparse.Namespace, WorkerUtils, asyncpg.Connection, TextIO], Awaitable[int]]


#: Seconds a due job may wait never attempted, with no job of its task
#: running, before ``kongtask jobs`` says no worker is seen taking its task.
UNATTENDED_AFTER = 300.0


def unattended_tasks(
    counts: Sequence[Row], after: float = UNATTENDED_AFTER
) -> list[dict[str, Any]]:
    """Tasks whose due jobs nobody seems to take: the oldest never-attempted due
    job has waited ``after`` seconds or more, and no job of the task is locked.

    kongtask cannot know other workers' task lists, so this is what the jobs
    themselves show. A worker without a handler never fetches the task's jobs
    (their attempts stay 0 and none is ever locked); a worker that has one but
    is behind is running some of them (locked), and a failing task's jobs
    have attempts. In lease mode a leased job is not locked until its lease
    ends, so a lease longer than ``after`` could hide running jobs here.
    """
    by_task: dict[str, dict[str, Any]] = {}
    for r in counts:
        task = by_task.setdefault(
            r["task_identifier"],
            {"task": r["task_identifier"], "untried": 0, "oldest_untried_age": None, "locked": 0},
        )
        task["untried"] += r["untried"]
        task["locked"] += r["locked"]
        waited = r["oldest_untried_age"]
        if waited is not None and (task["oldest_untried_age"] or 0.0) < waited:
            task["oldest_untried_age"] = waited
    return [
        {key: value for key, value in task.items() if key != "locked"}
        for task in by_task.values()
        if task["locked"] == 0 and (task["oldest_untried_age"] or 0.0) >= after
    ]


def _emit(out: TextIO, document: object) -> None:
    out.write(orjson.dumps(document).decode() + "\n")


async def read_jobs(
    args: argparse.Namespace, schema: str, executor: asyncpg.Connection
) -> JobsReport:
    """Everything ``kongtask jobs`` shows, read on one connection."""
    filters = (args.task, args.queue)
    report = JobsReport(schema=schema, failed_only=args.failed)
    if not args.failed:
        report.counts = await executor.fetch(q.queue_counts_sql(schema), *filters)
        report.oldest = await executor.fetchrow(q.oldest_due_sql(schema), *filters)
        report.unattended = unattended_tasks(report.counts)
    report.failed = await executor.fetch(q.failed_sql(schema), *filters, args.limit)
    report.failed_total = await executor.fetchval(q.failed_count_sql(schema), *filters)
    if not args.failed:
        table = f"{quote_ident(schema)}._kongtask_workers"
        heartbeats = await executor.fetchval(q.TABLE_EXISTS, table)
        report.workers = await executor.fetch(
            q.workers_sql(schema, heartbeats=heartbeats), args.limit
        )
    return report


async def _cmd_jobs(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    report = await read_jobs(args, utils.schema, executor)
    if args.json:
        _emit(out, jobs_json(report))
    else:
        width = max(shutil.get_terminal_size((100, 24)).columns, 20)
        out.write(jobs_text(report, limit=args.limit, width=width))
    return EXIT_OK


async def _cmd_retry(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    ids = list(dict.fromkeys(args.ids))
    if args.all_failed:
        rows = await executor.fetch(q.failed_sql(utils.schema), args.task, args.queue, None)
        ids += [r["id"] for r in rows if r["id"] not in ids]
    elif not ids:
        raise ConfigError("retry: give job ids, or --all-failed")
    elif args.task or args.queue:
        raise ConfigError("retry: --task/--queue only narrow --all-failed")
    # The database clock, so a client clock running ahead cannot delay the jobs.
    now = await executor.fetchval(q.DATABASE_NOW)
    done = await utils.reschedule_jobs(ids, run_at=now, attempts=0) if ids else []
    done_ids = sorted(job.id for job in done)
    skipped = sorted(set(ids) - set(done_ids))
    _emit(out, {"rescheduled": done_ids, "skipped": skipped})
    return EXIT_SKIPPED if skipped else EXIT_OK


async def _cmd_remove(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    if (args.key is None) == (args.ids is None):
        raise ConfigError("remove: give a job KEY, or --id ID... (not both)")
    if args.ids is not None:
        ids = list(dict.fromkeys(args.ids))
        done = await utils.complete_jobs(ids)
        done_ids = sorted(job.id for job in done)
        skipped = sorted(set(ids) - set(done_ids))
        _emit(out, {"removed": done_ids, "skipped": skipped})
        return EXIT_SKIPPED if skipped else EXIT_OK
    job = await utils.remove_job(args.key)
    if job is None:
        _emit(out, {"key": args.key, "found": False})
        return EXIT_SKIPPED
    running = job.locked_at is not None
    # A running job cannot be deleted under its worker: it finishes this
    # attempt, and is kept from retrying (its key is freed).
    _emit(
        out,
        {"key": args.key, "found": True, "id": job.id, "removed": not running, "running": running},
    )
    return EXIT_OK


async def _cmd_unlock(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    workers = list(dict.fromkeys(args.worker_ids))
    jobs, queues = await executor.fetchrow(q.locked_by_sql(utils.schema), workers)
    await utils.force_unlock_workers(workers)
    _emit(out, {"workers": workers, "jobs_unlocked": jobs, "queues_unlocked": queues})
    return EXIT_OK


_COMMANDS: dict[str, Command] = {
    "jobs": _cmd_jobs,
    "retry": _cmd_retry,
    "remove": _cmd_remove,
    "unlock": _cmd_unlock,
}
assert tuple(_COMMANDS) == COMMAND_NAMES, "args.py registers what commands.py runs"


async def run_command(args: argparse.Namespace, dsn: str, out: TextIO | None = None) -> int:
    """Run the subcommand named by ``args.command``; returns the exit code.

    One connection, shared by the reads here and the :class:`WorkerUtils`
    calls (which borrow it). Arguments that parse but contradict each other
    raise :class:`kongtask.ConfigError` (the CLI's exit code 2); an
    unreachable database raises ``ConnectionError`` (exit code 3).
    """
    command = _COMMANDS[args.command]
    conn = await connect(dsn)
    try:
        utils = WorkerUtils(conn, schema=args.schema)
        return await command(args, utils, conn, out or sys.stdout)
    finally:
        await conn.close()
