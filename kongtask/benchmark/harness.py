"""``kongtask bench``: plans the runs, drives the engines one at a time, reports.

Steps are interleaved (scenario by scenario, and within a scenario round by
round, engine after engine: A B C A B C), so slow drift of a noisy machine
(autovacuum, page cache, a neighbour's build) spreads over all engines
instead of landing on one. Before every run the harness checkpoints (when
allowed) and afterwards it truncates that engine's jobs table, so no run pays
for the previous one's WAL or dead rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import kongtask
from kongtask.argparsing import ArgumentParser
from kongtask.db import mask_dsn, resolve_dsn, scrub
from kongtask.embedded import EmbeddedServer, start_embedded
from kongtask.errors import ConfigError

from . import cpu, database, fleet, payload, report, spawn
from .common import median, rnd
from .engines import (
    GRAPHILE_WORKER,
    KONGTASK,
    KONGTASK_PURE,
    ChildError,
    Children,
    Engine,
    Sizes,
    graphile_worker_engine,
    kongtask_engine,
)

#: Scenarios in the order they run. ``implementations`` is not run by itself:
#: it adds the pure engine to the others.
SCENARIOS = (
    "enqueue",
    "drain",
    "latency",
    "scheduled",
    "memory",
    "startup",
    "processes",
    spawn.SCENARIO,
    payload.SCENARIO,
    *fleet.SCENARIOS,
    "implementations",
)
ENGINE_SCENARIOS = SCENARIOS[:-1]

FULL: dict[str, Any] = {
    "enqueue_jobs": 200_000,
    "drain_jobs": 200_000,
    "memory_jobs": 200_000,
    "processes_jobs": 200_000,
    "latency_samples": 1000,
    "scheduled_samples": 200,
    "startup_samples": 5,
    "spawn_samples": 9,
    "idle_wait_s": 1.0,
    "rounds": 2,
    "spawn_jobs": (100_000, 1_000_000),
    "payload_jobs": 100_000,
    "timeout": 900,
}
QUICK: dict[str, Any] = {
    "enqueue_jobs": 2000,
    "drain_jobs": 3000,
    "memory_jobs": 3000,
    "processes_jobs": 3000,
    "latency_samples": 100,
    "scheduled_samples": 20,
    "startup_samples": 2,
    "spawn_samples": 2,
    "idle_wait_s": 0.5,
    "rounds": 1,
    "spawn_jobs": (3000,),
    "payload_jobs": 3000,
    # Well inside the smoke test's own timeout, so that a child that hangs is
    # reported with its stacks (benchmark/hang.py) instead of killed unseen.
    "timeout": 90,
}

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _sizes_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(_positive(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N or N,M,... (whole numbers): {exc}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one size")
    return values


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*SCENARIOS, "all")]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="kongtask bench",
        description="End-to-end benchmarks of kongtask (compiled and pure), optionally against "
        "graphile-worker, in a database of their own (kongtask_bench).",
    )
    parser.add_argument(
        "-c",
        "--connection",
        metavar="DSN",
        help="server to use (default: DATABASE_URL, PG* variables, embedded); "
        "the bench works in its own database on it, never in this one",
    )
    parser.add_argument(
        "--database",
        default=database.DEFAULT_DATABASE,
        metavar="NAME",
        help="database the bench creates and uses (default %(default)s)",
    )
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        action="append",
        metavar="A,B,...",
        help=f"scenarios to run: {', '.join(SCENARIOS)} (default all: every one but "
        f"{', '.join(fleet.SCENARIOS)}, which are asked for by name: all,fleet)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke sizes: a few thousand jobs, few samples, one round",
    )
    parser.add_argument(
        "--compare",
        choices=[GRAPHILE_WORKER],
        action="append",
        default=[],
        help="also run graphile-worker 0.17 (bench/graphile-worker/bench.js)",
    )
    parser.add_argument(
        "--node-bench",
        type=Path,
        metavar="DIR",
        help="folder of bench.js (default: bench/graphile-worker of the source tree)",
    )
    parser.add_argument(
        "--rounds", type=_positive, help="runs of every scenario per engine (default 2, quick 1)"
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="jobs for enqueue, drain, memory, processes, drain-from-spawn and payload",
    )
    for name in ("enqueue", "drain", "memory", "processes", "payload"):
        sizes.add_argument(f"--{name}-jobs", type=_positive, metavar="N")
    sizes.add_argument(
        "--spawn-jobs",
        type=_sizes_list,
        metavar="N[,M...]",
        help="queue sizes of drain-from-spawn, one run each (default 100000,1000000; quick 3000)",
    )
    sizes.add_argument(
        "--empty-poll-ms",
        type=_positive,
        default=100,
        metavar="MS",
        help="how often drain-from-spawn polls count(*) for an empty queue (default %(default)s)",
    )
    sizes.add_argument(
        "--samples",
        type=_positive,
        metavar="S",
        dest="latency_samples",
        help="latency samples after 50 warm-up jobs (default 1000)",
    )
    sizes.add_argument("--scheduled-samples", type=_positive, metavar="S")
    sizes.add_argument(
        "--startup-samples",
        type=_positive,
        metavar="S",
        help="run() -> ready repetitions in one process (default 5)",
    )
    sizes.add_argument(
        "--spawn-samples",
        type=_positive,
        metavar="S",
        help="process spawns timed to READY (default 5)",
    )
    sizes.add_argument("-j", "--concurrency", type=_positive, default=24, metavar="C")
    sizes.add_argument(
        "--local-queue-size",
        type=_positive,
        metavar="L",
        help="kongtask's local queue in the in-process scenarios (default: "
        "kongtask's own default); drain-from-spawn always uses the default",
    )
    sizes.add_argument(
        "--processes",
        type=_positive,
        default=2,
        metavar="P",
        help="worker processes in the processes scenario (default 2)",
    )
    sizes.add_argument("--poll-interval", type=_positive, default=2000, metavar="MS")
    sizes.add_argument(
        "--skip-analyze",
        action="store_true",
        help="do not ANALYZE the jobs table after the untimed bulk insert",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        metavar="SEC",
        help="per child process (default 900, quick 90)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="results folder (default: bench/results in a source tree, else ./bench-results)",
    )
    parser.add_argument("--no-chart", action="store_true", help="write no PNG")
    parser.add_argument(
        "--keep-schemas", action="store_true", help="keep this run's schemas in the bench database"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="pass the children's stderr through"
    )
    return parser


@dataclass(slots=True)
class Step:
    scenario: str
    round: int
    engine: Engine
    #: drain-from-spawn's queue size (it runs once per size); None elsewhere.
    jobs: int | None = None

    @property
    def key(self) -> str:
        """Where the result goes in ``results`` and ``summary``."""
        return self.scenario if self.jobs is None else spawn.key(self.jobs)


@dataclass(slots=True)
class Plan:
    scenarios: list[str]
    engines: list[Engine]
    rounds: int
    sizes: Sizes
    notes: list[str] = field(default_factory=list)
    #: Scenarios the pure engine runs; None: all (``implementations`` was chosen).
    pure_scenarios: tuple[str, ...] | None = None

    def steps(self) -> list[Step]:
        return [
            Step(scenario, r, engine, jobs)
            for scenario in self.scenarios
            for jobs in (self.sizes.spawn_jobs if scenario == spawn.SCENARIO else (None,))
            for r in range(1, self.rounds + 1)
            for engine in self.engines
            if engine.supports(scenario)
            and (
                engine.name != KONGTASK_PURE
                or self.pure_scenarios is None
                or scenario in self.pure_scenarios
            )
        ]


class Progress:
    """Plain-text progress on stderr: step counter, elapsed time, last result."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.t0 = time.monotonic()

    def _stamp(self) -> str:
        elapsed = int(time.monotonic() - self.t0)
        return (
            f"[bench {self.n:>{len(str(self.total))}}/{self.total} {elapsed // 60}:"
            f"{elapsed % 60:02d}]"
        )

    def start(self, step: Step, rounds: int) -> None:
        self.n += 1
        print(
            f"{self._stamp()} {step.key:<9} round {step.round}/{rounds}  {step.engine.label} ...",
            file=sys.stderr,
            flush=True,
        )

    def done(self, text: str) -> None:
        print(f"{' ' * len(self._stamp())}   -> {text}", file=sys.stderr, flush=True)

    @staticmethod
    def note(text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)


