"""A database-wide ``idle_in_transaction_session_timeout = 100ms`` (docs/guarantees.md).

Claim mode never leaves a transaction open; a lease sets its own timeout with
``SET LOCAL``, which PgBouncer's transaction pooling keeps too. So in both
modes, with prepared statements and without (the PgBouncer setting), 2,000
jobs on two workers drain with nothing lost, no overlap, no repeat, and the
server never ends a session of this database for idling in a transaction.
"""

from __future__ import annotations

import time

import pytest

from .. import pgcluster
from .conftest import ScenarioFactory, work
from .harness import MODE_ARGS, describe, report

JOBS = 2000
JOB_MS = 10
WORKERS = 2
TIMEOUT_SETTINGS = {"idle_in_transaction_session_timeout": "100ms"}
IDLE_KILL = "idle-in-transaction timeout"


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "no-prepared-statements"])
@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_idle_in_transaction_timeout(
    shared_cluster: pgcluster.Cluster, scenarios: ScenarioFactory, mode: str, prepared: bool
) -> None:
    started = time.monotonic()
    async with scenarios(shared_cluster, TIMEOUT_SETTINGS) as scenario:
        args = (*MODE_ARGS[mode], "--poll-interval", "200")
        if not prepared:
            args += ("--no-prepared-statements",)
        for _ in range(WORKERS):
            await scenario.fleet.start(*args)
        await scenario.add(work(JOBS, ms=JOB_MS))
        await scenario.wait_drained(timeout=90)
        await scenario.fleet.stop_all()
        verdict = await scenario.verdict()
        killed = [line for line in scenario.server_log() if IDLE_KILL in line]
    report(
        f"idle-timeout-{'prepared' if prepared else 'unprepared'}",
        mode,
        started,
        verdict,
        jobs=JOBS,
        sessions_ended_by_timeout=len(killed),
    )
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert len(verdict.successes) == JOBS
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert verdict.repeats == [], describe(verdict.repeats)
    assert killed == [], killed[:3]
