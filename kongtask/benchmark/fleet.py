"""Fleet scenarios: the same fill drained two ways in one step, so their ratio is same-run.

``pgbouncer``
    N jobs drained by one ``kongtask run`` process connected directly, then
    (fresh fill) by one connected through a private PgBouncer in transaction
    pooling (``--no-prepared-statements``, a direct ``--listen-dsn``), the
    order alternating by round. It shows what a fleet pays for PgBouncer:
    wall time, PostgreSQL CPU per job, and PgBouncer's own CPU per job.
    Without a ``pgbouncer`` binary the step is skipped with one line.

``fleet``
    N jobs drained by one ``kongtask run`` process, then (fresh fill) by four
    started at once, each with the same ``-j`` (more hosts, not a bigger
    one). It shows how throughput scales on this machine and what limits a
    fleet: PostgreSQL CPU per job, which stays whatever the worker count.

``leases``
    N jobs drained by one ``kongtask run`` process in the default mode (each
    job claimed with a row update before it runs), then (fresh fill) by one
    with ``--lease-time 250`` (a fetched batch stays locked by its fetch
    transaction; weaker under faults, see docs/guarantees.md), the order
    alternating by round. It shows what the opt-in mode buys in wall time and
    in CPU per job, worker's and server's.

Both time whole processes from spawn to ``count(*) = 0`` (polled by the
harness, as drain-from-spawn does), read the workers' CPU from ``/proc``
before SIGTERM, sample the server's CPU at the edges, and check exactly-once
from the no-op task's per-process count and sum of payload numbers. Only
kongtask engines run them (graphile-worker's side has no PgBouncer option).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

from kongtask.db import mask_dsn

from . import bouncer
from .common import TASK, per_job_us, rnd
from .cpu import process_cpu_s
from .database import Admin
from .engines import ChildError, Children, Engine, Sizes, stderr_tail
from .spawn import STOP_TIMEOUT_S

PGBOUNCER = "pgbouncer"
FLEET = "fleet"
LEASES = "leases"
SCENARIOS = (PGBOUNCER, FLEET, LEASES)
#: Worker processes of the ``fleet`` scenario's many-process side.
FLEET_PROCESSES = 4
#: PgBouncer's server connections: one process at ``-j 24`` uses up to 20 directly.
BOUNCER_POOL = 20
#: ``--lease-time`` (ms) of the ``leases`` scenario's leasing side: kongtask's
#: default lease for tasks that opt in (options.DEFAULT_LEASE_TIME).
LEASE_TIME_MS = 250
#: What each scenario's baseline side is called in result keys (``direct_...``).
BASELINE = {PGBOUNCER: "direct_", FLEET: "one_", LEASES: "claim_"}

#: Table rows (scenario, key, label, unit, higher is better) for report.py.
METRIC_ROWS: tuple[tuple[str, str, str, str, bool], ...] = (
    (PGBOUNCER, "direct_jobs_per_sec", "drain from spawn, direct", "jobs/s", True),
    (PGBOUNCER, "jobs_per_sec", "drain from spawn, via PgBouncer", "jobs/s", True),
    (PGBOUNCER, "direct_pg_cpu_us_per_job", "direct: PostgreSQL CPU", "µs/job", False),
    (PGBOUNCER, "pg_cpu_us_per_job", "via PgBouncer: PostgreSQL CPU", "µs/job", False),
    (PGBOUNCER, "bouncer_cpu_us_per_job", "via PgBouncer: PgBouncer CPU", "µs/job", False),
    (FLEET, "one_jobs_per_sec", "drain from spawn, 1 process", "jobs/s", True),
    (FLEET, "jobs_per_sec", f"drain from spawn, {FLEET_PROCESSES} processes", "jobs/s", True),
    (FLEET, "one_pg_cpu_us_per_job", "1 process: PostgreSQL CPU", "µs/job", False),
    (FLEET, "pg_cpu_us_per_job", f"{FLEET_PROCESSES} processes: PostgreSQL CPU", "µs/job", False),
    (FLEET, "cpu_us_per_job", f"{FLEET_PROCESSES} processes: workers' CPU", "µs/job", False),
    (LEASES, "claim_jobs_per_sec", "drain from spawn, claims (default)", "jobs/s", True),
    (LEASES, "jobs_per_sec", "drain from spawn, leases (opt-in)", "jobs/s", True),
    (LEASES, "claim_cpu_us_per_job", "claims: worker CPU", "µs/job", False),
    (LEASES, "cpu_us_per_job", "leases: worker CPU", "µs/job", False),
    (LEASES, "claim_pg_cpu_us_per_job", "claims: PostgreSQL CPU", "µs/job", False),
    (LEASES, "pg_cpu_us_per_job", "leases: PostgreSQL CPU", "µs/job", False),
)


def jobs_for(scenario: str, sizes: Sizes) -> int:
    """The fill of each side: processes' size for ``fleet``, drain's for the others."""
    return sizes.processes_jobs if scenario == FLEET else sizes.drain_jobs


async def run(
    scenario: str,
    round_no: int,
    children: Children,
    engine: Engine,
    dsn: str,
    sizes: Sizes,
    admin: Admin,
) -> dict[str, Any]:
    """One step of a fleet scenario: both sides, in an order alternating by round."""
    jobs = jobs_for(scenario, sizes)
    if scenario == PGBOUNCER:
        if bouncer.binary() is None:
            return {"scenario": scenario, "skipped": "pgbouncer is not installed"}
        return await _pgbouncer(round_no, children, engine, dsn, sizes, admin, jobs)
    if scenario == LEASES:
        return await _leases(round_no, children, engine, dsn, sizes, admin, jobs)
    argv = engine.worker_args(dsn, sizes.concurrency)
    counts = {"many": FLEET_PROCESSES, "one": 1}
    sides = await _alternating(
        round_no,
        ("one", "many"),
        lambda side: drain(children, engine, [argv] * counts[side], sizes, admin, jobs),
    )
    many, one = sides["many"], sides["one"]
    return _step(
        scenario,
        many,
        one,
        processes=FLEET_PROCESSES,
        speedup=rnd(many["jobs_per_sec"] / one["jobs_per_sec"]),
        first=next(iter(sides)),
    )


async def _alternating(
    round_no: int,
    names: tuple[str, str],
    drain_side: Callable[[str], Awaitable[dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Drain both sides of a step, the first named first in odd rounds, so that
    neither always meets the server the other has just warmed; the result keeps
    the order they ran in (a step reports which went ``first``)."""
    first, second = names if round_no % 2 == 1 else names[::-1]
    return {first: await drain_side(first), second: await drain_side(second)}


