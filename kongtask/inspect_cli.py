"""``kongtask jobs | retry | remove | unlock``: look at the queue and repair it.

The commands are thin: reading uses the statements of
:mod:`kongtask.queries.inspect` (counts, oldest due job, failed jobs,
workers), writing goes through :class:`WorkerUtils` and so through the
schema's own admin functions, which leave alone jobs a live worker holds.

``cli`` imports this module, never the reverse: ``register`` takes the
connection-argument helper as a parameter instead of importing it.

Exit codes besides the CLI's usual ones: :data:`EXIT_SKIPPED` (5) when a
write command could not act on every job or worker it was given (not found,
or locked by a live worker), so scripts can tell "done" from "partly done".
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import asyncpg
import orjson

from .client import WorkerUtils
from .db import connect, quote_ident
from .errors import ConfigError
from .queries.inspect import (
    DATABASE_NOW,
    TABLE_EXISTS,
    failed_count_sql,
    failed_sql,
    locked_by_sql,
    oldest_due_sql,
    queue_counts_sql,
    workers_sql,
)

EXIT_OK = 0
EXIT_SKIPPED = 5

#: How long an error line may be in the human table before it is cut (the
#: terminal width usually cuts it sooner).
_ERROR_CHARS = 300


# ------------------------------------------------------------------ parsing
def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"job ids are positive, got {value}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_connection_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``jobs``, ``retry``, ``remove`` and ``unlock`` to the CLI's subcommands.

    ``add_connection_args`` is the CLI's ``-c/--connection`` + ``-s/--schema``
    helper, passed in because ``cli`` imports this module.
    """
    jobs = subparsers.add_parser(
        "jobs",
        help="job counts per task and queue, the oldest due job, failed jobs",
        description="Job counts per task and queue (available / scheduled / locked / "
        "failed), the oldest due job, and permanently failed jobs with their last error.",
    )
    add_connection_args(jobs)
    jobs.add_argument("--task", metavar="NAME", help="only this task identifier")
    jobs.add_argument("--queue", metavar="NAME", help="only this named queue")
    jobs.add_argument("--failed", action="store_true", help="only list permanently failed jobs")
    jobs.add_argument(
        "--limit",
        type=_limit,
        default=20,
        metavar="N",
        help="at most N rows per table (default 20)",
    )
    jobs.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    retry = subparsers.add_parser(
        "retry",
        help="run jobs again now, with their attempts reset",
        description="Reschedule jobs to run now with attempts reset to 0 (failed jobs "
        "become runnable again). Jobs locked by a live worker are skipped.",
    )
    add_connection_args(retry)
    retry.add_argument("ids", nargs="*", type=_job_id, metavar="ID", help="job ids")
    retry.add_argument(
        "--all-failed",
        action="store_true",
        help="every permanently failed job (narrow with --task/--queue)",
    )
    retry.add_argument("--task", metavar="NAME", help="with --all-failed: only this task")
    retry.add_argument("--queue", metavar="NAME", help="with --all-failed: only this queue")

    remove = subparsers.add_parser(
        "remove",
        help="delete a job by key (or by id with --id)",
        description="Delete the pending job with this job key; a running one is instead "
        "kept from retrying. With --id, permanently delete jobs by id "
        "(the schema's complete_jobs); jobs locked by a live worker are skipped.",
    )
    add_connection_args(remove)
    remove.add_argument("key", nargs="?", metavar="KEY", help="job key")
    remove.add_argument(
        "--id", nargs="+", type=_job_id, dest="ids", metavar="ID", help="job ids instead"
    )

    unlock = subparsers.add_parser(
        "unlock",
        help="free the jobs and queues locked by dead workers",
        description="Free every job and named queue locked by these worker ids. Only "
        "for workers known to be dead: a live worker's jobs would run twice.",
    )
    add_connection_args(unlock)
    unlock.add_argument("worker_ids", nargs="+", metavar="WORKER_ID")


# --------------------------------------------------------------- rendering
def _age(seconds: float | None) -> str:
    """A short human duration: ``0.4s``, ``5m12s``, ``3h04m``, ``2d07h``."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 0:
        return "0s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    flexible: Sequence[int] = (),
    right: Sequence[int] = (),
) -> list[str]:
    """Rows of text columns fitted to ``width``.

    Columns size to their content; when the line would be too wide, the
    ``flexible`` columns (names, error text) give up characters, the widest
    first, down to 8 each, and their cells end in ``…``. ``right``-aligned
    columns are numbers.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    gap = 2
    excess = sum(widths) + gap * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i in flexible if widths[i] > 8]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        others = [widths[i] for i in candidates if i != widest]
        floor = max([8, *others]) if others else 8
        take = min(excess, widths[widest] - floor) or 1
        widths[widest] -= take
        excess -= take

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            cell = _cut(cell, widths[i])
            parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return (" " * gap).join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    return text.split("\n", 1)[0].strip()


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