def _brief(scenario: str, result: dict[str, Any]) -> str:
    def f(key: str, digits: int = 2) -> str:
        value = result.get(key)
        return "-" if value is None else f"{value:,.{digits}f}"

    cpu_use = (
        f"; CPU/job: worker {f('cpu_us_per_job', 1)} µs, PostgreSQL {f('pg_cpu_us_per_job', 1)} µs"
    )
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if scenario in ("enqueue", "drain", "processes", spawn.SCENARIO, *fleet.SCENARIOS):
        extra = f", remaining {result['remaining']}" if "remaining" in result else ""
        return f"{f('jobs_per_sec', 0)} jobs/s in {f('seconds')} s{extra}{cpu_use}"
    if scenario in ("latency", "scheduled"):
        return f"p50 {f('p50')} ms, p99 {f('p99')} ms, max {f('max')} ms"
    if scenario == "memory":
        return f"idle {f('idle_rss_mb', 1)} MB, peak {f('peak_rss_mb', 1)} MB{cpu_use}"
    if scenario == payload.SCENARIO:
        return (
            f"CPU/job: large payload {f('cpu_us_per_job', 1)} µs, tiny "
            f"{f('tiny_cpu_us_per_job', 1)} µs, orjson.loads {f('orjson_loads_us', 1)} µs, "
            "beyond parsing "
            f"{f('unexplained_us_per_job', 1)} µs"
        )
    if scenario == "startup":
        return (
            f"spawn->ready {f('spawn_to_ready_ms', 1)} ms, run()->ready "
            f"{f('run_to_ready_ms', 1)} ms"
        )
    return ""


