"""PostgreSQL restarted, then crashed, mid-drain (docs/guarantees.md, "PostgreSQL
restarts or crashes"), on a private cluster of the test's own.

Two workers drain 6,000 jobs of 5 ms; a third of the way through the server
is restarted (``pg_ctl restart -m fast``), two thirds of the way it is
SIGKILLed and started again. The same worker processes must finish the drain
on their own (none exits), with nothing lost. Claim mode: no overlap, no
attempt counted, and a success runs again only if its write was cut by one of
the two outages, once per outage. Lease mode: the outage frees every open
lease's rows, so repeats and overlaps are allowed and reported.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .. import pgcluster
from .conftest import ScenarioFactory, work
from .harness import (
    CLAIM_WRITE_WINDOW,
    LEASE_TIME,
    MODE_ARGS,
    Fault,
    describe,
    report,
    unexplained_repeats,
)

JOBS = 6000
JOB_MS = 5
WORKERS = 2


@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_postgres_restart_and_crash_mid_drain(
    own_cluster: pgcluster.Cluster, scenarios: ScenarioFactory, mode: str
) -> None:
    started = time.monotonic()
    faults: list[Fault] = []
    async with scenarios(own_cluster) as scenario:
        fleet = scenario.fleet
        for _ in range(WORKERS):
            await fleet.start(*MODE_ARGS[mode], "--poll-interval", "200")
        await scenario.add(work(JOBS, ms=JOB_MS))
        for label, outage in (("restart", own_cluster.restart), ("crash", own_cluster.kill)):
            await scenario.observer.wait_count(
                "end", JOBS * (len(faults) + 1) // 3, timeout=60, fleet=fleet
            )
            begin = time.monotonic_ns()
            await asyncio.to_thread(outage)
            if label == "crash":
                await asyncio.to_thread(own_cluster.start)
            faults.append(Fault(label, begin, time.monotonic_ns()))
            await scenario.reconnect()
        await scenario.wait_drained(timeout=120)
        await fleet.stop_all()
        verdict = await scenario.verdict()

    unexplained = unexplained_repeats(verdict.repeats, faults, CLAIM_WRITE_WINDOW)
    report(
        "pg-restart",
        mode,
        started,
        verdict,
        jobs=JOBS,
        outages=len(faults),
        # What a bound of "once per lost lease" would say (the lease rows give none).
        repeats_beyond_one_lease=len(
            unexplained_repeats(verdict.repeats, faults, LEASE_TIME + CLAIM_WRITE_WINDOW)
        ),
    )
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert len(verdict.successes) == JOBS
    counted = [run for run in verdict.runs if run.attempts != 1]
    assert counted == [], f"attempts counted for an outage: {counted[:5]}"
    if mode == "lease":
        return  # repeats and overlaps are the lease rows' to allow; reported above
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert unexplained == [], f"repeats not cut by an outage: {describe(unexplained)}"
