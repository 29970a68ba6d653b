"""graphile-worker 0.17 (Node) and kongtask pools draining one queue together.

Two Node pools (``gw_observed.js``, the real npm package) and two kongtask
worker processes share 20,000 plain jobs and 2,000 jobs spread over 50
named queues. Every handler, Node or Python, logs to the one observer log.
docs/guarantees.md, "In every mode": no job lost, each job run exactly once
(no fault happens here), and no named queue ever has two jobs running at
once, across both implementations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..interop.support import NodePool, in_ci, node_problem
from .conftest import SCHEMA, Scenario, work
from .harness import MODE_ARGS, WORKER_APP, describe, report, serial_overlaps, wait_for

GW_OBSERVED = Path(__file__).resolve().parent / "gw_observed.js"
PLAIN = 20_000
QUEUES = 50
QUEUED = 2_000
NODE_POOLS = 2
KONGTASK_POOLS = 2


@pytest.fixture
async def node_pools(scenario: Scenario) -> AsyncIterator[list[NodePool]]:
    """Started graphile-worker pools on the scenario's database; killed at the end."""
    problem = node_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(f"the mixed-fleet test must run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    pools: list[NodePool] = []
    try:
        for index in range(NODE_POOLS):
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(GW_OBSERVED),
                f"{scenario.dsn}?application_name={WORKER_APP}",
                SCHEMA,
                str(scenario.observer.path),
                "4",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            pool = NodePool(proc, f"node-{index}")
            pools.append(pool)
            await pool.wait_line("READY")
        yield pools
    finally:
        for pool in pools:
            await pool.kill()


@pytest.mark.parametrize("mode", ["claim", "lease"])
async def test_node_and_kongtask_pools_share_one_queue(
    scenario: Scenario, node_pools: list[NodePool], mode: str
) -> None:
    started = time.monotonic()
    for _ in range(KONGTASK_POOLS):
        await scenario.fleet.start(*MODE_ARGS[mode], "--poll-interval", "200")
    queue_of: dict[int, str] = {}
    for queue in range(QUEUES):
        name = f"q{queue}"
        for job in await scenario.add(work(QUEUED // QUEUES, ms=2, queue_name=name)):
            queue_of[job] = name
    await scenario.add(work(PLAIN))

    async def drained() -> bool:
        for pool in node_pools:
            pool.assert_alive()
        return await scenario.jobs_left() == 0

    await wait_for(drained, "the queue to drain", timeout=120, fleet=scenario.fleet, interval=0.1)
    await asyncio.gather(*(pool.stop() for pool in node_pools))
    await scenario.fleet.stop_all()

    verdict = await scenario.verdict()
    python_pids = {worker.pid for worker in scenario.fleet.workers}
    by_node = sum(1 for run in verdict.runs if run.pid not in python_pids)
    queue_overlaps = serial_overlaps(verdict.runs, queue_of)
    report(
        "mixed-fleet",
        mode,
        started,
        verdict,
        jobs=len(scenario.job_ids),
        runs_by_node=by_node,
        queue_overlaps=len(queue_overlaps),
    )
    assert not verdict.anomalies, verdict.anomalies[:5]
    assert verdict.locked == 0, "locks left behind after the workers stopped"
    assert verdict.lost == [], f"{len(verdict.lost)} jobs lost: {verdict.lost[:10]}"
    assert len(verdict.runs) == len(scenario.job_ids) == len(verdict.successes), "doubles"
    assert verdict.overlaps == [], describe(verdict.overlaps)
    assert queue_overlaps == [], describe(queue_overlaps)
    assert 0 < by_node < len(verdict.runs), "both implementations must have run jobs"