def check(
    scenario: str, engine: Engine, result: dict[str, Any], sizes: Sizes, jobs: int | None = None
) -> list[str]:
    """Correctness of one run; never speed. Returns the problems found."""
    problems = [f"{engine.name} {scenario}: {w}" for w in result.get("warnings", [])]

    def expect(key: str, wanted: Any) -> None:
        if key in result and result[key] != wanted:
            problems.append(f"{engine.name} {scenario}: {key} = {result[key]}, expected {wanted}")

    if scenario in ("drain", "memory", "processes"):
        jobs = {
            "drain": sizes.drain_jobs,
            "memory": sizes.memory_jobs,
            "processes": sizes.processes_jobs,
        }[scenario]
        expect("remaining", 0)
        expect("jobs", jobs)
        expect("started", jobs)
        expect("duplicates", 0)
        expect("missing", 0)
        expect("out_of_range", 0)
        expect("checksum_ok", True)
        if result.get("remaining") is None:
            problems.append(f"{engine.name} {scenario}: remaining was not reported")
    elif scenario == spawn.SCENARIO:
        for name, wanted in (
            ("jobs", jobs),
            ("handled", jobs),
            ("checksum_ok", True),
            ("remaining", 0),
            ("locked", 0),
            ("exit_code", 0),
        ):
            if result.get(name) != wanted:
                problems.append(
                    f"{engine.name} {scenario}: {name} = {result.get(name)}, expected {wanted}"
                )
    elif scenario in fleet.SCENARIOS:
        problems.extend(fleet.check(scenario, engine, result, sizes))
    elif scenario == "enqueue":
        expect("jobs", sizes.enqueue_jobs)
    elif scenario == "latency":
        expect("samples", sizes.latency_samples)
    elif scenario == "scheduled":
        expect("samples", sizes.scheduled_samples)
    elif scenario == "startup":
        expect("spawn_samples_count", sizes.spawn_samples)
        expect("samples", sizes.startup_samples)
    return problems


