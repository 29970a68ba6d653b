"""Child process of ``kongtask bench``: runs one scenario, prints one JSON line.

    python -m kongtask.benchmark.worker_process --dsn DSN --schema SCHEMA \\
        --scenario {enqueue|drain|latency|scheduled|memory|startup|idle|work} \\
        [--jobs N] [--samples S] [--concurrency C] [--local-queue-size L] \\
        [--poll-interval MS] [--skip-analyze] [--timeout SEC] [--idle-wait SEC] [--windows]

The command line and output follow ``bench/graphile-worker/bench.js`` so that
the harness drives both libraries alike: the last stdout line is the result
(or ``{"scenario": ..., "error": ...}`` with exit code 1), progress goes to
stderr. With ``--windows`` the child stops at each edge of a timed window
(``WINDOW start|end`` on stdout, ``GO`` back on stdin) so that the harness
can read the server's CPU there. The implementation is whatever
``kongtask._core`` loads; the harness sets ``KONGTASK_NO_EXTENSIONS=1`` for
the pure one. A password is best given
in ``PGPASSWORD`` rather than in the DSN, which other users can see in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import orjson

from kongtask.argparsing import ArgumentParser

DEFAULTS: dict[str, dict[str, int]] = {
    "enqueue": {"jobs": 200_000},
    "drain": {"jobs": 200_000},
    "memory": {"jobs": 200_000},
    "work": {"jobs": 200_000},
    "latency": {"samples": 1000},
    "scheduled": {"samples": 200},
    "startup": {"samples": 5},
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from .scenarios import SCENARIOS

    parser = ArgumentParser(prog="python -m kongtask.benchmark.worker_process")
    parser.add_argument("--dsn", default="")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--scenario", required=True, choices=SCENARIOS)
    parser.add_argument("--jobs", type=_positive)
    parser.add_argument("--samples", type=_positive)
    parser.add_argument("--concurrency", type=_positive, default=24)
    parser.add_argument("--local-queue-size", type=_positive, default=None)
    parser.add_argument("--poll-interval", type=_positive, default=2000, metavar="MS")
    parser.add_argument("--skip-analyze", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SEC")
    parser.add_argument("--idle-wait", type=float, default=None, metavar="SEC")
    parser.add_argument(
        "--windows",
        action="store_true",
        help="hand the edges of timed windows to the harness (stdin/stdout)",
    )
    return parser.parse_args(argv)


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="[kt %(levelname)s] %(name)s: %(message)s"
    )
    from kongtask import __version__
    from kongtask._core import IMPLEMENTATION

    from .common import IDLE_WAIT_S
    from .scenarios import ChildConfig, run_scenario

    defaults = DEFAULTS.get(args.scenario, {})
    cfg = ChildConfig(
        dsn=args.dsn,
        schema=args.schema,
        scenario=args.scenario,
        jobs=args.jobs or defaults.get("jobs", 5000),
        samples=args.samples or defaults.get("samples", 1),
        concurrency=args.concurrency,
        local_queue_size=args.local_queue_size,
        poll_interval_ms=args.poll_interval,
        analyze=not args.skip_analyze,
        timeout_s=args.timeout,
        idle_wait_s=IDLE_WAIT_S if args.idle_wait is None else args.idle_wait,
        windows=args.windows,
    )
    try:
        import uvloop
    except ImportError:  # Windows: plain asyncio, as kongtask itself falls back
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        result = runner(run_scenario(cfg))
    except Exception as exc:  # any failure becomes the error line
        traceback.print_exc(file=sys.stderr)
        _emit(
            {
                "scenario": args.scenario,
                "error": f"{type(exc).__name__}: {exc}",
                "impl": IMPLEMENTATION,
            }
        )
        return 1
    _emit({**result, "impl": IMPLEMENTATION, "engine": "kongtask", "version": __version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