def _step(
    scenario: str, side: dict[str, Any], baseline: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A step's result: the side under test's keys, the baseline's with its prefix."""
    prefix = BASELINE[scenario]
    return {
        "scenario": scenario,
        **side,
        **{prefix + key: value for key, value in baseline.items()},
        **extra,
    }


async def _pgbouncer(
    round_no: int,
    children: Children,
    engine: Engine,
    dsn: str,
    sizes: Sizes,
    admin: Admin,
    jobs: int,
) -> dict[str, Any]:
    async with bouncer.pgbouncer(admin.dsn, pool_size=BOUNCER_POOL) as running:
        argvs = {
            "direct": engine.worker_args(dsn, sizes.concurrency),
            "bouncer": [
                *engine.worker_args(running.dsn, sizes.concurrency),
                "--no-prepared-statements",
                "--listen-dsn",
                dsn,
            ],
        }
        sides = await _alternating(
            round_no,
            ("direct", "bouncer"),
            lambda side: drain(
                children,
                engine,
                [argvs[side]],
                sizes,
                admin,
                jobs,
                watch=running.pid() if side == "bouncer" else None,
            ),
        )
    via, direct = sides["bouncer"], sides["direct"]
    return _step(
        PGBOUNCER,
        via,
        direct,
        ratio_to_direct=rnd(via["jobs_per_sec"] / direct["jobs_per_sec"]),
        pool_size=BOUNCER_POOL,
        first=next(iter(sides)),
    )


async def _leases(
    round_no: int,
    children: Children,
    engine: Engine,
    dsn: str,
    sizes: Sizes,
    admin: Admin,
    jobs: int,
) -> dict[str, Any]:
    claiming = engine.worker_args(dsn, sizes.concurrency)
    argvs = {"claim": claiming, "lease": [*claiming, "--lease-time", str(LEASE_TIME_MS)]}
    sides = await _alternating(
        round_no,
        ("claim", "lease"),
        lambda side: drain(children, engine, [argvs[side]], sizes, admin, jobs),
    )
    lease, claim = sides["lease"], sides["claim"]
    return _step(
        LEASES,
        lease,
        claim,
        ratio_to_claim=rnd(lease["jobs_per_sec"] / claim["jobs_per_sec"]),
        lease_time_ms=LEASE_TIME_MS,
        first=next(iter(sides)),
    )


async def drain(
    children: Children,
    engine: Engine,
    argvs: Sequence[list[str]],
    sizes: Sizes,
    admin: Admin,
    jobs: int,
    *,
    watch: int | None = None,
) -> dict[str, Any]:
    """Fresh fill of ``jobs``; spawn every command at once; poll until the table is
    empty; CPU of the workers, the server and ``watch`` (PgBouncer); SIGTERM; check."""
    schema = engine.schema
    await admin.fill(schema, TASK, jobs)
    await admin.checkpoint()
    poll_s = sizes.empty_poll_ms / 1000
    errs: list[IO[bytes]] = [tempfile.TemporaryFile() for _ in argvs]  # noqa: SIM115
    procs: list[asyncio.subprocess.Process] = []
    try:
        watch0 = process_cpu_s(watch) if watch is not None else None
        pg0 = children.server_cpu.sample()
        t0 = time.perf_counter()
        for argv, err in zip(argvs, errs, strict=True):
            procs.append(await children.spawn(engine, argv, err, asyncio.subprocess.DEVNULL))
        polls = 0
        while True:
            polls += 1
            await asyncio.sleep(max(0.0, t0 + polls * poll_s - time.perf_counter()))
            dead = [i for i, proc in enumerate(procs) if proc.returncode is not None]
            if dead:
                raise ChildError(
                    f"{engine.label}: worker {dead[0]} exited (code "
                    f"{procs[dead[0]].returncode}) before the queue emptied"
                    + stderr_tail(errs[dead[0]])
                )
            if await admin.count_jobs(schema) == 0:
                break
            if time.perf_counter() - t0 > sizes.timeout_s:
                raise ChildError(f"{engine.label}: timed out before the queue emptied")
        seconds = time.perf_counter() - t0
        worker_cpu = [process_cpu_s(proc.pid) for proc in procs]
        pg1 = children.server_cpu.sample()
        watch1 = process_cpu_s(watch) if watch is not None else None
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outs = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate() for proc in procs)), STOP_TIMEOUT_S
        )
        exits = [
            _exit_line(children, engine, proc, out, err)
            for proc, (out, _), err in zip(procs, outs, errs, strict=True)
        ]
    except asyncio.TimeoutError:
        raise ChildError(
            f"{engine.label}: workers did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM"
            + "".join(stderr_tail(err) for err in errs)
        ) from None
    finally:
        await children.reap(procs, errs)
    cpu = None if None in worker_cpu else sum(c for c in worker_cpu if c is not None)
    handled = sum(int(e.get("handled") or 0) for e in exits)
    total = sum(int(e.get("sum") or 0) for e in exits)
    bouncer_cpu = None if watch0 is None or watch1 is None else watch1 - watch0
    result: dict[str, Any] = {
        "jobs": jobs,
        "seconds": rnd(seconds),
        "jobs_per_sec": rnd(jobs / seconds, 1),
        "cpu_s": rnd(cpu, 4),
        "cpu_us_per_job": per_job_us(cpu, jobs),
        **children.server_cpu_per_job(pg0, pg1, jobs),
        "handled": handled,
        "per_process": [int(e.get("handled") or 0) for e in exits],
        "never_started": sum(1 for e in exits if e.get("never_started")),
        "checksum_ok": handled == jobs and total == jobs * (jobs + 1) // 2,
        "remaining": await admin.count_jobs(schema),
        "locked": await admin.count_locked(schema),
        "concurrency": sizes.concurrency,
        "command": [mask_dsn(a) if "://" in a else a for a in argvs[0]],
    }
    if watch is not None:
        result["bouncer_cpu_s"] = rnd(bouncer_cpu, 4)
        result["bouncer_cpu_us_per_job"] = per_job_us(bouncer_cpu, jobs)
    return result