async def run_step(
    step: Step, dsn: str, sizes: Sizes, children: Children, admin: database.Admin
) -> dict[str, Any]:
    engine, scenario = step.engine, step.scenario
    timeout = sizes.timeout_s + 60
    if scenario == "processes":
        return await children.processes(engine, dsn, sizes, admin)
    if scenario == payload.SCENARIO:
        return await payload.payload_scenario(children, engine, dsn, sizes, admin)
    if scenario in fleet.SCENARIOS:
        return await fleet.run(scenario, step.round, children, engine, dsn, sizes, admin)
    if scenario == spawn.SCENARIO:
        assert step.jobs is not None
        return await spawn.drain_from_spawn(children, engine, dsn, sizes, admin, step.jobs)
    result = await children.run(engine, engine.args(scenario, dsn, sizes), timeout)
    if scenario == "startup":
        result.update(await _spawn_samples(children, engine, dsn, sizes, admin, timeout))
    return result


async def _spawn_samples(
    children: Children,
    engine: Engine,
    dsn: str,
    sizes: Sizes,
    admin: database.Admin,
    timeout: float,
) -> dict[str, Any]:
    """Spawn -> ready of an idle pool, each sample beside a run of each floor command.

    The floors (the bare runtime; the runtime and the libraries) run right
    after each spawn, so a spawn and its floor see the same minute of a shared
    machine: its speed drifts by tens of percent between minutes, and a floor
    timed after all the spawns made the difference a figure of the drift.
    ``spawn_over_floor_ms`` is the median of the per-sample differences.
    """
    spawns: list[dict[str, Any]] = []
    floors: dict[str, list[float]] = {what: [] for what in engine.floors}
    for _ in range(sizes.spawn_samples):
        await admin.clear(engine.schema)
        spawns.append(
            await children.spawn_to_ready(engine, engine.args("idle", dsn, sizes), timeout)
        )
        for what, argv in engine.floors.items():
            floors[what].append(await children.spawn_floor(engine, argv, timeout))
    spawn_ms = [s["spawn_to_ready_ms"] for s in spawns]
    result: dict[str, Any] = {
        "spawn_to_ready_ms": rnd(median(spawn_ms)),
        "spawn_to_ready_first_ms": spawn_ms[0],
        "spawn_samples": spawn_ms,
        "spawn_samples_count": len(spawn_ms),
        "fresh_process_run_to_ready_ms": rnd(median([s["run_to_ready_ms"] for s in spawns])),
        "rss_at_ready_mb": median(
            [s["rss_at_ready_mb"] for s in spawns if s.get("rss_at_ready_mb") is not None]
        ),
        "shutdown_ms": rnd(median([s["shutdown_ms"] for s in spawns])),
    }
    for what, values in floors.items():
        result[f"spawn_floor_{what}_ms"] = rnd(median(values))
        result[f"spawn_floor_{what}_samples"] = [rnd(v) for v in values]
    libraries = floors.get("libraries")
    if libraries:
        result["spawn_over_floor_ms"] = rnd(
            median([spawn - floor for spawn, floor in zip(spawn_ms, libraries, strict=True)])
        )
    return result


#: What one failed step raises: recorded in its result, and the run goes on.
_STEP_ERRORS: tuple[type[BaseException], ...] = (ChildError, *database.ERRORS)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _compiled_available() -> bool:
    try:
        return importlib.util.find_spec("kongtask._core.decode") is not None
    except (ImportError, ValueError):
        return False