# ------------------------------------------------------------------ commands
async def _cmd_jobs(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    schema = utils.schema
    filters = (args.task, args.queue)
    counts: list[Any] = []
    oldest = None
    if not args.failed:
        counts = await executor.fetch(queue_counts_sql(schema), *filters)
        oldest = await executor.fetchrow(oldest_due_sql(schema), *filters)
    failed = await executor.fetch(failed_sql(schema), *filters, args.limit)
    failed_total = await executor.fetchval(failed_count_sql(schema), *filters)
    workers: list[Any] = []
    if not args.failed:
        heartbeats = await executor.fetchval(
            TABLE_EXISTS, f"{quote_ident(schema)}._kongtask_workers"
        )
        workers = await executor.fetch(workers_sql(schema, heartbeats=heartbeats), args.limit)

    if args.json:
        document: dict[str, Any] = {"schema": schema}
        if not args.failed:
            document["counts"] = [
                {
                    "task": r["task_identifier"],
                    "queue": r["queue_name"],
                    "available": r["available"],
                    "scheduled": r["scheduled"],
                    "locked": r["locked"],
                    "failed": r["failed"],
                    "oldest_due_age": r["oldest_due_age"],
                }
                for r in counts
            ]
            document["oldest_due"] = (
                None
                if oldest is None
                else {
                    "id": oldest["id"],
                    "task": oldest["task_identifier"],
                    "queue": oldest["queue_name"],
                    "run_at": _iso(oldest["run_at"]),
                    "age": oldest["age"],
                    "attempts": oldest["attempts"],
                    "priority": oldest["priority"],
                }
            )
            document["workers"] = [
                {
                    "worker_id": r["worker_id"],
                    "hostname": r["hostname"],
                    "pid": r["pid"],
                    "last_seen_age": r["silent"],
                    "locked_jobs": r["jobs"],
                }
                for r in workers
            ]
        document["failed_total"] = failed_total
        document["failed"] = [
            {
                "id": r["id"],
                "task": r["task_identifier"],
                "queue": r["queue_name"],
                "key": r["key"],
                "attempts": r["attempts"],
                "max_attempts": r["max_attempts"],
                "updated_at": _iso(r["updated_at"]),
                "error": _first_line(r["last_error"]),
                "last_error": r["last_error"],
            }
            for r in failed
        ]
        out.write(orjson.dumps(document).decode() + "\n")
        return EXIT_OK

    width = max(shutil.get_terminal_size((100, 24)).columns, 20)
    lines: list[str] = []

    def say(text: str) -> None:
        """A sentence, wrapped to the terminal (tables are fitted by format_table)."""
        lines.extend(textwrap.wrap(text, width, subsequent_indent="  ") or [""])

    if not args.failed:
        totals = [0, 0, 0, 0]
        body = []
        for r in counts:
            values = (r["available"], r["scheduled"], r["locked"], r["failed"])
            totals = [a + b for a, b in zip(totals, values, strict=True)]
            body.append(
                [
                    r["task_identifier"],
                    r["queue_name"] or "-",
                    *(str(v) for v in values),
                    _age(r["oldest_due_age"]),
                ]
            )
        shown = body[: args.limit]
        if len(body) > 1:
            shown.append(["total", "", *(str(v) for v in totals), ""])
        if body:
            lines += format_table(
                ["TASK", "QUEUE", "AVAILABLE", "SCHEDULED", "LOCKED", "FAILED", "WAITING"],
                shown,
                width=width,
                flexible=(0, 1),
                right=(2, 3, 4, 5, 6),
            )
            if len(body) > args.limit:
                say(
                    f"... {len(body) - args.limit} more task/queue rows "
                    "(raise --limit, or narrow with --task/--queue)"
                )
        else:
            say(f"no jobs in schema {schema!r}")
        if oldest is not None:
            queue = f", queue {oldest['queue_name']}" if oldest["queue_name"] else ""
            say(
                f"oldest due job: {oldest['id']} ({oldest['task_identifier']}{queue}), "
                f"waiting {_age(oldest['age'])}, attempt {oldest['attempts'] + 1}"
            )
        if workers:
            say("workers (heartbeat age; other lock holders without one):")
            lines += format_table(
                ["WORKER", "HOST", "PID", "LAST SEEN", "LOCKED JOBS"],
                [
                    [
                        r["worker_id"],
                        r["hostname"] or "-",
                        str(r["pid"]) if r["pid"] is not None else "-",
                        _age(r["silent"]) + (" ago" if r["silent"] is not None else ""),
                        str(r["jobs"]),
                    ]
                    for r in workers
                ],
                width=width,
                flexible=(0, 1),
                right=(2, 4),
            )
        lines.append("")
    if failed:
        say(f"permanently failed jobs ({len(failed)} of {failed_total}, newest first):")
        lines += format_table(
            ["ID", "TASK", "QUEUE", "ATTEMPTS", "FAILED AGO", "ERROR"],
            [
                [
                    str(r["id"]),
                    r["task_identifier"],
                    r["queue_name"] or "-",
                    f"{r['attempts']}/{r['max_attempts']}",
                    _age(_seconds_since(r["updated_at"])),
                    _cut(_first_line(r["last_error"]), _ERROR_CHARS),
                ]
                for r in failed
            ],
            width=width,
            flexible=(5, 1, 2),
            right=(0,),
        )
    else:
        say("no permanently failed jobs")
    out.write("\n".join(lines).rstrip("\n") + "\n")
    return EXIT_OK


def _seconds_since(when: Any) -> float | None:
    from datetime import datetime, timezone

    if when is None:
        return None
    return (datetime.now(timezone.utc) - when).total_seconds()


async def _cmd_retry(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    ids = list(dict.fromkeys(args.ids))
    if args.all_failed:
        rows = await executor.fetch(failed_sql(utils.schema), args.task, args.queue, None)
        ids += [r["id"] for r in rows if r["id"] not in ids]
    elif not ids:
        raise ConfigError("retry: give job ids, or --all-failed")
    elif args.task or args.queue:
        raise ConfigError("retry: --task/--queue only narrow --all-failed")
    # The database clock, so a client clock running ahead cannot delay the jobs.
    now = await executor.fetchval(DATABASE_NOW)
    done = await utils.reschedule_jobs(ids, run_at=now, attempts=0) if ids else []
    done_ids = sorted(job.id for job in done)
    skipped = sorted(set(ids) - set(done_ids))
    out.write(orjson.dumps({"rescheduled": done_ids, "skipped": skipped}).decode() + "\n")
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
        out.write(orjson.dumps({"removed": done_ids, "skipped": skipped}).decode() + "\n")
        return EXIT_SKIPPED if skipped else EXIT_OK
    job = await utils.remove_job(args.key)
    if job is None:
        out.write(orjson.dumps({"key": args.key, "found": False}).decode() + "\n")
        return EXIT_SKIPPED
    running = job.locked_at is not None
    out.write(
        orjson.dumps(
            {
                "key": args.key,
                "found": True,
                "id": job.id,
                # A running job cannot be deleted under its worker: it finishes
                # this attempt, and is kept from retrying (its key is freed).
                "removed": not running,
                "running": running,
            }
        ).decode()
        + "\n"
    )
    return EXIT_OK


async def _cmd_unlock(
    args: argparse.Namespace, utils: WorkerUtils, executor: asyncpg.Connection, out: TextIO
) -> int:
    workers = list(dict.fromkeys(args.worker_ids))
    jobs, queues = await executor.fetchrow(locked_by_sql(utils.schema), workers)
    await utils.force_unlock_workers(workers)
    out.write(
        orjson.dumps(
            {"workers": workers, "jobs_unlocked": jobs, "queues_unlocked": queues}
        ).decode()
        + "\n"
    )
    return EXIT_OK


_COMMANDS = {
    "jobs": _cmd_jobs,
    "retry": _cmd_retry,
    "remove": _cmd_remove,
    "unlock": _cmd_unlock,
}

#: The subcommands :func:`register` adds (for the CLI's dispatch table).
COMMAND_NAMES = tuple(_COMMANDS)


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


__all__ = [
    "COMMAND_NAMES",
    "EXIT_SKIPPED",
    "format_table",
    "queue_counts_sql",
    "register",
    "run_command",
]
