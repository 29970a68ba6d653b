"""Jobs added and finished per second, from PostgreSQL's row counters, and the chart.

A finished job leaves the table (done, or removed), so the queue keeps no
history to count; PostgreSQL does: the statistics system counts the rows
inserted into and deleted from every table. The dashboard samples those two
counters every few seconds and keeps the last minutes in memory; the rate
between two samples is the difference over the time between them. Nothing
reads the jobs table for this, however large it is.

The counters reach the statistics system when a backend reports them (at
most a second after a busy one commits, within about ten seconds for an idle
one), so the chart lags by a few seconds and smooths bursts shorter than
that. A counter that goes backwards (statistics reset, failover) starts the
series afresh instead of drawing a negative rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime
    inserted: int
    deleted: int


@dataclass(frozen=True, slots=True)
class Rate:
    """Rows per second over the interval ending at ``at``."""

    at: datetime
    added: float
    finished: float


class ThroughputHistory:
    """The last ``keep_seconds`` of counter samples, at most one per ``min_gap`` seconds."""

    def __init__(self, keep_seconds: float = 600.0, min_gap: float = 1.0) -> None:
        self.keep_seconds = keep_seconds
        self.min_gap = min_gap
        self._samples: deque[Sample] = deque()

    def add(self, at: datetime, inserted: int, deleted: int) -> None:
        """Record the counters as read at ``at`` (the database's clock)."""
        samples = self._samples
        if samples:
            last = samples[-1]
            if (at - last.at).total_seconds() < self.min_gap:
                return
            if inserted < last.inserted or deleted < last.deleted:
                samples.clear()  # the counters were reset
        samples.append(Sample(at, inserted, deleted))
        while (at - samples[0].at).total_seconds() > self.keep_seconds:
            samples.popleft()

    def rates(self) -> list[Rate]:
        """One rate per interval between consecutive samples, oldest first."""
        out: list[Rate] = []
        previous: Sample | None = None
        for sample in self._samples:
            if previous is not None:
                seconds = (sample.at - previous.at).total_seconds()
                out.append(
                    Rate(
                        sample.at,
                        (sample.inserted - previous.inserted) / seconds,
                        (sample.deleted - previous.deleted) / seconds,
                    )
                )
            previous = sample
        return out

    def recent(self, seconds: float) -> Rate | None:
        """The average rate over about the last ``seconds`` (None before two samples)."""
        samples = self._samples
        if len(samples) < 2:
            return None
        last = samples[-1]
        first = samples[0]
        for sample in reversed(samples):
            first = sample
            if (last.at - sample.at).total_seconds() >= seconds:
                break
        span = (last.at - first.at).total_seconds()
        if span <= 0:
            return None
        return Rate(
            last.at, (last.inserted - first.inserted) / span, (last.deleted - first.deleted) / span
        )


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG line chart's geometry, drawn by the template (no script, no library)."""

    width: int
    height: int
    finished_points: str
    added_points: str
    top: float
    span_seconds: float
    empty: bool


def chart(
    rates: list[Rate], now: datetime, span_seconds: float, width: int = 640, height: int = 120
) -> Chart:
    """Polylines of finished/s and added/s over the last ``span_seconds`` to ``now``.

    Each rate is drawn as a step over its own interval, so uneven sample
    gaps (a slow query, a pause) show as what they were. The top of the
    scale is a round number above the highest rate.
    """
    visible = [r for r in rates if (now - r.at).total_seconds() <= span_seconds]
    highest = max((max(r.added, r.finished) for r in visible), default=0.0)
    top = _round_up(highest)

    def x(at: datetime) -> float:
        age = (now - at).total_seconds()
        return round(width * (1 - min(max(age, 0.0), span_seconds) / span_seconds), 1)

    def y(value: float) -> float:
        return round(height - (value / top) * (height - 2) - 1, 1)

    def points(pick: str) -> str:
        out: list[str] = []
        previous_at: datetime | None = None
        for r in visible:
            value = getattr(r, pick)
            start = x(previous_at) if previous_at is not None else x(r.at)
            out.append(f"{start},{y(value)}")
            out.append(f"{x(r.at)},{y(value)}")
            previous_at = r.at
        return " ".join(out)

    return Chart(
        width=width,
        height=height,
        finished_points=points("finished"),
        added_points=points("added"),
        top=top,
        span_seconds=span_seconds,
        empty=not visible,
    )


def _round_up(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (and >= 1)."""
    if value <= 1:
        return 1.0
    scale = 1.0
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10
