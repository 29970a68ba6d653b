"""Jobs per second from PostgreSQL's row counters: the arithmetic, and the real counters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from kongtask import JobSpec, WorkerUtils
from kongtask.dashboard.formatting import estimate
from kongtask.dashboard.rates import ThroughputHistory, chart

from .support import until

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_rates_are_counter_differences_over_time() -> None:
    history = ThroughputHistory(keep_seconds=60, min_gap=1)
    history.add(at(0), inserted=100, deleted=10)
    history.add(at(0.5), inserted=999, deleted=999)  # closer than min_gap: ignored
    history.add(at(5), inserted=600, deleted=260)
    history.add(at(15), inserted=600, deleted=1260)
    assert [(r.added, r.finished) for r in history.rates()] == [(100.0, 50.0), (0.0, 100.0)]
    recent = history.recent(10)
    assert recent is not None and recent.finished == 100.0
    whole = history.recent(60)
    assert whole is not None and round(whole.finished, 3) == round(1250 / 15, 3)


def test_a_counter_reset_starts_afresh_and_old_samples_expire() -> None:
    history = ThroughputHistory(keep_seconds=30, min_gap=1)
    history.add(at(0), 100, 100)
    history.add(at(5), 200, 200)
    history.add(at(10), 5, 5)  # statistics reset: no negative rate
    assert history.rates() == []
    history.add(at(20), 105, 25)
    history.add(at(45), 105, 25)  # the sample at 10 s is now older than 30 s
    assert [r.at for r in history.rates()] == [at(45)]


def test_chart_scales_to_a_round_top_and_stays_inside() -> None:
    history = ThroughputHistory(keep_seconds=600)
    for step in range(13):
        history.add(at(step * 5), inserted=step * 5 * 30, deleted=step * 5 * 37)
    drawn = chart(history.rates(), at(60), span_seconds=60, width=600, height=100)
    assert drawn.top == 50 and not drawn.empty
    for points in (drawn.finished_points, drawn.added_points):
        xs, ys = zip(*(map(float, p.split(",")) for p in points.split()), strict=True)
        assert min(xs) >= 0 and max(xs) == 600
        assert min(ys) >= 0 and max(ys) <= 100
    assert chart([], at(0), 60).empty


def test_estimates_show_two_significant_digits() -> None:
    assert estimate(351_234, True) == "≈ 350,000"
    assert estimate(351_234, False) == "351,234"
    assert estimate(33, True) == "≈ 33"
    assert estimate(0, True) == "≈ 0"


async def test_the_sampler_sees_jobs_finish(
    make_dashboard: Any, client_for: Any, conn: asyncpg.Connection, schema: str
) -> None:
    dashboard = make_dashboard(throughput_interval=0.2)
    client = client_for(dashboard)
    assert (await client.get("/")).status_code == 200  # starts the sampler
    # Added and removed on this connection, whose statistics are then flushed at once.
    own = WorkerUtils(conn, schema=schema)
    jobs = await own.add_jobs([JobSpec("t", {})] * 50)
    await own.complete_jobs([j.id for j in jobs])
    await conn.execute("select pg_stat_force_next_flush()")

    async def seen() -> bool:
        rates = dashboard.history.rates()
        return any(r.finished > 0 for r in rates) and any(r.added > 0 for r in rates)

    await until(seen, "the sampler to see the jobs added and finished", 20)
    page = (await client.get("/?fragment=1")).text
    assert '<polyline class="finished" points="' in page
