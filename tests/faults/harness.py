"""What the fault tests share: the observed task, its log, worker processes, the verdict.

The handler of the one task, ``work``, appends a line per event to a log file
opened ``O_APPEND`` (one ``write`` per line, so lines of concurrent processes
never interleave): ``start``, then ``end`` (returned), ``fail`` (raised) or
``crash`` (about to ``os._exit``), each with the job id, the attempts the
handler was given, its pid and ``time.monotonic_ns()``. CLOCK_MONOTONIC is
system-wide on Linux (Node's ``process.hrtime`` reads the same clock), so
lines of different processes compare. The harness records when it killed a
process and when each process exited: a run whose process died ends then.

From that log alone, as an outside observer would, :func:`analyse` counts
what docs/guarantees.md speaks of: *overlaps* (a start while an earlier run
of the job is alive), *repeats* (a start after a run that returned) and
*lost* jobs (row gone, no run returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kongtask._core import IMPLEMENTATION

#: How the pools of a mode are started: claim mode is the default, no option.
MODE_ARGS: dict[str, tuple[str, ...]] = {
    "claim": (),
    "lease": ("--lease-time", "250"),
}
#: The lease time of lease mode, in seconds (what bounds its repeats).
LEASE_TIME = 0.25
#: ``application_name`` of every worker connection (set in the DSN), so that a
#: test can find, and terminate, the pools' backends and no others.
WORKER_APP = "kongtask-faults-worker"
#: How long before a fault a success may have finished and still be repeated
#: because its write had not landed. The contract says "complete_batch_delay
#: plus one write (a few ms)", and 0-2 ms is what the kill test sees on an
#: idle machine; a quarter second allows for a loaded 2-core CI box.
CLAIM_WRITE_WINDOW = 0.25

TASKS_MODULE = '''
"""The fault suite's observed task (written by tests/faults/harness.py)."""
import asyncio
import os
import time

from kongtask import TaskList

