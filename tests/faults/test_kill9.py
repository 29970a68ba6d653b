"""``kill -9`` of a worker mid-drain, five times (docs/guarantees.md, "worker process dies").

Three worker processes (default settings) drain 20,000 jobs of 5 ms; the one
running the most jobs is SIGKILLed and replaced each time another seventh of
the jobs has finished. Both modes: no
job lost, no two runs of a job alive at once, and a success runs again only
if its process died before its result was written: within one write of the
death in claim mode (and the repeat then sees a higher ``attempts``), within
one unsettled lease in lease mode.
"""

from __future__ import annotations

import time

import pytest

from .conftest import Scenario, work
from .harness import (
    CLAIM_WRITE_WINDOW,
    LEASE_TIME,
    MODE_ARGS,
    death_faults,
    describe,
    report,
    unexplained_repeats,
)

JOBS = 20_000
JOB_MS = 5
KILLS = 5
WORKERS = 3


@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_kill9_mid_drain_five_times(scenario: Scenario, mode: str) -> None:
    started = time.monotonic()
    args = (*MODE_ARGS[mode], "--poll-interval", "200")
    fleet = scenario.fleet
    for _ in range(WORKERS):
        await fleet.start(*args)
    ids = await scenario.add(work(JOBS, ms=JOB_MS))
    for kill in range(KILLS):
        await scenario.observer.wait_count(
            "end", JOBS * (kill + 1) // (KILLS + 2), timeout=60, fleet=fleet
        )
        victim = await fleet.busiest(scenario.observer)
        victim.kill()
        await victim.wait_exit(10)
        await fleet.start(*args)
    await scenario.wait_drained(timeout=120)
    await fleet.stop_all()

    verdict = await scenario.verdict()
    kills = fleet.kills()
    window = CLAIM_WRITE_WINDOW if mode == "claim" else LEASE_TIME + CLAIM_WRITE_WINDOW
    unexplained = unexplained_repeats(verdict.repeats, death_faults(kills), window)
    report(
        "kill9",
        mode,
        started,
        verdict,
        jobs=JOBS,
        kills=len(kills),
        repeat_attempts=sorted({again.attempts for _, again in verdict.repeats}),
        # How long before its process died the latest repeated success had returned.
        max_repeat_lead_ms=max(
            ((kills.get(a.pid, 0) - (a.finish or 0)) // 1_000_000 for a, _ in verdict.repeats),
            default=None,
        ),
    )
    assert len(kills) == KILLS
    interrupted = {run.pid for run in verdict.runs if run.outcome == "death"}
    assert interrupted == set(kills), "every kill must hit a worker running jobs"
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert set(verdict.successes) == set(ids)
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert unexplained == [], f"{len(unexplained)} repeats not within {window}s of a kill: " + (
        describe(unexplained)
    )
    if mode == "claim":
        # The killed run counted an attempt, so the handler can tell a repeat.
        not_told = [(a, b) for a, b in verdict.repeats if b.attempts <= a.attempts]
        assert not_told == [], describe(not_told)
