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
decode_leased[1000]
    ``decode_leased`` on one leased batch of 1,000 Records (the worker's fetch).
ids_literal[1000]
    ``ids_literal`` of 1,000 job ids: what a settling lease sends.
dispatch[1000]
    1,000 leased rows decoded and run as no-op jobs by a dispatcher with 24
    slots until their lease is finished: decode, the slot loop, helpers,
    outcome routing and lease bookkeeping, everything per job but the database.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from .workloads import NOW, YEAR_EXPRESSIONS, cron_expressions, leased_rows, rows, spec_fields

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


def test_decode_leased(benchmark: Any, impl: Any) -> None:
    batch = leased_rows()
    benchmark.group = "decode_leased[1000]"
    jobs = benchmark(impl.decode.decode_leased, batch, None, {1: "send_email"}, "w", 0)
    assert len(jobs) == 1000 and jobs[0].task_identifier == "send_email"


def test_ids_literal(benchmark: Any, impl: Any) -> None:
    ids = list(range(10**9, 10**9 + 1000))
    benchmark.group = "ids_literal[1000]"
    assert benchmark(impl.dispatch.ids_literal, ids).startswith("{1000000000,")


class _Sink:
    """The completer and helper context a dispatcher needs; nothing reaches them here."""

    worker_id = "w"

    def complete(self, job_id: int) -> None:
        raise AssertionError("leased jobs settle through their lease")

    fail = complete


def test_dispatch(benchmark: Any, impl: Any) -> None:
    loop = asyncio.new_event_loop()
    batch = leased_rows()
    sink = _Sink()

    async def noop(payload: Any, helpers: Any) -> None:
        return None

    async def setup() -> tuple[Any, list[Any]]:
        dispatcher = impl.dispatch.Dispatcher(
            tasks={"send_email": impl.dispatch.TaskEntry(noop, True, None)},
            listeners={},
            emit=None,
            completer=sink,
            helper_context=sink,
            run_sync=None,
            with_timeout=None,
            on_failure=None,
            batch_outcome=None,
            on_replacement=None,
            request_fetch=lambda: None,
            worker_id="w",
            low_water=24,
        )
        return dispatcher, [loop.create_task(dispatcher.slot()) for _ in range(24)]

    dispatcher, slots = loop.run_until_complete(setup())

    def one_batch() -> int:
        settled = loop.create_future()
        lease = impl.dispatch.Lease([], settled.set_result)
        jobs = impl.decode.decode_leased(batch, lease, {1: "send_email"}, "w", 0)
        lease.jobs = jobs
        lease.unfinished = len(jobs)
        dispatcher.deliver(jobs)
        return len(loop.run_until_complete(settled).done)

    benchmark.group = "dispatch[1000]"
    try:
        assert benchmark(one_batch) == 1000
    finally:
        dispatcher.stopping = True
        dispatcher.release_waiters()
        loop.run_until_complete(asyncio.gather(*slots))
        loop.close()
