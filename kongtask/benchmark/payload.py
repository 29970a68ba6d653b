"""payload: worker CPU per job for a realistic ~1.9 KB JSON payload, compiled vs pure.

A job's payload in real deployments is rarely ``{"i": 1}``: it is a nested
object, a list of small records and some text that is not ASCII. This
scenario measures what such a payload costs the worker on top of a job with a
tiny one, and compares it with what ``orjson.loads`` of the same text costs,
measured in the same run. If the difference is much more than orjson's time,
the worker spends CPU per job on something other than parsing.

Each measurement is a whole process, as a user runs it: ``kongtask run -j C
--once`` over a fresh queue of N jobs, its CPU (user + system, from the
kernel's accounting of reaped children) minus that of the same command over
an empty queue, divided by N. So interpreter start, imports, connecting and
exiting cancel out, and what is left is the per-job work.

The yardstick is a difference of differences (large minus tiny minus
orjson), a few µs out of about twenty, so one process per shape was at the
mercy of a neighbour on a shared 2-core machine: the three shapes run
:data:`ROUNDS` times, interleaved, ``orjson.loads`` is timed again after each
round, and each figure is the median over rounds of that round's own
difference.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import tempfile
import time
import timeit
from typing import Any

import orjson

from kongtask.db import mask_dsn

from .common import TASK, per_job_us, rnd
from .database import Admin
from .engines import Children, Engine, Sizes, timed_out

SCENARIO = "payload"
#: Payload shapes measured, each on its own fresh queue (``empty`` has no jobs).
SHAPES = ("empty", "tiny", "large")
#: Processes per shape; interleaved (empty, tiny, large, empty, ...) so that a
#: noisy minute touches every shape alike, and the median of each is used.
ROUNDS = 3
#: orjson.loads timing: calls per repeat, and repeats (the best repeat is kept).
LOADS_NUMBER = 20_000
LOADS_REPEAT = 5


def large_payload() -> dict[str, Any]:
    """Issue 20's payload (~1.9 KB here): a nested object, 20 small objects in a list,
    and 200 non-ASCII characters (``i`` is added per job by the fill)."""
    return {
        "account": {
            "id": "acct_8f14e45fceea167a",
            "plan": {"name": "team", "seats": 12, "trial": False},
            "owner": {"name": "Ada Lovelace", "email": "ada@example.com", "verified": True},
        },
        "items": [
            {"sku": f"SKU-{k:04d}", "qty": k % 5 + 1, "price": 9.99 + k, "gift": k % 7 == 0}
            for k in range(20)
        ],
        # 200 characters outside ASCII (Latin-1, Greek, CJK): 2- and 3-byte UTF-8.
        "note": ("ÄöüßéΑθήναΣπάρτη東京大阪→" * 10)[:200],
        "meta": {"source": "checkout", "version": 3, "retry": None},
    }


def large_payload_text() -> str:
    """The JSON text stored for each large job, without its ``i``."""
    return orjson.dumps(large_payload()).decode()


def orjson_loads_us(text: bytes) -> float:
    """µs per ``orjson.loads(text)`` in this process (best of a few repeats).

    Bytes, as the worker's fetch connections hand the json column over (and as
    it arrives from the wire): from a ``str``, orjson would first need UTF-8."""
    best = min(timeit.repeat(lambda: orjson.loads(text), number=LOADS_NUMBER, repeat=LOADS_REPEAT))
    return best * 1e6 / LOADS_NUMBER


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_once(
    children: Children, engine: Engine, dsn: str, concurrency: int, timeout_s: float
) -> tuple[float, float, dict[str, Any]]:
    """One ``kongtask run --once``: (CPU seconds, wall seconds, its exit line)."""
    argv = [*engine.worker_args(dsn, concurrency), "--once"]
    with tempfile.TemporaryFile() as err:
        cpu0 = _children_cpu_s()
        t0 = time.perf_counter()
        proc = await children.spawn(engine, argv, err, asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except asyncio.TimeoutError:
            raise await timed_out(proc, engine, err, "--once did not finish") from None
        finally:
            children.forget(proc)
        wall = time.perf_counter() - t0
        cpu = _children_cpu_s() - cpu0
        exit_line = children.check(engine, proc, out, err)
    return cpu, wall, exit_line


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return None if len(known) < len(values) or not known else statistics.median(known)


async def payload_scenario(
    children: Children, engine: Engine, dsn: str, sizes: Sizes, admin: Admin
) -> dict[str, Any]:
    """Empty, tiny and large queues, :data:`ROUNDS` ``--once`` processes each; the
    median round's CPU per job of each."""
    jobs = sizes.payload_jobs
    text = large_payload_text()
    samples: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    walls: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    problems: list[str] = []
    stored = '{"i":' + str(jobs) + "," + text[1:]
    loads: list[float] = []
    for _ in range(ROUNDS):
        for shape in SHAPES:
            if shape != "empty":
                await admin.fill(engine.schema, TASK, jobs, "{}" if shape == "tiny" else text)
            else:
                await admin.clear(engine.schema)
            await admin.checkpoint()
            cpu_s, wall_s, line = await run_once(
                children, engine, dsn, sizes.concurrency, sizes.timeout_s
            )
            samples[shape].append(cpu_s)
            walls[shape].append(wall_s)
            expected = 0 if shape == "empty" else jobs
            if line.get("handled") != expected:
                problems.append(f"{shape}: handled {line.get('handled')}, expected {expected}")
            remaining = await admin.count_jobs(engine.schema)
            if remaining:
                problems.append(f"{shape}: {remaining} jobs left after --once")
        # orjson's own time in the same minute as this round's processes.
        loads.append(orjson_loads_us(stored.encode()))
    wall = {shape: statistics.median(values) for shape, values in walls.items()}
    # Each round's empty process is subtracted from that round's queues (the
    # same minute's neighbours), and the median round is the figure.
    per_round = {
        shape: [
            per_job_us(c - e, jobs) for c, e in zip(samples[shape], samples["empty"], strict=True)
        ]
        for shape in ("tiny", "large")
    }
    large_us = _median_or_none(per_round["large"])
    tiny_us = _median_or_none(per_round["tiny"])
    tiny_loads_us = orjson_loads_us(b'{"i":%d}' % jobs)
    # Issue 20's yardstick: the large job may cost at most orjson.loads of its
    # payload more than a tiny job does; what is left went somewhere else.
    # Per round (its processes and its orjson timing), then the median round.
    unexplained = _median_or_none(
        [
            None if large is None or tiny is None else large - tiny - parse
            for large, tiny, parse in zip(per_round["large"], per_round["tiny"], loads, strict=True)
        ]
    )
    return {
        "scenario": SCENARIO,
        "jobs": jobs,
        "payload_bytes": len(stored.encode()),
        "cpu_us_per_job": large_us,
        "tiny_cpu_us_per_job": tiny_us,
        "empty_cpu_s": rnd(statistics.median(samples["empty"]), 4),
        "orjson_loads_us": rnd(statistics.median(loads), 2),
        "orjson_loads_us_rounds": [rnd(v, 2) for v in loads],
        "orjson_loads_tiny_us": rnd(tiny_loads_us, 2),
        # What the large payload costs beyond a tiny job plus parsing it.
        "unexplained_us_per_job": None if unexplained is None else rnd(unexplained, 2),
        "rounds": ROUNDS,
        "large_cpu_us_per_job_rounds": per_round["large"],
        "tiny_cpu_us_per_job_rounds": per_round["tiny"],
        "large_seconds": rnd(wall["large"]),
        "tiny_seconds": rnd(wall["tiny"]),
        "concurrency": sizes.concurrency,
        "warnings": problems,
        "command": [mask_dsn(a) if "://" in a else a for a in engine.worker_args(dsn, 0)],
        "measured": "CPU of a whole `kongtask run --once` process (kernel accounting of the "
        "reaped child) minus that of the same command over an empty queue, per job; "
        f"median of {ROUNDS} interleaved processes per shape",
    }
