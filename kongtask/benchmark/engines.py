"""Engines: one command line per scenario, one JSON line back, for every library alike.

An engine is a way to start a child process that runs one scenario against
its own schema: kongtask compiled, kongtask pure (``KONGTASK_NO_EXTENSIONS=1``)
or graphile-worker's ``bench.js``. The harness never runs two children at
once, because all schemas share the ``jobs:insert`` NOTIFY channel and the
two CPU cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

import kongtask

from .common import EMPTY_POLL_S, GO, READY, TASK, WINDOW, mb, per_job_us, rnd, rss_bytes
from .cpu import ServerCpu
from .database import Admin
from .hang import hang_report

KONGTASK = "kongtask"
KONGTASK_PURE = "kongtask-pure"
GRAPHILE_WORKER = "graphile-worker"

_STDERR_TAIL = 2000
#: The stderr kept when a child timed out: room for a pool's state dump.
TIMEOUT_TAIL = 12000
#: Scenarios whose children hand the edges of their timed window to the harness.
WINDOWED = ("enqueue", "drain", "memory")
#: The module ``kongtask run --tasks`` loads in the drain-from-spawn scenario.
NOOP_TASKS = "kongtask.benchmark.noop_tasks"
#: Scenarios graphile-worker's side does not run (see Engine.supports).
KONGTASK_ONLY = ("processes", "payload", "pgbouncer", "fleet", "leases")


class ChildError(RuntimeError):
    """A child failed, timed out or printed no result; the message says which."""


@dataclass(slots=True)
class Sizes:
    """What every child is asked to do (one set of sizes per harness run)."""

    enqueue_jobs: int
    drain_jobs: int
    memory_jobs: int
    processes_jobs: int
    latency_samples: int
    scheduled_samples: int
    startup_samples: int
    spawn_samples: int
    processes: int
    concurrency: int
    local_queue_size: int | None
    poll_interval_ms: int
    timeout_s: int
    idle_wait_s: float
    analyze: bool = True
    #: Queue sizes of the drain-from-spawn scenario, one run each.
    spawn_jobs: tuple[int, ...] = (100_000,)
    #: How often the harness polls ``count(*)`` while a spawned worker drains.
    empty_poll_ms: int = 100
    #: Jobs per queue of the payload scenario (one tiny, one large).
    payload_jobs: int = 100_000


@dataclass(slots=True)
class Engine:
    """How to start one library's benchmark child."""

    name: str
    label: str
    schema: str
    prefix: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    expect_impl: str | None = None
    kongtask: bool = True
    #: Commands that only start the runtime (and then also load the libraries)
    #: and print READY: the floor under this engine's spawn -> ready time.
    floors: dict[str, list[str]] = field(default_factory=dict)
    #: How a user starts this library's worker (drain-from-spawn), before its flags.
    worker: list[str] = field(default_factory=list)

    def supports(self, scenario: str) -> bool:
        """bench.js has no multi-process mode and no PgBouncer, fleet or leases scenario,
        and the payload scenario compares kongtask's twins only; everything else both
        engines do."""
        return self.kongtask or scenario not in KONGTASK_ONLY

    def args(self, scenario: str, dsn: str, sizes: Sizes, *, child: str | None = None) -> list[str]:
        """The command line for ``scenario`` (``child`` overrides the child-side name)."""
        jobs = {
            "enqueue": sizes.enqueue_jobs,
            "drain": sizes.drain_jobs,
            "memory": sizes.memory_jobs,
            "work": sizes.processes_jobs,
        }.get(scenario)
        samples = {
            "latency": sizes.latency_samples,
            "scheduled": sizes.scheduled_samples,
            "startup": sizes.startup_samples,
        }.get(scenario)
        argv = [
            *self.prefix,
            "--dsn",
            dsn,
            "--schema",
            self.schema,
            "--scenario",
            child or scenario,
            "--concurrency",
            str(sizes.concurrency),
            "--poll-interval",
            str(sizes.poll_interval_ms),
            "--timeout",
            str(sizes.timeout_s),
        ]
        if jobs is not None:
            argv += ["--jobs", str(jobs)]
        if samples is not None:
            argv += ["--samples", str(samples)]
        if not sizes.analyze:
            argv.append("--skip-analyze")
        if scenario in WINDOWED:
            argv.append("--windows")
        if self.kongtask:
            # bench.js has its idle wait fixed at 1 s; kongtask's local queue is
            # its own default unless asked for (the defaults are what users get).
            argv += ["--idle-wait", str(sizes.idle_wait_s)]
            if sizes.local_queue_size is not None:
                argv += ["--local-queue-size", str(sizes.local_queue_size)]
        return argv

    def worker_args(self, dsn: str, concurrency: int) -> list[str]:
        """The worker command of drain-from-spawn: kongtask's CLI with no tuning flag
        (its defaults are what is measured), or ``run_worker.js`` for graphile-worker."""
        if self.kongtask:
            return [
                *self.worker,
                "-c",
                dsn,
                "--schema",
                self.schema,
                "--tasks",
                NOOP_TASKS,
                "-j",
                str(concurrency),
            ]
        return [
            *self.worker,
            "--dsn",
            dsn,
            "--schema",
            self.schema,
            "--concurrency",
            str(concurrency),
        ]

    def child_env(self, password: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KONGTASK_NO_EXTENSIONS", None)
        # An installed package has its bytecode compiled at install time; a
        # source tree gets it on first import, unless this (sandbox-wide)
        # switch forbids writing it and every spawn recompiles kongtask.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(self.env)
        if password is not None:
            env["PGPASSWORD"] = password
        return env


def kongtask_engine(name: str, schema: str) -> Engine:
    """kongtask compiled (``name == KONGTASK``) or pure (``KONGTASK_PURE``).

    The child imports the very kongtask this harness runs (its folder goes
    first on ``PYTHONPATH``, and is the child's working directory so that
    ``python -m`` finds nothing else first).
    """
    package_parent = Path(kongtask.__file__).resolve().parent.parent
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": os.pathsep.join([str(package_parent), *([path] if path else [])])}
    pure = name == KONGTASK_PURE
    if pure:
        env["KONGTASK_NO_EXTENSIONS"] = "1"
    return Engine(
        name=name,
        label="kongtask (pure)" if pure else "kongtask",
        schema=schema,
        prefix=[sys.executable, "-m", "kongtask.benchmark.worker_process"],
        cwd=package_parent,
        env=env,
        expect_impl="python" if pure else "cython",
        floors={
            "interpreter": [sys.executable, "-c", "print('READY', flush=True)"],
            "libraries": [
                sys.executable,
                "-c",
                "import asyncpg, uvloop, orjson; print('READY', flush=True)",
            ],
        },
        worker=[sys.executable, "-m", "kongtask", "run"],
    )


def graphile_worker_engine(schema: str, node: str, bench_dir: Path) -> Engine:
    return Engine(
        name=GRAPHILE_WORKER,
        label="graphile-worker",
        schema=schema,
        prefix=[node, str(bench_dir / "bench.js")],
        cwd=bench_dir,
        kongtask=False,
        floors={
            "interpreter": [node, "-e", "process.stdout.write('READY\\n')"],
            "libraries": [
                node,
                "-e",
                "require('graphile-worker'); process.stdout.write('READY\\n')",
            ],
        },
        worker=[node, str(bench_dir / "run_worker.js")],
    )


def _last_json(out: bytes) -> dict[str, Any] | None:
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def stderr_tail(fh: IO[bytes] | None, limit: int = _STDERR_TAIL) -> str:
    if fh is None:
        return ""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - limit))
    text = fh.read().decode(errors="replace").strip()
    return f"\n--- child stderr (last {limit} bytes) ---\n{text}" if text else ""


