"""Connections of live workers terminated again and again (docs/guarantees.md,
"a connection is lost while the worker lives").

Two worker processes run 400 jobs of 200 ms while, for 6 s, the test
terminates (``pg_terminate_backend``) about half of the pools' backends every
200 ms: fetch, lease, result and LISTEN connections alike. No worker dies.

* claim mode: nothing is lost, no job has two runs alive at once, no success
  runs again, and no attempt is counted (every run sees ``attempts = 1``).
* lease mode: nothing lost, no attempt counted; the contract allows repeats
  and overlaps (a lost lease frees its rows at once, those that succeeded and
  those still running), so they are counted and reported, not refused.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import Scenario, work
from .harness import MODE_ARGS, WORKER_APP, describe, report

JOBS = 400
JOB_MS = 200
WORKERS = 2
TERMINATE_FOR = 6.0
ROUND = 0.2

TERMINATE = (
    "select count(pg_terminate_backend(pid)) from pg_stat_activity "
    "where datname = current_database() and application_name = $1 and random() < 0.5"
)


@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_connections_terminated_under_live_workers(scenario: Scenario, mode: str) -> None:
    started = time.monotonic()
    fleet = scenario.fleet
    for _ in range(WORKERS):
        await fleet.start(*MODE_ARGS[mode], "--poll-interval", "200")
    await scenario.add(work(JOBS, ms=JOB_MS))
    await scenario.observer.wait_count("start", 2, timeout=30, fleet=fleet)
    terminated = 0
    until = time.monotonic() + TERMINATE_FOR
    while time.monotonic() < until:
        terminated += await scenario.conn.fetchval(TERMINATE, WORKER_APP)
        fleet.assert_alive()
        await asyncio.sleep(ROUND)  # the fault is time itself: a termination every round
    await scenario.wait_drained(timeout=90)
    await fleet.stop_all()

    verdict = await scenario.verdict()
    report("lost-connections", mode, started, verdict, jobs=JOBS, terminated=terminated)
    assert terminated > 0
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert len(verdict.successes) == JOBS
    counted = [run for run in verdict.runs if run.attempts != 1]
    assert counted == [], f"attempts counted for a lost connection: {counted[:5]}"
    if mode == "claim":
        assert verdict.repeats == [], describe(verdict.repeats)
        assert verdict.overlaps == [], describe(verdict.overlaps)
