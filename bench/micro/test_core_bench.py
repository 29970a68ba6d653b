"""Micro benches of the hot paths, each run against both twins (see summary.py).

What each one measures:

decode[small] / decode[mixed]
    ``decode_jobs`` on one fetched batch of 500 asyncpg Records: payloads of
    ~60 bytes, or the 60/30/10 small/medium/large mix of workloads.py.
encode[10k]
    ``encode_specs`` on 10,000 ``JobSpec`` objects: validation plus the JSON text.
cron_next_fire[1000x12]
    1,000 different crontab items, each walked through its next 12 fire times
    (``t = s.next_fire(t)``): what a scheduler does to plan ahead.
cron_fire_times[year]
    ``fire_times`` over one year for 10 schedules from every-5-minutes to leap
    day: a year of backfill, ~130,000 datetimes.
cron_tick[1000x60]
    ``matches`` for 1,000 items on each of 60 consecutive minutes: graphile-worker's
    per-minute scheduler loop.
cron_parse[1000]
    ``parse_cron`` on 1,000 expressions (start-up cost of a big crontab).
backoff[10k]
    ``backoff_seconds`` for 10,000 failures: call overhead bound.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from .workloads import NOW, YEAR_EXPRESSIONS, cron_expressions, rows, spec_fields

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("kind", ["small", "mixed"])
def test_decode(benchmark: Any, impl: Any, kind: str) -> None:
    batch = rows(kind)
    benchmark.group = f"decode[{kind}]"
    jobs = benchmark(impl.decode.decode_jobs, batch)
    assert len(jobs) == 500 and jobs[0].payload_error is None


def test_encode(benchmark: Any, impl: Any) -> None:
    specs = [impl.payload.JobSpec(**fields) for fields in spec_fields()]
    benchmark.group = "encode[10k]"
    text = benchmark(impl.payload.encode_specs, specs)
    assert text.startswith('[{"identifier":"send_email"')


def test_cron_next_fire(benchmark: Any, impl: Any) -> None:
    schedules = [impl.schedule.parse_cron(text) for text in cron_expressions()]

    def walk() -> Any:
        last = None
        for schedule in schedules:
            moment = NOW
            for _ in range(12):
                moment = schedule.next_fire(moment)
            last = moment
        return last

    benchmark.group = "cron_next_fire[1000x12]"
    assert benchmark(walk) is not None


def test_cron_fire_times_year(benchmark: Any, impl: Any) -> None:
    schedules = [impl.schedule.parse_cron(text) for text in YEAR_EXPRESSIONS]
    end = NOW.replace(year=NOW.year + 1)

    def backfill() -> int:
        return sum(len(schedule.fire_times(NOW, end)) for schedule in schedules)

    benchmark.group = "cron_fire_times[year]"
    assert benchmark(backfill) > 100_000


def test_cron_tick(benchmark: Any, impl: Any) -> None:
    schedules = [impl.schedule.parse_cron(text) for text in cron_expressions()]
    minutes = [NOW.replace(second=0) + timedelta(minutes=m) for m in range(60)]

    def tick() -> int:
        fired = 0
        for moment in minutes:
            for schedule in schedules:
                if schedule.matches(moment):
                    fired += 1
        return fired

    benchmark.group = "cron_tick[1000x60]"
    assert benchmark(tick) > 0


def test_cron_parse(benchmark: Any, impl: Any) -> None:
    texts = cron_expressions()
    parse = impl.schedule.parse_cron
    benchmark.group = "cron_parse[1000]"
    assert len(benchmark(lambda: [parse(text) for text in texts])) == 1000


def test_backoff(benchmark: Any, impl: Any) -> None:
    backoff = impl.schedule.backoff_seconds
    attempts = [n % 30 for n in range(10_000)]
    benchmark.group = "backoff[10k]"
    assert benchmark(lambda: sum(backoff(n) for n in attempts)) > 0