def _sizes(args: argparse.Namespace) -> tuple[Sizes, int]:
    base = QUICK if args.quick else FULL

    def pick(name: str) -> Any:
        specific = getattr(args, name, None)
        if specific is not None:
            return specific
        if name.endswith("_jobs") and args.jobs is not None:
            return args.jobs
        return base[name]

    sizes = Sizes(
        spawn_jobs=args.spawn_jobs or ((args.jobs,) if args.jobs else base["spawn_jobs"]),
        empty_poll_ms=args.empty_poll_ms,
        enqueue_jobs=pick("enqueue_jobs"),
        drain_jobs=pick("drain_jobs"),
        memory_jobs=pick("memory_jobs"),
        processes_jobs=pick("processes_jobs"),
        payload_jobs=pick("payload_jobs"),
        latency_samples=pick("latency_samples"),
        scheduled_samples=pick("scheduled_samples"),
        startup_samples=pick("startup_samples"),
        spawn_samples=pick("spawn_samples"),
        processes=args.processes,
        concurrency=args.concurrency,
        local_queue_size=args.local_queue_size,
        poll_interval_ms=args.poll_interval,
        timeout_s=pick("timeout"),
        idle_wait_s=base["idle_wait_s"],
        analyze=not args.skip_analyze,
    )
    return sizes, args.rounds or base["rounds"]


def make_plan(args: argparse.Namespace, stamp: str) -> Plan:
    chosen = [name for group in (args.scenario or [["all"]]) for name in group]
    if "all" in chosen:
        # The fleet scenarios are asked for by name (``all,fleet`` adds them):
        # each of their steps is several drains.
        chosen = [name for name in SCENARIOS if name not in fleet.SCENARIOS or name in chosen]
    scenarios = [name for name in ENGINE_SCENARIOS if name in chosen]
    with_pure = "implementations" in chosen
    if with_pure and not scenarios:
        scenarios = [name for name in ENGINE_SCENARIOS if name not in fleet.SCENARIOS]
    # The payload scenario is a compiled/pure comparison by definition.
    pure_scenarios = None if with_pure else (payload.SCENARIO,)
    with_pure = with_pure or payload.SCENARIO in scenarios
    sizes, rounds = _sizes(args)
    notes: list[str] = []
    engines: list[Engine] = []
    kt = kongtask_engine(KONGTASK, f"bench_{stamp}_kt")
    if not _compiled_available():
        kt.expect_impl = "python"
        kt.label = "kongtask (not compiled)"
        notes.append(
            "compiled extensions are not built (python setup.py build_ext --inplace); "
            "kongtask runs pure and the compiled/pure comparison is skipped"
        )
        with_pure = False
    engines.append(kt)
    if with_pure:
        engines.append(kongtask_engine(KONGTASK_PURE, f"bench_{stamp}_ktpure"))
    if GRAPHILE_WORKER in args.compare:
        from . import node

        node_bin, folder = node.prepare(args.node_bench)
        engines.append(graphile_worker_engine(f"bench_{stamp}_gw", node_bin, folder))
        notes.append(
            "graphile-worker runs with its best documented settings (local queue "
            "max(500, concurrency), batch delays 0); kongtask with its defaults"
            + (
                f" but local_queue_size {args.local_queue_size}"
                if args.local_queue_size is not None
                else ""
            )
        )
    return Plan(scenarios, engines, rounds, sizes, notes, pure_scenarios)


def _masked_argv(argv: Sequence[str]) -> list[str]:
    return [mask_dsn(a) if "://" in a or "password" in a.lower() else a for a in argv]


def _compile_bytecode() -> str:
    """Write the package's bytecode before any child starts, as ``pip install`` does.

    A source tree (an editable install) holds only the bytecode of what has run
    since its last change, and with ``PYTHONDONTWRITEBYTECODE`` set none is ever
    written: every child would compile the changed modules again, and
    spawn -> ready would time the compiler (a few to tens of ms), not kongtask.
    """
    import compileall

    folder = Path(kongtask.__file__).resolve().parent
    try:
        fresh = compileall.compile_dir(folder, quiet=2, workers=1)
    except OSError as exc:
        return f"bytecode of {folder} not written ({exc}): children may compile it"
    if not fresh:
        return f"bytecode of {folder} partly not written: children may compile it"
    return f"bytecode of {folder} written before the children start, as an install does"