tasks = TaskList()
_LOG = os.open(os.environ["KONGTASK_FAULTS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)


def _note(event, job):
    line = f"{event} {job.id} {job.attempts} {os.getpid()} {time.monotonic_ns()}\\n"
    os.write(_LOG, line.encode())


@tasks.task("work")
async def work(payload, helpers):
    job = helpers.job
    _note("start", job)
    try:
        if "exit_after_ms" in payload:
            await asyncio.sleep(payload["exit_after_ms"] / 1000)
            _note("crash", job)
            os._exit(1)
        await asyncio.sleep(payload.get("ms", 0) / 1000)
        if job.attempts <= payload.get("fail_attempts", 0):
            raise RuntimeError("planned failure")
    except BaseException:
        _note("fail", job)
        raise
    _note("end", job)
'''


# ------------------------------------------------------------------ observer
@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # start | end | fail | crash
    job: int
    attempts: int
    pid: int
    ns: int


class ObserverLog:
    """The handlers' log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self.counts: Counter[str] = Counter()
        self.running: Counter[int] = Counter()  # runs started and not ended, per pid
        self._offset = 0
        self._partial = b""
        path.touch()
        path.chmod(0o666)

    def read(self) -> list[Event]:
        """Every event so far (new lines are parsed, old ones kept)."""
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            kind, job, attempts, pid, ns = line.decode().split()
            self.events.append(Event(kind, int(job), int(attempts), int(pid), int(ns)))
            self.counts[kind] += 1
            self.running[int(pid)] += 1 if kind == "start" else -1
        return self.events

    def count(self, kind: str) -> int:
        self.read()
        return self.counts[kind]

    async def wait_count(
        self, kind: str, count: int, *, timeout: float, fleet: Fleet | None = None
    ) -> None:
        """Until the log holds ``count`` events of ``kind``."""

        async def reached() -> bool:
            return self.count(kind) >= count

        await wait_for(reached, f"{count} {kind!r} lines", timeout=timeout, fleet=fleet)


# ----------------------------------------------------------------- waiting
async def wait_for(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float,
    fleet: Fleet | None = None,
    interval: float = 0.05,
) -> None:
    """Until ``check()`` holds; fails after ``timeout`` with the workers' stderr,
    or at once when a worker of ``fleet`` exited that nobody killed."""
    deadline = time.monotonic() + timeout
    while not await check():
        if fleet is not None:
            fleet.assert_alive()
        if time.monotonic() > deadline:
            details = fleet.diagnostics() if fleet is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{details}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------- processes
class Worker:
    """One ``python -m kongtask run`` process (or a supervisor of some)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, stderr: Path) -> None:
        self.proc = proc
        self.name = name
        self.stderr_path = stderr
        self.killed_at: int | None = None
        self.exited_at: int | None = None
        self.expected_exit = False
        self._waiter = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> int:
        code = await self.proc.wait()
        self.exited_at = time.monotonic_ns()
        return code

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.exited_at is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the pool logged that it is ready, and check that it uses the
        build of this test run (compiled or pure)."""

        async def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"{self.name} exited before it was ready:\n{self.tail()}")
            return " ready: " in self.stderr()

        await wait_for(ready, f"{self.name} to be ready", timeout=timeout)
        lines = [line for line in self.stderr().splitlines() if " ready: " in line]
        assert all(line.endswith(f"({IMPLEMENTATION})") for line in lines), lines

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f}s:\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL, and note when: the runs of this process end no later than now."""
        if self.alive:
            self.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.killed_at = time.monotonic_ns()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful shutdown) and wait; a process that hangs is killed."""
        self.expected_exit = True
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.kill()
            await self.wait_exit(30)
            raise


class Fleet:
    """Starts worker processes with one command line, and remembers them all."""

    def __init__(self, dsn: str, schema: str, workdir: Path, log: Path) -> None:
        self.dsn = dsn
        self.schema = schema
        self.workdir = workdir
        self.env = {**os.environ, "KONGTASK_FAULTS_LOG": str(log), "KONGTASK_LOG_LEVEL": "INFO"}
        self.workers: list[Worker] = []

    async def start(self, *args: str, name: str = "worker", ready: bool = True) -> Worker:
        """``python -m kongtask run`` on this scenario's database with ``args`` added."""
        index = len(self.workers)
        stderr = self.workdir / f"{name}-{index}.log"
        with stderr.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kongtask",
                "run",
                "-c",
                self.dsn,
                "-s",
                self.schema,
                "--tasks",
                str(self.workdir / "faults_tasks.py"),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=self.env,
                cwd=self.workdir,
            )
        worker = Worker(proc, f"{name}-{index} (pid {proc.pid})", stderr)
        self.workers.append(worker)
        if ready:
            await worker.wait_ready()
        return worker

    async def busiest(self, observer: ObserverLog, timeout: float = 30.0) -> Worker:
        """The live worker running the most jobs now (waiting until one runs any)."""

        def running(worker: Worker) -> int:
            return observer.running[worker.pid] if worker.alive else 0

        async def any_running() -> bool:
            observer.read()
            return any(running(worker) > 0 for worker in self.workers)

        await wait_for(any_running, "a worker running jobs", timeout=timeout, fleet=self)
        return max(self.workers, key=running)

    def kills(self) -> dict[int, int]:
        """When each process this fleet SIGKILLed was killed."""
        return {w.pid: w.killed_at for w in self.workers if w.killed_at is not None}

    def deaths(self) -> dict[int, int]:
        """When each process that is gone died: killed, else seen to exit."""
        return {
            w.pid: w.killed_at if w.killed_at is not None else w.exited_at
            for w in self.workers
            if w.exited_at is not None
        }

    def assert_alive(self) -> None:
        for worker in self.workers:
            if not worker.alive and not worker.expected_exit:
                raise AssertionError(
                    f"{worker.name} exited with {worker.proc.returncode}:\n{worker.tail()}"
                )

    def diagnostics(self) -> str:
        return "".join(f"\n--- {w.name} stderr ---\n{w.tail()}" for w in self.workers)

    async def stop_all(self) -> None:
        """Graceful stop of every live worker; each must exit 0."""
        live = [w for w in self.workers if w.alive]
        codes = await asyncio.gather(*(w.stop() for w in live))
        bad = [(w.name, code) for w, code in zip(live, codes, strict=True) if code != 0]
        assert not bad, f"workers exited non-zero on SIGTERM: {bad}{self.diagnostics()}"

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            await worker.wait_exit(30)


# ----------------------------------------------------------------- verdict
@dataclass(slots=True)
class Run:
    """One call of a job's handler, as the log shows it."""

    job: int
    pid: int
    attempts: int
    start: int
    finish: int | None = None  # ns; None while alive
    outcome: str = "alive"  # end | fail | crash | death | alive


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that went wrong, from ``start`` to ``end`` (ns), to one process or all."""

    label: str
    start: int
    end: int
    pid: int | None = None


@dataclass(slots=True)
class Verdict:
    runs: list[Run]
    overlaps: list[tuple[Run, Run]]  # (earlier, later) alive at once
    # (a run that returned, the next run of its job): a rerun after a run that
    # died is a retry; after one that returned, a repeat the contract must allow.
    repeats: list[tuple[Run, Run]]
    lost: list[int]
    successes: dict[int, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    locked: int = 0  # jobs and named queues still locked when the verdict was taken

    @property
    def most_successes(self) -> int:
        return max(self.successes.values(), default=0)

    def summary(self) -> str:
        return (
            f"runs={len(self.runs)} succeeded={len(self.successes)} repeats={len(self.repeats)} "
            f"overlaps={len(self.overlaps)} lost={len(self.lost)} "
            f"most_successes_of_one_job={self.most_successes} locked_after={self.locked}"
        )


def analyse(
    events: Iterable[Event], deaths: Mapping[int, int], jobs: Iterable[int], remaining: set[int]
) -> Verdict:
    """Runs, overlaps, repeats and lost jobs from the log, the processes' deaths,
    the ids of the jobs added and the ids whose rows are still in the table."""
    # Runs of a job still open in a process, oldest first (one process may run
    # a job twice at once: an overlap, found below like any other).
    open_runs: dict[tuple[int, int], list[Run]] = defaultdict(list)
    runs: list[Run] = []
    anomalies: list[str] = []
    crashed: dict[int, int] = {}
    for event in sorted(events, key=lambda e: e.ns):
        key = (event.job, event.pid)
        if event.kind == "start":
            run = Run(event.job, event.pid, event.attempts, event.ns)
            open_runs[key].append(run)
            runs.append(run)
            continue
        if not open_runs[key]:
            anomalies.append(f"{event.kind} of job {event.job} in pid {event.pid} without start")
            continue
        run = open_runs[key].pop(0)
        run.finish, run.outcome = event.ns, event.kind
        if event.kind == "crash":
            crashed[event.pid] = event.ns
    for still_open in open_runs.values():
        for run in still_open:
            died = crashed.get(run.pid, deaths.get(run.pid))
            if died is not None:
                run.finish, run.outcome = died, "death"

    by_job: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job].append(run)
    overlaps: list[tuple[Run, Run]] = []
    repeats: list[tuple[Run, Run]] = []
    successes: dict[int, int] = {}
    for job, job_runs in by_job.items():
        for i, later in enumerate(job_runs):
            for earlier in job_runs[:i]:
                if earlier.finish is None or earlier.finish > later.start:
                    overlaps.append((earlier, later))
            before = job_runs[i - 1] if i else None
            if before is not None and before.outcome == "end" and before.finish < later.start:  # type: ignore[operator]
                repeats.append((before, later))
        count = sum(1 for r in job_runs if r.outcome == "end")
        if count:
            successes[job] = count
    lost = sorted(job for job in jobs if job not in remaining and job not in successes)
    return Verdict(runs, overlaps, repeats, lost, successes, anomalies)


def death_faults(deaths: Mapping[int, int]) -> list[Fault]:
    return [Fault(f"death of pid {pid}", ns, ns, pid) for pid, ns in deaths.items()]


def unexplained_repeats(
    repeats: Sequence[tuple[Run, Run]], faults: Sequence[Fault], window: float
) -> list[tuple[Run, Run]]:
    """Repeats the contract does not allow: each needs a fault that began at most
    ``window`` seconds after the earlier run returned (and had not ended before),
    on that run's process (or on all), and a job repeats at most once per fault."""
    reach = int(window * 1e9)
    used: set[tuple[int, Fault]] = set()
    bad = []
    for before, again in sorted(repeats, key=lambda pair: pair[1].start):
        finished = before.finish
        assert finished is not None
        cause = next(
            (
                f
                for f in faults
                if (f.pid is None or f.pid == before.pid)
                and f.start - reach <= finished <= f.end
                and (before.job, f) not in used
            ),
            None,
        )
        if cause is None:
            bad.append((before, again))
        else:
            used.add((before.job, cause))
    return bad


def backoff(attempts: int) -> float:
    """Seconds a failed (or crashed) attempt waits before the next: the schema's formula."""
    return math.exp(min(attempts, 10))


def reruns_after(runs: Iterable[Run], outcomes: Iterable[str]) -> list[tuple[Run, Run]]:
    """(a run that ended one of these ways, the next run of its job)."""
    ends = set(outcomes)
    by_job: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job].append(run)
    pairs = []
    for job_runs in by_job.values():
        for dead, following in itertools.pairwise(job_runs):
            if dead.outcome in ends:
                pairs.append((dead, following))
    return pairs


def rerun_too_early(dead: Run, following: Run, slack: float = 0.05) -> bool:
    """Whether a run after a death (or a failure) started before the failure
    backoff had passed, give or take ``slack`` seconds (the server's clock
    and ours tick apart)."""
    assert dead.finish is not None
    return following.start < dead.finish + (backoff(dead.attempts) - slack) * 1e9


def serial_overlaps(runs: Iterable[Run], queue_of: Mapping[int, str]) -> list[tuple[Run, Run]]:
    """Runs of jobs of one named queue alive at the same time (``queue_of``: job id -> queue)."""
    by_queue: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.job in queue_of:
            by_queue[queue_of[run.job]].append(run)
    pairs = []
    for queue_runs in by_queue.values():
        queue_runs.sort(key=lambda run: run.start)
        latest: Run | None = None  # the run that finished last so far
        for run in queue_runs:
            if latest is not None and (latest.finish is None or latest.finish > run.start):
                pairs.append((latest, run))
            if (
                latest is None
                or run.finish is None
                or (latest.finish is not None and run.finish > latest.finish)
            ):
                latest = run
    return pairs


def describe(pairs: Sequence[tuple[Run, Run]], limit: int = 5) -> str:
    return "; ".join(f"{a} / {b}" for a, b in pairs[:limit])


def report(scenario: str, mode: str, started: float, verdict: Verdict, **extra: Any) -> None:
    """One line per scenario run (shown with ``pytest -s``), for the numbers in reports."""
    fields = " ".join(f"{key}={value}" for key, value in extra.items())
    print(
        f"\nfaults: {scenario} mode={mode} build={IMPLEMENTATION} {verdict.summary()} {fields} "
        f"time={time.monotonic() - started:.1f}s",
        flush=True,
    )
