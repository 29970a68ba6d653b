"""The overview's tables: job counts per task and per queue, exact or estimated.

The database returns one row per (task, queue) with a count per state; this
module folds them into a table per task and one per named queue, and scales
counts taken from a sample up to the table's size. An estimated "oldest
waiting" is a lower bound: the oldest due job of a sample is at most as old
as the oldest of the table, so the page shows it as "at least".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..queries.dashboard import STATE_NAMES


@dataclass(slots=True)
class CountRow:
    """Counts per state of one task, one queue, or everything."""

    name: str | None
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATE_NAMES, 0.0))
    oldest_due_age: float | None = None

    @property
    def total(self) -> float:
        return sum(self.counts.values())

    def add(self, counts: Mapping[str, float], oldest_due_age: float | None) -> None:
        for state in STATE_NAMES:
            self.counts[state] += counts[state]
        if oldest_due_age is not None and (
            self.oldest_due_age is None or oldest_due_age > self.oldest_due_age
        ):
            self.oldest_due_age = oldest_due_age


@dataclass(slots=True)
class Overview:
    """What the counts panel shows."""

    by_task: list[CountRow]
    by_queue: list[CountRow]
    no_queue: CountRow
    total: CountRow
    estimated: bool
    sample_percent: float | None = None
    sampled_rows: int = 0


def build(
    rows: Iterable[Mapping[str, Any]],
    *,
    live_rows: int | None = None,
    sample_percent: float | None = None,
) -> Overview:
    """Fold per-(task, queue) rows into per-task and per-queue tables.

    With ``sample_percent`` the rows come from a sample: every count is
    scaled by ``live_rows`` over the rows the sample held.
    """
    rows = list(rows)
    estimated = sample_percent is not None
    sampled = int(sum(sum(row[state] for state in STATE_NAMES) for row in rows))
    scale = 1.0
    if estimated:
        scale = (live_rows or 0) / sampled if sampled else 0.0
    tasks: dict[str, CountRow] = {}
    queues: dict[str, CountRow] = {}
    no_queue = CountRow(None)
    total = CountRow(None)
    for row in rows:
        counts = {state: row[state] * scale for state in STATE_NAMES}
        age = row["oldest_due_age"]
        task = row["task_identifier"]
        tasks.setdefault(task, CountRow(task)).add(counts, age)
        queue = row["queue_name"]
        if queue is None:
            no_queue.add(counts, age)
        else:
            queues.setdefault(queue, CountRow(queue)).add(counts, age)
        total.add(counts, age)
    return Overview(
        by_task=sorted(tasks.values(), key=_natural),
        by_queue=sorted(queues.values(), key=_natural),
        no_queue=no_queue,
        total=total,
        estimated=estimated,
        sample_percent=sample_percent,
        sampled_rows=sampled,
    )


def _natural(row: CountRow) -> list[Any]:
    """``shard_2`` before ``shard_10``: numbers in names compare as numbers."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", row.name or "")
    ]
