"""The argument parsers of ``kongtask jobs | retry | remove | unlock``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

ConnectionArgs = Callable[[argparse.ArgumentParser], None]


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


#: The subcommands :func:`register` adds (for the CLI's dispatch table).
COMMAND_NAMES = ("jobs", "retry", "remove", "unlock")


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_connection_args: ConnectionArgs,
) -> None:
    """Add ``jobs``, ``retry``, ``remove`` and ``unlock`` to the CLI's subcommands.

    ``add_connection_args`` is the CLI's ``-c/--connection`` + ``-s/--schema``
    helper, passed in because ``cli`` imports this package.
    """
    _add_jobs(subparsers, add_connection_args)
    _add_retry(subparsers, add_connection_args)
    _add_remove(subparsers, add_connection_args)
    _add_unlock(subparsers, add_connection_args)


def _add_jobs(subparsers: argparse._SubParsersAction, connection: ConnectionArgs) -> None:  # type: ignore[type-arg]
    jobs = subparsers.add_parser(
        "jobs",
        help="job counts per task and queue, the oldest due job, failed jobs",
        description="Job counts per task and queue (available / scheduled / locked / "
        "failed), the oldest due job, and permanently failed jobs with their last error.",
    )
    connection(jobs)
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


def _add_retry(subparsers: argparse._SubParsersAction, connection: ConnectionArgs) -> None:  # type: ignore[type-arg]
    retry = subparsers.add_parser(
        "retry",
        help="run jobs again now, with their attempts reset",
        description="Reschedule jobs to run now with attempts reset to 0 (failed jobs "
        "become runnable again). Jobs locked by a live worker are skipped.",
    )
    connection(retry)
    retry.add_argument("ids", nargs="*", type=_job_id, metavar="ID", help="job ids")
    retry.add_argument(
        "--all-failed",
        action="store_true",
        help="every permanently failed job (narrow with --task/--queue)",
    )
    retry.add_argument("--task", metavar="NAME", help="with --all-failed: only this task")
    retry.add_argument("--queue", metavar="NAME", help="with --all-failed: only this queue")


def _add_remove(subparsers: argparse._SubParsersAction, connection: ConnectionArgs) -> None:  # type: ignore[type-arg]
    remove = subparsers.add_parser(
        "remove",
        help="delete a job by key (or by id with --id)",
        description="Delete the pending job with this job key; a running one is instead "
        "kept from retrying. With --id, permanently delete jobs by id "
        "(the schema's complete_jobs); jobs locked by a live worker are skipped.",
    )
    connection(remove)
    remove.add_argument("key", nargs="?", metavar="KEY", help="job key")
    remove.add_argument(
        "--id", nargs="+", type=_job_id, dest="ids", metavar="ID", help="job ids instead"
    )


def _add_unlock(subparsers: argparse._SubParsersAction, connection: ConnectionArgs) -> None:  # type: ignore[type-arg]
    unlock = subparsers.add_parser(
        "unlock",
        help="free the jobs and queues locked by dead workers",
        description="Free every job and named queue locked by these worker ids. Only "
        "for workers known to be dead: a live worker's jobs would run twice.",
    )
    connection(unlock)
    unlock.add_argument("worker_ids", nargs="+", metavar="WORKER_ID")