async def timed_out(
    proc: asyncio.subprocess.Process, engine: Engine, err: IO[bytes], what: str
) -> ChildError:
    """The error for a child that ran out of time: what it was doing (benchmark/hang.py,
    read before the kill) and its stderr tail, long enough for a pool's state dump."""
    report = hang_report(proc.pid, kongtask=engine.kongtask)
    proc.kill()
    await proc.wait()
    return ChildError(f"{engine.label}: {what}" + stderr_tail(err, TIMEOUT_TAIL) + report)


class Children:
    """Starts engine children; keeps their pids so an interrupted run kills only them.

    ``server_cpu`` is sampled at the edges of every timed window, so each
    result can say how much PostgreSQL CPU its jobs cost.
    """

    def __init__(
        self, password: str | None, verbose: bool, server_cpu: ServerCpu | None = None
    ) -> None:
        self.password = password
        self.verbose = verbose
        self.server_cpu = server_cpu or ServerCpu(None, "not located")
        self._live: set[asyncio.subprocess.Process] = set()

    async def spawn(
        self, engine: Engine, argv: Sequence[str], stderr: IO[bytes] | None, stdin: int
    ) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=None if self.verbose else stderr,
            cwd=engine.cwd,
            env=engine.child_env(self.password),
        )
        self._live.add(proc)
        return proc

    def forget(self, proc: asyncio.subprocess.Process) -> None:
        """``proc`` has ended: an interrupted run no longer needs to kill it."""
        self._live.discard(proc)

    async def reap(
        self, procs: Sequence[asyncio.subprocess.Process], errs: Sequence[IO[bytes]]
    ) -> None:
        """Kill what still runs of a scenario's children, wait for them and close their
        stderr files: a failed step must leave no worker behind to skew the next one."""
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self.forget(proc)
        for fh in errs:
            fh.close()

    def server_cpu_per_job(
        self, start: float | None, end: float | None, jobs: int, prefix: str = ""
    ) -> dict[str, Any]:
        """``{prefix}pg_cpu_s`` and ``{prefix}pg_cpu_us_per_job`` of one window (None when
        the server's CPU cannot be read: ``postgres.cpu.reason`` in the JSON says why)."""
        used = None if start is None or end is None else end - start
        return {
            f"{prefix}pg_cpu_s": rnd(used, 4),
            f"{prefix}pg_cpu_us_per_job": per_job_us(used, jobs),
        }

    async def _answer_windows(
        self, proc: asyncio.subprocess.Process, edges: dict[str, dict[str, float | None]]
    ) -> bytes:
        """Read the child's stdout; at each ``WINDOW`` line sample the server, answer GO.

        Returns the other lines (the result among them).
        """
        assert proc.stdout is not None and proc.stdin is not None
        kept: list[bytes] = []
        async for line in proc.stdout:
            if not line.startswith(WINDOW.encode()):
                kept.append(line)
                continue
            _, edge, *name = line.decode(errors="replace").split()
            edges.setdefault(name[0] if name else "", {})[edge] = self.server_cpu.sample()
            # A child that died at the edge fails the run by its exit, not by this write.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(f"{GO}\n".encode())
                await proc.stdin.drain()
        proc.stdin.close()
        await proc.wait()
        return b"".join(kept)

    def kill_all(self) -> None:
        """Kill the children this harness started (and nothing else)."""
        for proc in list(self._live):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._live.clear()

    @staticmethod
    def check(
        engine: Engine, proc: asyncio.subprocess.Process, out: bytes, err: IO[bytes] | None
    ) -> dict[str, Any]:
        result = _last_json(out)
        if result is None:
            raise ChildError(
                f"{engine.label}: no JSON result (exit {proc.returncode})" + stderr_tail(err)
            )
        if proc.returncode != 0 or "error" in result:
            raise ChildError(
                f"{engine.label}: {result.get('error') or 'failed'} "
                f"(exit {proc.returncode})" + stderr_tail(err)
            )
        if engine.expect_impl and result.get("impl") not in (None, engine.expect_impl):
            result.setdefault("warnings", []).append(
                f"expected the {engine.expect_impl} implementation, child ran {result.get('impl')}"
            )
        return result

    async def run(self, engine: Engine, argv: Sequence[str], timeout: float) -> dict[str, Any]:
        """Run one child to completion and return its JSON result, with the server's CPU
        over each timed window the child announced."""
        edges: dict[str, dict[str, float | None]] = {}
        with tempfile.TemporaryFile() as err:
            proc = await self.spawn(engine, argv, err, asyncio.subprocess.PIPE)
            try:
                out = await asyncio.wait_for(self._answer_windows(proc, edges), timeout)
            except asyncio.TimeoutError:
                raise await timed_out(
                    proc, engine, err, f"timed out after {timeout:.0f} s"
                ) from None
            finally:
                self.forget(proc)
            result = self.check(engine, proc, out, err)
        for prefix, edge in edges.items():
            jobs = result.get(f"{prefix}jobs", result.get("jobs"))
            if isinstance(jobs, int):
                result.update(
                    self.server_cpu_per_job(edge.get("start"), edge.get("end"), jobs, prefix)
                )
        return result

    async def spawn_to_ready(
        self, engine: Engine, argv: Sequence[str], timeout: float
    ) -> dict[str, Any]:
        """Start an idle pool, time process spawn to its ``READY`` line, then SIGTERM it.

        The RSS is read from ``/proc`` here, so both engines are measured by
        the same code at the same moment (right after ready).
        """
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = await self.spawn(engine, argv, err, asyncio.subprocess.DEVNULL)
            try:
                assert proc.stdout is not None
                while True:
                    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
                    if not line:
                        await proc.wait()
                        raise ChildError(
                            f"{engine.label}: exited before READY "
                            f"(exit {proc.returncode})" + stderr_tail(err)
                        )
                    if line.startswith(READY.encode()):
                        break
                spawn_to_ready = (time.perf_counter() - t0) * 1000
                rss = rss_bytes(proc.pid)
                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except asyncio.TimeoutError:
                raise await timed_out(proc, engine, err, "idle pool timed out") from None
            finally:
                self.forget(proc)
            result = self.check(engine, proc, out, err)
        result["spawn_to_ready_ms"] = rnd(spawn_to_ready)
        result["rss_at_ready_mb"] = mb(rss)
        return result

    async def spawn_floor(self, engine: Engine, argv: Sequence[str], timeout: float) -> float:
        """Milliseconds from spawn to the READY line of a command that does nothing else."""
        t0 = time.perf_counter()
        proc = await self.spawn(engine, argv, None, asyncio.subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            elapsed = (time.perf_counter() - t0) * 1000
            await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ChildError(f"{engine.label}: floor command timed out: {argv[0]}") from None
        finally:
            self.forget(proc)
        if not line.startswith(READY.encode()) or proc.returncode != 0:
            raise ChildError(
                f"{engine.label}: floor command failed (exit {proc.returncode}): {' '.join(argv)}"
            )
        return elapsed

    async def processes(
        self, engine: Engine, dsn: str, sizes: Sizes, admin: Admin
    ) -> dict[str, Any]:
        """Drain N queued jobs with P worker processes started at the same moment.

        Timed from ``GO`` (every child already imported and connected, so each
        starts its pool at once, as the single-pool drain times from ``run()``)
        until all children together have started N jobs and the table is
        empty. Exactly-once is checked across processes with the count, sum
        and sum of squares of the payload numbers.
        """
        n, count = sizes.processes_jobs, sizes.processes
        await admin.clear(engine.schema)
        await admin.insert_jobs(engine.schema, TASK, n, sizes.analyze)
        argv = engine.args("work", dsn, sizes)
        loop = asyncio.get_running_loop()
        # Closed in the finally below (a with-block per child would not nest).
        errs = [tempfile.TemporaryFile() for _ in range(count)]  # noqa: SIM115
        procs: list[asyncio.subprocess.Process] = []
        handled = [0] * count
        all_started = loop.create_future()
        outputs: list[bytes] = [b""] * count

        async def read(i: int, proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
            assert proc.stdout is not None
            chunks: list[bytes] = []
            async for line in proc.stdout:
                if line.startswith(b"H "):
                    handled[i] = int(line[2:])
                    if sum(handled) >= n and not all_started.done():
                        all_started.set_result(None)
                elif line.startswith(READY.encode()):
                    ready.set()
                else:
                    chunks.append(line)
            outputs[i] = b"".join(chunks)
            ready.set()

        try:
            readers = []
            ready_events = []
            for i in range(count):
                proc = await self.spawn(engine, argv, errs[i], asyncio.subprocess.PIPE)
                procs.append(proc)
                ready = asyncio.Event()
                ready_events.append(ready)
                readers.append(loop.create_task(read(i, proc, ready)))
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready_events)), 120)
            for i, reader in enumerate(readers):
                if reader.done():
                    raise ChildError(
                        f"{engine.label}: worker {i} exited before READY" + stderr_tail(errs[i])
                    )
            deadline = loop.time() + sizes.timeout_s
            pg0 = self.server_cpu.sample()
            t0 = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{GO}\n".encode())
            await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
            # Until every job has started, or a worker dies (then there is no point waiting).
            await asyncio.wait(
                [all_started, *readers],
                timeout=max(deadline - loop.time(), 0.001),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not all_started.done():
                dead = [i for i, reader in enumerate(readers) if reader.done()]
                what = f"worker {dead[0]} exited" if dead else "timed out"
                raise ChildError(
                    f"{engine.label}: processes scenario: {what} after "
                    f"{sum(handled)} of {n} jobs" + "".join(stderr_tail(errs[i]) for i in dead)
                )
            await admin.wait_for_empty(engine.schema, deadline, EMPTY_POLL_S)
            seconds = time.perf_counter() - t0
            pg1 = self.server_cpu.sample()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"STOP\n")
                proc.stdin.close()
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 60)
            await asyncio.wait_for(asyncio.gather(*readers), 10)
            results = [
                self.check(engine, proc, outputs[i], errs[i]) for i, proc in enumerate(procs)
            ]
        except asyncio.TimeoutError:
            raise ChildError(
                f"{engine.label}: processes scenario timed out"
                + "".join(stderr_tail(e) for e in errs)
            ) from None
        finally:
            await self.reap(procs, errs)
        total = sum(r["handled"] for r in results)
        # Each child's own CPU from GO to STOP: together, the workers' CPU over the window.
        cpu_s = sum(r.get("cpu_s") or 0.0 for r in results)
        checksum_ok = (
            total == n
            and sum(r["sum"] for r in results) == n * (n + 1) // 2
            and sum(r["sum_sq"] for r in results) == n * (n + 1) * (2 * n + 1) // 6
        )
        return {
            "scenario": "processes",
            "processes": count,
            "jobs": n,
            "seconds": rnd(seconds),
            "jobs_per_sec": rnd(n / seconds, 1),
            "started": total,
            "duplicates": sum(r["duplicates"] for r in results),
            "out_of_range": sum(r["out_of_range"] for r in results),
            "checksum_ok": checksum_ok,
            "per_process": [r["handled"] for r in results],
            "remaining": await admin.count_jobs(engine.schema),
            "cpu_s": rnd(cpu_s, 4),
            "cpu_us_per_job": per_job_us(cpu_s, n),
            **self.server_cpu_per_job(pg0, pg1, n),
            "concurrency": sizes.concurrency,
            "timed_until": "from GO to every job started and count(*) = 0",
            "impl": results[0].get("impl") if results else None,
        }
