"""A poison job: its handler kills its process (``os._exit(1)`` 20 ms into the run).

1,000 healthy jobs of 5 ms and one poison job (``max_attempts=3``), the worker
restarted after every death (up to 10 restarts) by the test, or by
``kongtask run --processes 1``'s supervisor, all with default settings.
docs/guarantees.md:

* claim mode: every death counts an attempt, so the poison job is failed for
  good after exactly 3 deaths (still in the table, ``attempts = 3``), each
  rerun waits the failure backoff, every healthy job is done, none completes
  more than twice, and nothing overlaps or is lost. This relies on same-host
  recovery: a pool starting on the host frees the jobs of its dead processes
  at once (not after ``dead_worker_timeout``, 30 s).
* lease mode: a death counts no attempt, so the poison job retries without
  end (``attempts`` stays 0 through the test's 10 restarts); repeats of
  healthy jobs stay within one unsettled lease of each death.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from kongtask import JobSpec

from .conftest import Scenario, work
from .harness import (
    CLAIM_WRITE_WINDOW,
    LEASE_TIME,
    MODE_ARGS,
    Fault,
    Worker,
    backoff,
    describe,
    report,
    rerun_too_early,
    reruns_after,
    unexplained_repeats,
    wait_for,
)

HEALTHY = 1000
MAX_ATTEMPTS = 3
RESTARTS = 10
#: The claim-mode drain: two backoffs (e + e² ≈ 10 s) plus a restart per death.
CLAIM_TIMEOUT = 60.0


async def _add_jobs(scenario: Scenario) -> int:
    """The healthy jobs around the poison one; the poison job's id."""
    half = HEALTHY // 2
    poison = JobSpec("work", {"exit_after_ms": 20}, max_attempts=MAX_ATTEMPTS)
    ids = await scenario.add([*work(half, ms=5), poison, *work(HEALTHY - half, ms=5)])
    return ids[half]


async def _failed_for_good(scenario: Scenario, poison: int) -> bool:
    """Only the poison job is left, failed for good and unlocked."""
    row = await scenario.job(poison)
    return (
        row is not None
        and row["attempts"] >= row["max_attempts"]
        and row["locked_at"] is None
        and await scenario.jobs_left() == 1
    )


async def _restart_after_every_death(scenario: Scenario, poison: int, args: Sequence[str]) -> int:
    """Run one worker, restarting it whenever it dies, until the poison job is
    failed for good or the worker has been restarted RESTARTS times. The deaths."""
    deaths = 0
    worker: Worker = await scenario.fleet.start(*args, ready=False)
    while True:

        async def settled(current: Worker = worker) -> bool:
            return not current.alive or await _failed_for_good(scenario, poison)

        await wait_for(settled, "the poison job to fail for good", timeout=CLAIM_TIMEOUT)
        if worker.alive:
            await worker.stop()
            return deaths
        code = await worker.wait_exit(5)
        assert code == 1, f"{worker.name} exited with {code}, not the poison's 1:\n{worker.tail()}"
        worker.expected_exit = True
        deaths += 1
        if deaths > RESTARTS:
            return deaths
        worker = await scenario.fleet.start(*args, ready=False)


@pytest.mark.parametrize(
    ("mode", "supervised"),
    [("claim", False), ("claim", True), ("lease", False)],
    ids=["claim-restarts", "claim-supervisor", "lease-restarts"],
)
async def test_poison_job(scenario: Scenario, mode: str, supervised: bool) -> None:
    started = time.monotonic()
    poison = await _add_jobs(scenario)
    args = MODE_ARGS[mode]
    if supervised:
        supervisor = await scenario.fleet.start(*args, "--processes", "1", ready=False)

        async def failed() -> bool:
            return await _failed_for_good(scenario, poison)

        await wait_for(
            failed, "the poison job to fail for good", timeout=CLAIM_TIMEOUT, fleet=scenario.fleet
        )
        assert await supervisor.stop() == 0, supervisor.tail()
    else:
        await _restart_after_every_death(scenario, poison, args)

    verdict = await scenario.verdict()
    poison_runs = [run for run in verdict.runs if run.job == poison]
    healthy_repeats = [(a, b) for a, b in verdict.repeats if a.job != poison]
    crashes = [run for run in poison_runs if run.outcome == "crash"]
    faults = [Fault("poison death", run.finish or 0, run.finish or 0, run.pid) for run in crashes]
    window = CLAIM_WRITE_WINDOW if mode == "claim" else LEASE_TIME + CLAIM_WRITE_WINDOW
    row = await scenario.job(poison)
    report(
        f"poison{'-supervised' if supervised else ''}",
        mode,
        started,
        verdict,
        deaths=len(crashes),
        poison_attempts_seen=[run.attempts for run in poison_runs],
        poison_row_attempts=row["attempts"] if row else None,
        healthy_done=len(verdict.successes),
    )
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert row is not None, "the poison job must stay in the table"
    unexplained = unexplained_repeats(healthy_repeats, faults, window)
    assert unexplained == [], f"repeats not within {window}s of a death: {describe(unexplained)}"
    if mode == "lease":
        assert len(crashes) == RESTARTS + 1
        assert [run.attempts for run in poison_runs] == [1] * len(poison_runs)
        assert row["attempts"] == 0 and row["locked_at"] is None
        return
    assert len(crashes) == MAX_ATTEMPTS, [run.outcome for run in poison_runs]
    assert [run.attempts for run in poison_runs] == [1, 2, 3]
    assert (row["attempts"], row["max_attempts"], row["locked_at"]) == (3, 3, None)
    assert len(verdict.successes) == HEALTHY and poison not in verdict.successes
    assert verdict.most_successes <= 2
    reruns = reruns_after(poison_runs, ("crash", "death"))
    early = [(dead, again) for dead, again in reruns if rerun_too_early(dead, again)]
    assert early == [], f"reruns before the failure backoff: {describe(early)}"
    # Same-host recovery: the restarted pool frees the job at once, so the
    # rerun waits the backoff plus a restart, not dead_worker_timeout (30 s).
    late = [
        (dead, again)
        for dead, again in reruns
        if again.start - (dead.finish or 0) > (backoff(dead.attempts) + 10) * 1e9
    ]
    assert late == [], f"reruns long after the backoff: {describe(late)}"
