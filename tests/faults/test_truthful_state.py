"""While a job runs (claim mode, the default), every reader kongtask ships shows it as running.

``kongtask jobs``, ``WorkerUtils.get_jobs`` and the metrics' queue gauges must
show the running job locked by the worker that runs it, with ``attempts >= 1``,
never as available with 0 attempts. The admin functions skip a job a live
worker holds (the client documents it): on a running job ``complete_jobs``,
``permanently_fail_jobs`` and ``reschedule_jobs`` return at once, with nothing,
and leave the row as it was.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from prometheus_client import CollectorRegistry

import kongtask
from kongtask import JobSpec, WorkerUtils
from kongtask.metrics import Metrics

from .conftest import SCHEMA, Scenario
from .harness import wait_for

#: An admin call on a held job must answer within this (it must not wait for the job).
PROMPTLY = 5.0


async def _kongtask_jobs(dsn: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kongtask",
        "jobs",
        "--json",
        "-c",
        dsn,
        "-s",
        SCHEMA,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    document: dict[str, Any] = json.loads(out)
    return document


async def test_a_running_job_shows_as_running(scenario: Scenario) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def hold(payload: Any, helpers: kongtask.Helpers) -> None:
        started.set()
        await release.wait()

    [job_id] = await scenario.add([JobSpec("hold", {})])
    runner = await kongtask.run(scenario.dsn, {"hold": hold}, schema=SCHEMA)  # claim mode
    try:
        await asyncio.wait_for(started.wait(), 30)
        async with WorkerUtils(scenario.dsn, schema=SCHEMA) as utils:
            [job] = await utils.get_jobs([job_id])
            assert job.locked_by == runner.worker_id
            assert job.locked_at is not None and job.attempts >= 1

            document = await _kongtask_jobs(scenario.dsn)
            [counts] = [row for row in document["counts"] if row["task"] == "hold"]
            assert (counts["available"], counts["locked"]) == (0, 1), counts
            holders = {row["worker_id"]: row["locked_jobs"] for row in document["workers"]}
            assert holders.get(runner.worker_id) == 1, document["workers"]

            metrics = Metrics(CollectorRegistry())
            await metrics.refresh_queue_stats(scenario.conn, SCHEMA)
            labels = {"schema": SCHEMA, "task_name": "hold", "queue": ""}
            gauge = {
                state: metrics.registry.get_sample_value(
                    "kongtask_queue_jobs", {**labels, "state": state}
                )
                for state in ("available", "locked")
            }
            assert gauge == {"available": 0, "locked": 1}

            before = dict(await scenario.job(job_id) or {})
            later = datetime.now(timezone.utc) + timedelta(hours=1)
            for name, call in (
                ("complete_jobs", utils.complete_jobs([job_id])),
                ("permanently_fail_jobs", utils.permanently_fail_jobs([job_id], "stop")),
                ("reschedule_jobs", utils.reschedule_jobs([job_id], run_at=later, attempts=0)),
            ):
                try:
                    changed = await asyncio.wait_for(call, PROMPTLY)
                except asyncio.TimeoutError:
                    raise AssertionError(f"{name} on a running job blocked") from None
                assert changed == [], f"{name} acted on a job a live worker holds"
            assert dict(await scenario.job(job_id) or {}) == before
        release.set()

        async def completed() -> bool:
            return await scenario.job(job_id) is None

        await wait_for(completed, "the released job to complete", timeout=30)
    finally:
        release.set()
        await runner.stop()
