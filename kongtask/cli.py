"""``kongtask`` command line: a thin front end; every command calls the library.

Exit codes (README's CLI section is the user's copy): 0 success; 1 unexpected
error; 2 bad usage, configuration or input (a DSN that does not parse, a schema
``kongtask migrate`` never installed); 3 the database cannot be reached; 4
tasks failed to load; 5 (retry/remove/unlock, inspect_cli) some given jobs were
skipped; 57 the schema holds a breaking migration newer than this kongtask
(graphile-worker uses the same code); 130 interrupted outside ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from . import __version__
from ._core import IMPLEMENTATION
from .argparsing import ArgumentParser
from .config import resolve_schema
from .db import resolve_dsn, schema_missing, scrub
from .errors import (
    ConfigError,
    CronSyntaxError,
    InvalidJobSpec,
    KongtaskError,
    SchemaMissing,
    SchemaTooNew,
    TaskLoadError,
)
from .logsetup import configure_logging
from .migrate import MigrationResult
from .processes_option import resolve_processes, without_processes

if TYPE_CHECKING:
    from .client import Job, WorkerUtils

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_TASKS = 4
EXIT_SCHEMA_TOO_NEW = SchemaTooNew.exit_code

log = logging.getLogger("kongtask.cli")


def _client(dsn: str, schema: str | None) -> WorkerUtils:
    """The client, imported when a command needs it: ``kongtask run`` never does."""
    from .client import WorkerUtils

    return WorkerUtils(dsn, schema=schema)


def _dsn(args: argparse.Namespace) -> str:
    dsn = resolve_dsn(getattr(args, "connection", None))
    if dsn is None:
        log.info("no DSN, DATABASE_URL or PG* variables: using the embedded PostgreSQL")
        from .embedded import embedded_dsn  # only a command given no DSN needs it

        dsn = embedded_dsn()
    return dsn


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--connection",
        metavar="DSN",
        help="PostgreSQL DSN (default: DATABASE_URL, PG* variables, embedded)",
    )
    parser.add_argument(
        "-s",
        "--schema",
        metavar="NAME",
        help="schema (default: KONGTASK_SCHEMA, GRAPHILE_WORKER_SCHEMA, graphile_worker)",
    )


def build_parser(run_only: bool = False) -> argparse.ArgumentParser:
    """The command line's parser; ``run_only`` leaves out every command but ``run``.

    ``kongtask run`` starts every worker process, and building the parsers of
    the other commands (with the inspect and dashboard modules they import)
    cost it 7 ms of its start on the 2-core machine, for nothing it uses.
    """
    parser = ArgumentParser(
        prog="kongtask", description="PostgreSQL job queue, compatible with graphile-worker."
    )
    parser.add_argument(
        "--version", action="version", version=f"kongtask {__version__} ({IMPLEMENTATION})"
    )
    parser.add_argument("--log-level", default=os.environ.get("KONGTASK_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(commands)
    if not run_only:
        _add_other_parsers(commands)
    return parser


def _add_run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run a worker pool")
    _add_connection_args(run)
    run.add_argument(
        "--tasks",
        metavar="MODULE_OR_DIR",
        help="module exposing a TaskList/dict (imported from the current folder "
        "first), a .py file, or a folder of task files (default: ./tasks/, else ./tasks.py)",
    )
    run.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=10,
        dest="concurrency",
        help="concurrency: jobs running at once (default 10)",
    )
    run.add_argument("--once", action="store_true", help="run due jobs, then exit")
    run.add_argument("--schema-only", action="store_true", help="migrate, then exit")
    run.add_argument(
        "--poll-interval",
        type=_positive_int,
        default=2000,
        metavar="MS",
        help="look for jobs this often when no notification came (default 2000)",
    )
    run.add_argument(
        "--local-queue-size",
        type=_positive_int,
        metavar="N",
        help="most jobs one fetch locks (default 1000; the batch adapts to the job rate)",
    )
    run.add_argument(
        "--lease-time",
        type=float,
        default=0.0,
        metavar="MS",
        help="lease plain jobs: a fetched batch stays locked by its fetch transaction for "
        "up to MS before unfinished jobs are claimed (default 0: claim every job before it "
        "runs, as graphile-worker does; leases are faster but weaker under faults, see "
        "docs/guarantees.md)",
    )
    run.add_argument(
        "--listen-dsn",
        metavar="DSN",
        help="a direct connection for LISTEN when -c goes through a transaction-pooling "
        "PgBouncer (with --no-prepared-statements and no --listen-dsn the pool polls)",
    )
    run.add_argument(
        "--complete-batch-delay",
        type=float,
        default=2.0,
        metavar="MS",
        help="how long finished jobs wait to be written together (default 2; 0: next loop turn)",
    )
    run.add_argument(
        "--no-prepared-statements",
        action="store_true",
        help="for PgBouncer in transaction pooling mode",
    )
    run.add_argument(
        "--max-pool-size",
        type=_positive_int,
        metavar="N",
        help="connections in the pool, at least 5 (default: min(concurrency, 20), at least 6); "
        "LISTEN uses one more",
    )
    run.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="after SIGINT/SIGTERM, fail jobs still running after S seconds (default 30)",
    )
    run.add_argument(
        "--forbidden-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="skip jobs carrying this flag (repeatable)",
    )
    run.add_argument(
        "--crontab", metavar="FILE", help="crontab file (default: ./crontab if it exists)"
    )
    run.add_argument(
        "--processes",
        type=resolve_processes,
        metavar="N|auto",
        help="run N worker processes under a supervisor (auto: one per core)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics here (process i of --processes uses PORT+i)",
    )
    run.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default 127.0.0.1)",
    )
    run.add_argument(
        "--job-timeout",
        type=float,
        metavar="S",
        help="fail (and retry) jobs running longer than this",
    )
    run.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="how often the pool marks itself alive (default 5)",
    )
    run.add_argument(
        "--dead-worker-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="free the jobs of pools silent for this long (default 30)",
    )


def _add_other_parsers(commands: Any) -> None:
    from . import inspect_cli
    from .dashboard import cli as dashboard_cli

    mig = commands.add_parser("migrate", help="install or check the schema")
    _add_connection_args(mig)

    add = commands.add_parser("add", help="add a job")
    _add_connection_args(add)
    add.add_argument("task")
    add.add_argument(
        "payload",
        nargs="?",
        default="{}",
        help="JSON payload (default {}); - reads it from stdin, @FILE from a file",
    )
    add.add_argument("--queue")
    add.add_argument("--run-at", metavar="ISO8601")
    add.add_argument("--job-key")
    add.add_argument("--job-key-mode", choices=("replace", "preserve_run_at", "unsafe_dedupe"))
    add.add_argument("--priority", type=int)
    add.add_argument("--max-attempts", type=int)
    add.add_argument("--flag", action="append", dest="flags")

    cron = commands.add_parser("cron", help="crontab tools")
    cron_commands = cron.add_subparsers(dest="cron_command", required=True)
    check = cron_commands.add_parser("check", help="parse a crontab; print next five fire times")
    check.add_argument("file")

    inspect_cli.register(commands, _add_connection_args)
    dashboard_cli.register(commands, _add_connection_args)

    commands.add_parser("info", help="version and which implementation is loaded")
    bench = commands.add_parser(
        "bench",
        help="benchmark kongtask (and graphile-worker); see `kongtask bench --help`",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)


#: Allocations between young-generation collections in `kongtask run`
#: (Python's default is 700); KONGTASK_GC_THRESHOLD overrides it.
GC_THRESHOLD = 20_000


def _tune_gc() -> None:
    """The cyclic GC, set for a process whose objects are mostly jobs passing through.

    Each job allocates a handful of tracked objects (row, job, payload,
    helpers, coroutine) that die by reference counting a few milliseconds
    later; at Python's default the collector ran every ~150 jobs and its full
    collections walked every long-lived object again: 13% of the worker's
    CPU. Start-up objects (modules, classes, the pool's wiring) are frozen out
    of collections, and young collections run every GC_THRESHOLD allocations.
    This is the CLI's process; ``kongtask.run()`` leaves a host program's GC alone.
    """
    gc.freeze()
    threshold = int(os.environ.get("KONGTASK_GC_THRESHOLD", GC_THRESHOLD))
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


def _default_tasks() -> str | None:
    """``./tasks/`` (a folder of task files), else ``./tasks.py``, else nothing."""
    if Path("tasks").is_dir():
        return "tasks"
    if Path("tasks.py").is_file():
        return "tasks.py"
    return None


def _import_from_cwd() -> None:
    """Make ``--tasks myapp.tasks`` find ``./myapp`` as ``python -m kongtask`` would.

    The ``kongtask`` console script starts with its own folder on ``sys.path``,
    not the current one, so a project's package was not importable from it.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _read_crontab(path: str) -> list[Any]:
    """The crontab ``run`` was given; an unreadable file is bad input (exit 2), one line.

    Syntax errors already name the file, line and column (``load_crontab``).
    """
    from .crontab import load_crontab

    try:
        return load_crontab(path)
    except OSError as exc:
        raise ConfigError(f"--crontab: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--crontab: cannot read {path}: not UTF-8 text ({exc.reason})") from None


async def _cmd_run(args: argparse.Namespace) -> int:
    from .tasks import load_tasks
    from .worker import Runner, WorkerOptions

    dsn = _dsn(args)
    if args.schema_only:
        async with _client(dsn, args.schema) as utils:
            _print_migration(await utils.migrate())
        return 0
    spec = args.tasks or _default_tasks()
    if spec is None:
        raise TaskLoadError("no --tasks given, and no ./tasks folder or ./tasks.py here")
    _import_from_cwd()
    tasks = load_tasks(spec)
    crontab_file = args.crontab or ("crontab" if Path("crontab").is_file() else None)
    crontab = _read_crontab(crontab_file) if crontab_file else None
    options = WorkerOptions(
        crontab=crontab,
        concurrency=args.concurrency,
        schema=args.schema,
        poll_interval=args.poll_interval / 1000,
        local_queue_size=args.local_queue_size,
        lease_time=args.lease_time / 1000,
        complete_batch_delay=args.complete_batch_delay / 1000,
        prepared_statements=not args.no_prepared_statements,
        listen_dsn=args.listen_dsn,
        max_pool_size=args.max_pool_size,
        shutdown_timeout=args.shutdown_timeout,
        forbidden_flags=args.forbidden_flag or None,
        job_timeout=args.job_timeout,
        heartbeat_interval=args.heartbeat_interval,
        dead_worker_timeout=args.dead_worker_timeout,
        handle_signals=True,
    )
    runner = Runner(dsn, tasks, options, once=args.once)
    metrics = None
    if args.metrics_port is not None:
        try:
            from .metrics import Metrics
        except ImportError as exc:
            raise ConfigError(
                "--metrics-port needs prometheus-client: pip install 'kongtask[metrics]'"
            ) from exc
        metrics = Metrics()
        metrics.attach(runner)
        index = int(os.environ.get("KONGTASK_PROCESS_INDEX", "0"))
        await metrics.start_server(args.metrics_port + index, host=args.metrics_host)
    try:
        await runner.start()
    except BaseException:
        if metrics is not None:
            await metrics.stop()
        raise
    _tune_gc()
    try:
        return await runner.wait()
    finally:
        if metrics is not None:
            await metrics.stop()


async def _cmd_migrate(args: argparse.Namespace) -> int:
    async with _client(_dsn(args), args.schema) as utils:
        _print_migration(await utils.migrate())
    return 0


def _print_migration(result: MigrationResult) -> None:
    """One JSON line saying what migrating did: ``action`` is installed, upgraded or
    none, and ``message`` says it in words (a bare ``"installed": false`` read as
    "not installed" when the schema was simply current already)."""
    print(
        orjson.dumps(
            {
                "schema": result.schema,
                "action": result.action,
                "version": result.version,
                "kongtask_version": result.kongtask_version,
                "message": result.summary(),
            }
        ).decode()
    )


def _read_payload(text: str) -> Any:
    """The payload argument: JSON text, ``-`` for stdin, or ``@FILE``.

    Stdin and files lift the command line's size limit (a 10 MB payload does
    not fit in an argument list).
    """
    if text == "-":
        raw: str | bytes = sys.stdin.buffer.read()
        where = "stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidJobSpec("payload", f"cannot read {path}: {exc.strerror}") from None
        where = path
    else:
        raw, where = text, ""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        source = f" ({where})" if where else ""
        raise InvalidJobSpec("payload", f"not valid JSON{source}: {exc}") from None


def _parse_run_at(text: str) -> datetime:
    """An ISO 8601 time; a trailing ``Z`` is UTC (``fromisoformat`` refuses it before 3.11)."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidJobSpec("run_at", f"not an ISO 8601 time: {text!r}") from None


async def _cmd_add(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload)
    run_at = _parse_run_at(args.run_at) if args.run_at else None
    async with _client(_dsn(args), args.schema) as utils:
        try:
            job = await _add_job(utils, args, payload, run_at)
        except InvalidJobSpec as exc:
            if exc.field == "identifier":  # the API's name for what the CLI calls TASK
                raise InvalidJobSpec("task", exc.message) from None
            raise
    print(
        orjson.dumps(
            {
                "id": job.id,
                "task": job.task_identifier,
                "queue": job.queue_name,
                "run_at": job.run_at,
            }
        ).decode()
    )
    return 0


async def _add_job(
    utils: WorkerUtils, args: argparse.Namespace, payload: Any, run_at: datetime | None
) -> Job:
    return await utils.add_job(
        args.task,
        payload,
        queue_name=args.queue,
        run_at=run_at,
        job_key=args.job_key,
        job_key_mode=args.job_key_mode,
        priority=args.priority,
        max_attempts=args.max_attempts,
        flags=args.flags,
    )


async def _cmd_cron(args: argparse.Namespace) -> int:
    from .crontab import cron_check_main

    return cron_check_main(args.file)


async def _cmd_info(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    def ver(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "absent"

    print(f"kongtask {__version__}")
    print(f"implementation: {IMPLEMENTATION}")
    print(f"python: {sys.version.split()[0]}")
    for name in ("asyncpg", "uvloop", "orjson", "pgserver"):
        print(f"{name}: {ver(name)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "run": _cmd_run,
    "migrate": _cmd_migrate,
    "add": _cmd_add,
    "info": _cmd_info,
    "cron": _cmd_cron,
}


async def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import inspect_cli

    return await inspect_cli.run_command(args, _dsn(args))


async def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import cli as dashboard_cli

    return await dashboard_cli.run(args, _dsn(args))


def _handler(command: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """The coroutine function of a parsed command. Every command the parser knows
    besides these is one of the inspect commands (``jobs``, ``retry``, ...)."""
    if command == "dashboard":
        return _cmd_dashboard
    return COMMANDS.get(command, _cmd_inspect)


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for this command line: only ``run``'s when it runs a worker
    (see :func:`build_parser`), the whole one otherwise, so that a top-level
    error or ``--help`` lists every command."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif word in ("-h", "--help") or not word.startswith("-"):
            return build_parser(run_only=word == "run")
    return build_parser()


def _run_async(coro: Awaitable[int]) -> int:
    try:
        import uvloop
    except ImportError:  # Windows: plain asyncio
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark has its own parser and event loops (it drives child
        # processes); hand it the rest of the command line untouched.
        from .benchmark import main as bench_main

        return bench_main(argv[1:])
    args = parser_for(argv).parse_args(argv)
    try:
        configure_logging(args.log_level)
    except ConfigError as exc:
        print(f"kongtask: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "run" and args.processes is not None:
        # The supervisor is plain processes and signals: no event loop here.
        from .supervisor import supervise  # only a --processes run needs it

        return supervise(without_processes(argv), args.processes)
    handler = _handler(args.command)
    dsn_hint = getattr(args, "connection", None) or os.environ.get("DATABASE_URL")
    try:
        return _run_async(handler(args))
    except SchemaTooNew as exc:
        log.error("%s", exc)
        return EXIT_SCHEMA_TOO_NEW
    except SchemaMissing as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except asyncpg.PostgresError as exc:
        # Commands that query the schema directly (jobs, retry, unlock, ...)
        # meet an unmigrated schema as a raw PostgreSQL error.
        missing = schema_missing(exc, resolve_schema(getattr(args, "schema", None)))
        if missing is None:
            raise
        log.error("%s", missing)
        return EXIT_USAGE
    except TaskLoadError as exc:
        log.error("%s", exc)
        return EXIT_TASKS
    except (InvalidJobSpec, ConfigError, CronSyntaxError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except ConnectionError as exc:
        log.error("%s", scrub(str(exc), dsn_hint))
        return EXIT_CONNECT
    except KongtaskError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _entry() -> Any:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
