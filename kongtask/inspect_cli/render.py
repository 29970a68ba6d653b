"""What ``kongtask jobs`` prints: a table fitted to the terminal, or one JSON object.

Rendering never touches the database: :class:`JobsReport` holds the rows the
command read, so the text and JSON forms show exactly the same facts.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

Row = Mapping[str, Any]

#: How long an error line may be in the human table before it is cut (the
#: terminal width usually cuts it sooner).
ERROR_CHARS = 300


@dataclass(slots=True)
class JobsReport:
    """What one ``kongtask jobs`` read found. With ``failed_only`` only the failed
    jobs were read, and the other lists are empty."""

    schema: str
    failed_only: bool
    failed: list[Row] = field(default_factory=list)
    failed_total: int = 0
    counts: list[Row] = field(default_factory=list)
    oldest: Row | None = None
    workers: list[Row] = field(default_factory=list)
    unattended: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------- cells
def age(seconds: float | None) -> str:
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


def cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def first_line(text: str | None) -> str:
    if not text:
        return ""
    return text.split("\n", 1)[0].strip()


def iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def seconds_since(when: datetime | None) -> float | None:
    if when is None:
        return None
    return (datetime.now(timezone.utc) - when).total_seconds()


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
    _shrink(widths, sum(widths) + gap * (len(widths) - 1) - width, flexible)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            cell = cut(cell, widths[i])
            parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return (" " * gap).join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _shrink(widths: list[int], excess: int, flexible: Sequence[int]) -> None:
    """Take ``excess`` characters from the widest flexible columns, none below 8."""
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


# -------------------------------------------------------------------- JSON
def jobs_json(report: JobsReport) -> dict[str, Any]:
    """The ``--json`` document (its keys are a stable interface for scripts)."""
    document: dict[str, Any] = {"schema": report.schema}
    if not report.failed_only:
        document["counts"] = [_count_json(r) for r in report.counts]
        document["oldest_due"] = None if report.oldest is None else _oldest_json(report.oldest)
        document["workers"] = [_worker_json(r) for r in report.workers]
        document["unattended"] = report.unattended
    document["failed_total"] = report.failed_total
    document["failed"] = [_failed_json(r) for r in report.failed]
    return document


def _count_json(r: Row) -> dict[str, Any]:
    return {
        "task": r["task_identifier"],
        "queue": r["queue_name"],
        "available": r["available"],
        "scheduled": r["scheduled"],
        "locked": r["locked"],
        "failed": r["failed"],
        "oldest_due_age": r["oldest_due_age"],
    }


def _oldest_json(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "task": r["task_identifier"],
        "queue": r["queue_name"],
        "run_at": iso(r["run_at"]),
        "age": r["age"],
        "attempts": r["attempts"],
        "priority": r["priority"],
    }


def _worker_json(r: Row) -> dict[str, Any]:
    return {
        "worker_id": r["worker_id"],
        "hostname": r["hostname"],
        "pid": r["pid"],
        "last_seen_age": r["silent"],
        "locked_jobs": r["jobs"],
    }


def _failed_json(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "task": r["task_identifier"],
        "queue": r["queue_name"],
        "key": r["key"],
        "attempts": r["attempts"],
        "max_attempts": r["max_attempts"],
        "updated_at": iso(r["updated_at"]),
        "error": first_line(r["last_error"]),
        "last_error": r["last_error"],
    }


# -------------------------------------------------------------------- text
class _Page:
    """Lines of output: sentences wrapped to the terminal, tables fitted to it."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.extend(textwrap.wrap(text, self.width, subsequent_indent="  ") or [""])

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], **how: Any) -> None:
        self.lines += format_table(headers, rows, width=self.width, **how)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def jobs_text(report: JobsReport, *, limit: int, width: int) -> str:
    """The human form: counts, the oldest due job, workers, then failed jobs."""
    page = _Page(width)
    if not report.failed_only:
        _counts(page, report, limit)
        _unattended(page, report.unattended)
        _oldest(page, report.oldest)
        _workers(page, report.workers)
        page.lines.append("")
    _failed(page, report)
    return page.text()


def _counts(page: _Page, report: JobsReport, limit: int) -> None:
    if not report.counts:
        page.say(f"no jobs in schema {report.schema!r}")
        return
    totals = [0, 0, 0, 0]
    body = []
    for r in report.counts:
        values = (r["available"], r["scheduled"], r["locked"], r["failed"])
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        body.append(
            [
                r["task_identifier"],
                r["queue_name"] or "-",
                *(str(v) for v in values),
                age(r["oldest_due_age"]),
            ]
        )
    shown = body[:limit]
    if len(body) > 1:
        shown.append(["total", "", *(str(v) for v in totals), ""])
    page.table(
        ["TASK", "QUEUE", "AVAILABLE", "SCHEDULED", "LOCKED", "FAILED", "WAITING"],
        shown,
        flexible=(0, 1),
        right=(2, 3, 4, 5, 6),
    )
    if len(body) > limit:
        page.say(
            f"... {len(body) - limit} more task/queue rows "
            "(raise --limit, or narrow with --task/--queue)"
        )


def _unattended(page: _Page, tasks: list[dict[str, Any]]) -> None:
    for task in tasks:
        page.say(
            f"no worker seen taking task {task['task']}: {task['untried']} due job(s) never "
            f"attempted, the oldest waiting {age(task['oldest_untried_age'])}, none running "
            "(is a worker with a handler for it running?)"
        )


def _oldest(page: _Page, oldest: Row | None) -> None:
    if oldest is None:
        return
    queue = f", queue {oldest['queue_name']}" if oldest["queue_name"] else ""
    page.say(
        f"oldest due job: {oldest['id']} ({oldest['task_identifier']}{queue}), "
        f"waiting {age(oldest['age'])}, attempt {oldest['attempts'] + 1}"
    )


def _workers(page: _Page, workers: list[Row]) -> None:
    if not workers:
        return
    page.say("workers (heartbeat age; other lock holders without one):")
    page.table(
        ["WORKER", "HOST", "PID", "LAST SEEN", "LOCKED JOBS"],
        [
            [
                r["worker_id"],
                r["hostname"] or "-",
                str(r["pid"]) if r["pid"] is not None else "-",
                age(r["silent"]) + (" ago" if r["silent"] is not None else ""),
                str(r["jobs"]),
            ]
            for r in workers
        ],
        flexible=(0, 1),
        right=(2, 4),
    )


def _failed(page: _Page, report: JobsReport) -> None:
    if not report.failed:
        page.say("no permanently failed jobs")
        return
    page.say(
        f"permanently failed jobs ({len(report.failed)} of {report.failed_total}, newest first):"
    )
    page.table(
        ["ID", "TASK", "QUEUE", "ATTEMPTS", "FAILED AGO", "ERROR"],
        [
            [
                str(r["id"]),
                r["task_identifier"],
                r["queue_name"] or "-",
                f"{r['attempts']}/{r['max_attempts']}",
                age(seconds_since(r["updated_at"])),
                cut(first_line(r["last_error"]), ERROR_CHARS),
            ]
            for r in report.failed
        ],
        flexible=(5, 1, 2),
        right=(0,),
    )