def _embedded_notes(server: EmbeddedServer) -> list[str]:
    """What a user should know about the embedded server the bench is about to use."""
    notes = [f"embedded PostgreSQL: data in {server.folder}"]
    if server.os_user is not None:
        notes.append(
            f"running as root, so PostgreSQL runs as the OS user {server.os_user!r} "
            "(pgserver creates it if missing)"
        )
    if server.stops_at_exit:
        notes.append("this bench started it and stops it when it ends")
    else:
        notes.append(
            f"it was already running and is left running; stop it with: {server.stop_command}"
        )
    return notes


async def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    started = datetime.now()
    stamp = f"{started:%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"
    server_dsn = resolve_dsn(args.connection)
    if server_dsn is None:
        Progress.note("no DSN given: using the embedded PostgreSQL")
        embedded = start_embedded(stop_at_exit=True)
        server_dsn = embedded.dsn
        for line in _embedded_notes(embedded):
            Progress.note(line)
    plan = make_plan(args, stamp)
    plan.notes.append(_compile_bytecode())
    for note in plan.notes:
        Progress.note(note)
    bench_dsn = database.with_database(server_dsn, args.database)
    child_dsn, password = database.split_password(bench_dsn)
    await database.ensure_database(server_dsn, args.database)
    Progress.note(
        f"database {mask_dsn(bench_dsn)}; engines: "
        f"{', '.join(e.label for e in plan.engines)}; scenarios: "
        f"{', '.join(plan.scenarios)}; rounds: {plan.rounds}"
    )
    schemas = [engine.schema for engine in plan.engines]
    await database.create_schemas(bench_dsn, schemas)
    admin = database.Admin(bench_dsn)
    server_cpu = cpu.locate_server(**await admin.server_identity())
    if not server_cpu.available:
        Progress.note(f"PostgreSQL CPU per job is not measured: {server_cpu.reason}")
    children = Children(password, args.verbose, server_cpu)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    problems: list[str] = []
    machine = report.machine_info()
    postgres = await database.server_info(bench_dsn)
    postgres["cpu"] = server_cpu.describe()
    postgres["round_trips"] = await database.round_trips(
        bench_dsn, idle_s=plan.sizes.idle_wait_s, samples=2 if args.quick else 3
    )
    Progress.note(
        "round trips: " + ", ".join(f"{k} {v}" for k, v in postgres["round_trips"].items())
    )
    try:
        steps = plan.steps()
        progress = Progress(len(steps))
        for step in steps:
            progress.start(step, plan.rounds)
            load = _load_average()
            try:
                await admin.clear(step.engine.schema)
                await admin.checkpoint()
                result = await run_step(step, child_dsn, plan.sizes, children, admin)
            except _STEP_ERRORS as exc:
                # One failed run (a child error, the server restarting under us)
                # is recorded and the run goes on; the exit code reports it.
                message = scrub(str(exc) or type(exc).__name__, bench_dsn)
                result = {"scenario": step.scenario, "error": message}
                problems.append(f"{step.engine.name} {step.key} round {step.round}: {message}")
                progress.done(f"FAILED: {message.splitlines()[0]}")
            else:
                found = check(step.scenario, step.engine, result, plan.sizes, step.jobs)
                problems.extend(f"{p} (round {step.round})" for p in found)
                progress.done(_brief(step.scenario, result) + ("  CHECK FAILED" if found else ""))
            result["round"] = step.round
            # A busy machine explains an outlier; keep the evidence with the number.
            result["load_avg_1m"] = load
            results.setdefault(step.key, {}).setdefault(step.engine.name, []).append(result)
            try:
                await admin.clear(step.engine.schema)
            except database.ERRORS as exc:
                Progress.note(f"could not clear {step.engine.schema}: {exc}")
    finally:
        children.kill_all()
        await admin.close()
        if not args.keep_schemas:
            try:
                await database.drop_schemas(bench_dsn, schemas)
            except database.ERRORS as exc:
                Progress.note(f"could not drop schemas {schemas}: {exc}")
    postgres["checkpoint_before_each_run"] = admin.checkpoint_ok
    return _finish(args, argv, plan, started, machine, postgres, bench_dsn, results, problems)


