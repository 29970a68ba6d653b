"""drain-from-spawn: a queue of N jobs, timed from starting the worker process to an empty table.

The in-process ``drain`` scenario measures the library with a tuned preset,
timed from ``run()``. This one measures what a user gets: the worker started
as a user starts it (``python -m kongtask run ... -j C`` with kongtask's
defaults, or graphile-worker's ``run()`` with its best documented settings in
``bench/graphile-worker/run_worker.js``), timed from process spawn (so
interpreter start, imports, connecting and the schema check count) until
``count(*)`` of the jobs table reads 0, polled by the harness as an outside
observer would. The worker's CPU is read from ``/proc`` before it is told to
stop, so its shutdown is not in the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from typing import Any

from kongtask.db import mask_dsn

from .common import TASK, per_job_us, rnd
from .cpu import process_cpu_s
from .database import Admin
from .engines import ChildError, Children, Engine, Sizes, stderr_tail

SCENARIO = "drain-from-spawn"
#: How long a worker may take to exit after SIGTERM before it is killed (and the
#: run fails): kongtask's default shutdown timeout is 30 s.
STOP_TIMEOUT_S = 60.0


def key(jobs: int) -> str:
    """Results key of one queue size: ``drain-from-spawn@100000``."""
    return f"{SCENARIO}@{jobs}"


def jobs_of(result_key: str) -> int | None:
    """The queue size in a results key made by :func:`key`, else None."""
    name, _, size = result_key.partition("@")
    return int(size) if name == SCENARIO and size.isdigit() else None


async def _poll_until_empty(
    admin: Admin,
    schema: str,
    proc: asyncio.subprocess.Process,
    t0: float,
    poll_s: float,
    deadline: float,
) -> int:
    """Count the jobs on a fixed beat (t0 + k * poll) until none is left; returns the polls.

    A fixed beat rather than a sleep after each count, so a slow ``count(*)``
    on a big table does not stretch the interval.
    """
    polls = 0
    while True:
        polls += 1
        await asyncio.sleep(max(0.0, t0 + polls * poll_s - time.perf_counter()))
        if proc.returncode is not None:
            raise ChildError(f"worker exited (code {proc.returncode}) before the queue emptied")
        if await admin.count_jobs(schema) == 0:
            return polls
        if time.perf_counter() > deadline:
            raise ChildError("timed out before the queue emptied")


async def drain_from_spawn(
    children: Children, engine: Engine, dsn: str, sizes: Sizes, admin: Admin, jobs: int
) -> dict[str, Any]:
    """One run: fresh fill, spawn, poll to empty, read CPU, SIGTERM, check."""
    schema = engine.schema
    await admin.fill(schema, TASK, jobs)
    await admin.checkpoint()  # after the fill: its WAL is not the worker's to pay
    argv = engine.worker_args(dsn, sizes.concurrency)
    poll_s = sizes.empty_poll_ms / 1000
    # The harness's own backend runs the count(*) polls; its CPU is reported
    # apart, so a reader can see what the observation itself cost the server.
    poller = await admin.backend_pid()
    poller0 = process_cpu_s(poller)
    with tempfile.TemporaryFile() as err:
        pg0 = children.server_cpu.sample()
        t0 = time.perf_counter()
        proc = await children.spawn(engine, argv, err, asyncio.subprocess.DEVNULL)
        try:
            polls = await _poll_until_empty(admin, schema, proc, t0, poll_s, t0 + sizes.timeout_s)
            seconds = time.perf_counter() - t0
            worker_cpu = process_cpu_s(proc.pid)
            pg1 = children.server_cpu.sample()
            poller1 = process_cpu_s(poller) if await admin.backend_pid() == poller else None
            proc.send_signal(signal.SIGTERM)
            t_term = time.perf_counter()
            out, _ = await asyncio.wait_for(proc.communicate(), STOP_TIMEOUT_S)
            stop_ms = (time.perf_counter() - t_term) * 1000
        except (ChildError, asyncio.TimeoutError) as exc:
            what = str(exc) or f"did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM"
            raise ChildError(f"{engine.label}: {what}" + stderr_tail(err)) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            children.forget(proc)
        exit_line = children.check(engine, proc, out, err)
    poll_cpu = None if poller0 is None or poller1 is None else poller1 - poller0
    return {
        "scenario": SCENARIO,
        "jobs": jobs,
        "seconds": rnd(seconds),
        "jobs_per_sec": rnd(jobs / seconds, 1),
        "cpu_s": rnd(worker_cpu, 4),
        "cpu_us_per_job": per_job_us(worker_cpu, jobs),
        **children.server_cpu_per_job(pg0, pg1, jobs),
        "poll_pg_cpu_s": rnd(poll_cpu, 4),
        "polls": polls,
        "handled": exit_line.get("handled"),
        "checksum_ok": exit_line.get("handled") == jobs
        and exit_line.get("sum") == jobs * (jobs + 1) // 2,
        "exit_code": proc.returncode,
        "stop_ms": rnd(stop_ms),
        "remaining": await admin.count_jobs(schema),
        "locked": await admin.count_locked(schema),
        "concurrency": sizes.concurrency,
        "empty_poll_ms": sizes.empty_poll_ms,
        "command": [mask_dsn(a) if "://" in a else a for a in argv],
        "timed_until": f"process spawn to count(*) = 0, polled every {sizes.empty_poll_ms} ms "
        "by the harness; worker CPU read from /proc before SIGTERM",
        "impl": exit_line.get("impl"),
        "version": exit_line.get("version"),
    }