def _exit_line(
    children: Children,
    engine: Engine,
    proc: asyncio.subprocess.Process,
    out: bytes,
    err: IO[bytes],
) -> dict[str, Any]:
    """The worker's exit line; a process the SIGTERM found still starting (on a small
    fill the others may empty the queue first) died of it, and handled nothing.

    ``kongtask run`` installs its signal handlers in the same synchronous step that
    starts its first fetch, so a death by SIGTERM's default action means no job
    was taken. Were that ever wrong, the jobs it took would be missing from the
    checksum of the others, and the step would fail its check.
    """
    if proc.returncode == -signal.SIGTERM and not out.strip():
        return {"handled": 0, "sum": 0, "never_started": True}
    return children.check(engine, proc, out, err)


def check(scenario: str, engine: Engine, result: dict[str, Any], sizes: Sizes) -> list[str]:
    """Correctness of both sides of one step (never speed)."""
    if "skipped" in result:
        return []
    jobs = jobs_for(scenario, sizes)
    problems = []
    for prefix in ("", BASELINE[scenario]):
        for key, wanted in (
            ("jobs", jobs),
            ("handled", jobs),
            ("checksum_ok", True),
            ("remaining", 0),
            ("locked", 0),
        ):
            if result.get(prefix + key) != wanted:
                problems.append(
                    f"{engine.name} {scenario}: {prefix}{key} = {result.get(prefix + key)}, "
                    f"expected {wanted}"
                )
    return problems