def _finish(
    args: argparse.Namespace,
    argv: Sequence[str],
    plan: Plan,
    started: datetime,
    machine: dict[str, Any],
    postgres: dict[str, Any],
    bench_dsn: str,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    problems: list[str],
) -> int:
    engine_names = [e.name for e in plan.engines]
    labels = {e.name: e.label for e in plan.engines}
    summary = {
        scenario: {
            engine: report.summarize_rounds([r for r in rounds if "error" not in r])
            for engine, rounds in by_engine.items()
        }
        for scenario, by_engine in results.items()
    }
    table = report.format_table(summary, engine_names, labels, plan.sizes.processes)
    targets = report.check_targets(summary, engine_names)
    finished = datetime.now()
    gw_version = next(
        (
            r.get("version")
            for by_engine in results.values()
            for r in by_engine.get(GRAPHILE_WORKER, [])
            if r.get("version")
        ),
        None,
    )
    node_info = None
    if any(e.name == GRAPHILE_WORKER for e in plan.engines):
        from .node import node_version

        gw = next(e for e in plan.engines if e.name == GRAPHILE_WORKER)
        node_info = {"node": node_version(gw.prefix[0]), "graphile_worker": gw_version}
    folder = args.output or report.default_results_dir()
    path = report.results_path(folder, started)
    chart_path = None
    document: dict[str, Any] = {
        "format": 1,
        "tool": "kongtask bench",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "argv": _masked_argv(argv),
        "quick": bool(args.quick),
        "machine": machine,
        "postgres": {**postgres, "database": args.database, "dsn": mask_dsn(bench_dsn)},
        "packages": report.package_versions(),
        "node": node_info,
        "engines": {
            e.name: {"label": e.label, "schema": e.schema, "implementation": e.expect_impl}
            for e in plan.engines
        },
        "scenarios": plan.scenarios,
        "rounds": plan.rounds,
        "sizes": asdict(plan.sizes),
        "results": results,
        "summary": summary,
        "ratios": report.ratios(summary, engine_names),
        "targets": targets,
        "problems": problems,
        "notes": plan.notes,
        "chart": None,
    }
    if not args.no_chart:
        chart_path = report.draw_chart(
            path.with_suffix(".png"),
            summary,
            engine_names,
            labels,
            f"kongtask bench {started:%Y-%m-%d %H:%M} - {machine['cores']} cores, "
            f"{machine['cpu_model']} - PostgreSQL {postgres.get('server_version')}"
            f" - median of {plan.rounds} round(s)",
        )
        if chart_path is None:
            Progress.note("matplotlib is not installed: no chart (pip install 'kongtask[bench]')")
        else:
            document["chart"] = chart_path.name
    report.write_json(path, document)
    print()
    print(
        f"kongtask bench: {machine['cores']} cores, {machine['cpu_model']}, "
        f"PostgreSQL {postgres.get('server_version')}, median of {plan.rounds} round(s)"
    )
    print(table)
    if targets:
        print()
        print(
            "Targets: goals set in kongtask's issues, judged on this run's medians "
            "(informational: they never change the exit code)."
        )
        for t in targets:
            mark = {True: "met", False: "MISSED", None: "-"}[t["met"]]
            print(f"  {mark:<6} {t['target']}: {t['value']:.3g} ({t['measure']} {t['limit']:g})")
    print()
    print(f"results: {path}" + (f"\nchart:   {chart_path}" if chart_path else ""))
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p.splitlines()[0]}")
        return EXIT_PROBLEMS
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kongtask bench``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args, argv))
    except ConfigError as exc:
        print(f"kongtask bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionError as exc:
        print(f"kongtask bench: {scrub(str(exc), args.connection)}", file=sys.stderr)
        return EXIT_CONNECT
    except KeyboardInterrupt:
        print("kongtask bench: interrupted", file=sys.stderr)
        return 130
